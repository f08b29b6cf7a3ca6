"""Which model a report is about, and whether its test videos were in its training data.

``model_card`` reads a checkpoint's own record: backbone, input size, epoch and step, a hash of its resolved
config, the code version, and its training shards with their video counts (where those folders are readable
here). ``training_overlap`` names the test videos that are also in those training shards: the same file (path)
or a file with the same name and byte size (a copy), from the shards' ``planned`` tables.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.errors import UserError
from pipeline.resume import settings_hash


def _training_shards(config: dict) -> list[str]:
    data = config.get("data") or {}
    return [str(d) for d in (data.get("shards") or [])]


def model_card(ckpt: dict, path: str | Path, sha256: str) -> dict:
    """The facts of a checkpoint (``model.checkpoint.read_checkpoint``'s dict) a report states next to its
    numbers."""
    config = ckpt.get("config") or {}
    model = config.get("model") or {}
    card = {
        "checkpoint": str(path), "checkpoint_sha256": sha256,
        "backbone": model.get("backbone", "?"), "input_size": model.get("input_size", "?"),
        "epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
        "config_hash": settings_hash(json.loads(json.dumps(config, default=str))),
        "code_version": ckpt.get("code_version", "?"),
    }
    if "converted_from" in ckpt:
        card["converted_from"] = ckpt["converted_from"].get("file", "?")
    card["training_data"] = [_shard_folder(d) for d in _training_shards(config)] or "not recorded"
    return card


def _shard_folder(folder: str) -> dict:
    from pipeline.shards import load_index

    try:
        index = load_index(folder)
    except (OSError, UserError):  # ShardError is a UserError
        return {"folder": folder, "videos": "not readable here"}
    return {"folder": folder, "dataset": index.get("dataset", "?"), "split": index.get("split", "?"),
            "videos": index.get("n_videos", "?")}


def _planned_files(folders: list[str]) -> list[tuple[str, str, int]]:
    """(absolute path, file name, size) of every video planned into the shards of ``folders``."""
    import h5py

    from pipeline.shards import read_json_rows, shard_paths

    out = []
    for folder in folders:
        try:
            paths = shard_paths(folder)
        except (OSError, UserError):
            continue
        for shard in paths:
            try:
                with h5py.File(shard, "r", locking=False) as f:
                    rows = read_json_rows(f, "planned") if "planned" in f else []
            except OSError:
                continue
            out += [(os.path.abspath(p["path"]), os.path.basename(p["path"]), int(p.get("size", -1)))
                    for p in rows if p.get("path")]
    return out


def training_overlap(config: dict, test_folders: list[Path]) -> list[str]:
    """Test videos (of the split folders ``test_folders``) that are also in the checkpoint's training shards."""
    train = _planned_files(_training_shards(config))
    if not train:
        return []
    by_path = {p for p, _, _ in train}
    by_name_size = {(n, s) for _, n, s in train if s >= 0}
    return sorted({p for p, n, s in _planned_files([str(d) for d in test_folders])
                   if p in by_path or (n, s) in by_name_size})


def card_line(card: dict) -> str:
    """The model card on one line (printed before scoring)."""
    data = card["training_data"]
    trained = "; ".join(f"{d['folder']} ({d['videos']} videos)" for d in data) if isinstance(data, list) else data
    return (f"model: {card['backbone']} at {card['input_size']} px, epoch {card['epoch']}, step {card['step']}, "
            f"config {card['config_hash']}, code {card['code_version']}; trained on {trained}")


def card_markdown(card: dict) -> str:
    """report.md's Model section."""
    data = card["training_data"]
    rows = [("checkpoint", f"`{card['checkpoint']}` (sha256 `{card['checkpoint_sha256'][:12]}`)"),
            ("backbone, input", f"{card['backbone']}, {card['input_size']} x {card['input_size']}"),
            ("epoch, step", f"{card['epoch']}, {card['step']}"),
            ("config hash", f"`{card['config_hash']}`"), ("code", str(card["code_version"]))]
    if "converted_from" in card:
        rows.append(("converted from", f"`{card['converted_from']}` (reference checkpoint)"))
    rows.append(("training data", "<br>".join(f"`{d['folder']}`: {d['videos']} videos" for d in data)
                 if isinstance(data, list) else str(data)))
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
