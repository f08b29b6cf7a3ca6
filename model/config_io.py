"""Configs in and out: YAML files, ``key.sub=value`` overrides and plain dicts (runs, checkpoints).

``load_config`` starts from the dataclass defaults (``model.config``), applies a YAML file, then
command-line overrides, and rejects any key that
does not exist and any value whose type does not match the field, naming the dotted key. The resolved
config travels as a plain dict (``config_to_dict``) into the run folder and into every checkpoint, and
``config_from_dict`` rebuilds it (used by ``--resume``).

Why not OmegaConf structured configs (measured with omegaconf 2.4.0): its dotlist overrides parse values
as YAML 1.1, so ``train.run_name=off`` (a string field) silently becomes the string 'False' and a
YAML ``on``/``off`` becomes a bool; here only true/false are booleans and the wrong value is an error.
Its errors span three lines (message, full_key, reference_type); ours are one line naming the key.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from model.config import Config, ConfigError, validate_config
from pipeline.files import atomic_write


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans (YAML 1.1 also reads on/off/yes/no, which
    would turn ``train.amp=off`` into False) and ``5e-5`` is a float (YAML 1.1 needs ``5.0e-5``)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def _yaml_load(text: str):
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 -- a SafeLoader subclass



# --------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked (and minimally converted) against annotation ``tp``, or raise.

    Conversions allowed: int -> float, list -> tuple. Nothing else (no str -> int, no int -> bool):
    a YAML typo should fail loudly rather than become a surprising value.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected None, got {value!r}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected float, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r} ({type(value).__name__})")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        k_tp, v_tp = args if args else (Any, Any)
        return {_coerce(k, k_tp, f"{key} key"): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


def _apply(obj: Any, updates: dict, prefix: str) -> None:
    """Apply a nested mapping of updates to dataclass ``obj`` in place, checking keys and types."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key {key!r} (valid keys here: {', '.join(sorted(names))})")
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and not isinstance(value, type(current)):
            _apply(current, value, f"{key}.")
        else:
            setattr(obj, name, _coerce(value, tp, key))


def _parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr_peak=3e-4"`` -> (["optim", "lr_peak"], 0.0003). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    value = _yaml_load(raw) if raw.strip() else ""
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def _yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """[(file, mapping)] from the root ``base`` to ``path``: a YAML may name ``base: other.yaml``
    (relative to its own folder) and then only lists what it changes (the ablation configs do)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular 'base' chain")
    data = _yaml_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a path string, got {base!r}")
    return _yaml_chain(path.parent / base, seen + (path.resolve(),)) + [(path, data)]


def load_config(yaml_path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if given, after its ``base`` chain), then ``key.sub=value``
    overrides; validated.

    Raises :class:`ConfigError` naming the key for an unknown key, a wrong type or a bad combination.
    """
    cfg = Config()
    if yaml_path is not None:
        for path, data in _yaml_chain(Path(yaml_path)):
            try:
                _apply(cfg, data, "")
            except ConfigError as err:
                raise ConfigError(f"{path}: {err}") from None
    return _finish(cfg, overrides)


def _finish(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``key.sub=value`` overrides to ``cfg``, then validate it."""
    for text in overrides:
        key_path, value = _parse_override(text)
        _apply(cfg, _nest(key_path, value), "")
    validate_config(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """The plain nested dict of ``cfg`` (tuples become lists) for YAML, JSON and checkpoints."""

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [plain(v) for v in node]
        return node

    return plain(dataclasses.asdict(cfg))


def upgrade_config_dict(data: dict) -> dict:
    """A config dict written by an older version of this code, in today's layout (a copy): data.augment
    (bool) -> augment.enabled, data.forehead -> sbi.forehead and bi.forehead, val.synthetic_fakes (with
    fake videos in val.shards the old code validated on them) -> val.fakes, a train section without
    batch_scope (batch_pairs was per process, LRs unscaled) -> batch_scope per_process and optim.lr_scaling
    none. Settings that did not exist
    then keep their defaults; their values are those of today's recipe."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    d = out.get("data", {})
    if isinstance(d.get("augment"), bool):
        out.setdefault("augment", {})["enabled"] = d.pop("augment")
    if "forehead" in d:
        fh = d.pop("forehead")
        out.setdefault("sbi", {}).setdefault("forehead", fh)
        out.setdefault("bi", {}).setdefault("forehead", fh)
    v = out.get("val", {})
    if "synthetic_fakes" in v:
        v.setdefault("fakes", v.pop("synthetic_fakes"))
    t = out.get("train", {})
    if "batch_pairs" in t and "batch_scope" not in t:
        # Written before the global batch: batch_pairs was per process, LRs were never scaled.
        t["batch_scope"] = "per_process"
        out.setdefault("optim", {}).setdefault("lr_scaling", "none")
    return out


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict` output (e.g. a checkpoint's, also of an older
    version: see `upgrade_config_dict`), with overrides."""
    cfg = Config()
    _apply(cfg, upgrade_config_dict(data), "")
    return _finish(cfg, overrides)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (every section, every setting)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable, and loadable again with :func:`load_config`), atomically."""
    atomic_write(path, config_to_yaml(cfg))
