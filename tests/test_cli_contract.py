"""One flag, one meaning, one set of values across every entry point: the table in docs/CONTRACTS.md ("Command
line") against the parsers of the pipeline's Typer app, train.py, evaluate.py and the model tools."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import model.eval.main as evaluate
import model.train.main as train
from model import cli as flags
from model import predict
from model.data import preview
from model.device import AMP_MODES
from pipeline.cli import app

CONTRACTS = (Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md").read_text()
SECTION = CONTRACTS.split("## Command line", 1)[1]


def _table(after: str) -> list[list[str]]:
    block = SECTION.split(after, 1)[1]
    rows = []
    for line in block.strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


FLAGS = {re.sub(r"`", "", r[0]): r for r in _table("| flag |")}
DEPRECATED = _table("| old |")


def _argparse_options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings if a.help != argparse.SUPPRESS}


def _typer_options(command: str) -> dict[str, object]:
    click_cmd = typer.main.get_command(app).commands[command]
    return {o: p for p in click_cmd.params if not getattr(p, "hidden", False) for o in p.opts}


def _preview_parser() -> argparse.ArgumentParser:
    """The ``preview`` subcommand's parser."""
    sub = next(a for a in preview.get_args_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["preview"]


TOOLS = {
    "train.py": lambda: _argparse_options(train.get_args_parser()),
    "evaluate.py": lambda: _argparse_options(evaluate.get_args_parser()),
    "model.predict": lambda: _argparse_options(predict.get_args_parser()),
    "model preview": lambda: _argparse_options(_preview_parser()),
    **{f"pipeline {c}": (lambda c=c: _typer_options(c)) for c in ("extract-frames", "cache-landmarks", "verify")},
}


def test_the_table_names_every_shared_flag():
    assert set(FLAGS) == {"--shards-root", "--out", "--dask-workers", "--loader-workers", "--device", "--amp",
                          "--face-scale"}


def _where(text: str) -> set[str]:
    """The tools a "where" cell names: "pipeline a, b; x.py" -> {"pipeline a", "pipeline b", "x.py"}."""
    tools = set()
    for group in text.split(";"):
        names = [n.strip() for n in group.split(",")]
        pipeline = names[0].startswith("pipeline ")
        tools |= {f"pipeline {n.removeprefix('pipeline ')}" if pipeline else n for n in names}
    return tools


def test_where_cells_parse():
    assert _where("pipeline a, b; x.py, y") == {"pipeline a", "pipeline b", "x.py", "y"}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_uses_the_tables_flags_where_the_table_says(tool):
    options = TOOLS[tool]()
    for flag, (_, meaning, _, where) in FLAGS.items():
        listed = tool in _where(where)
        assert (flag in options) == listed, f"{tool}: {flag} ({meaning}) {'missing' if listed else 'not in the table'}"
    # a bare --workers means nothing on its own any more, and --out never names shards the pipeline reads
    assert "--workers" not in options, tool
    if tool.startswith("pipeline "):
        assert "--out" not in options, tool


@pytest.mark.parametrize("tool", ["train.py", "evaluate.py", "model.predict"])
def test_amp_takes_the_same_values_everywhere(tool):
    action = TOOLS[tool]()["--amp"]
    assert tuple(action.choices) == AMP_MODES == ("auto", "off", "bf16", "fp16")


@pytest.mark.parametrize("tool", ["evaluate.py", "model.predict"])
def test_face_scale_takes_the_same_values_everywhere(tool):
    action = TOOLS[tool]()["--face-scale"]
    assert action.type is flags.face_scale_arg and action.default == "reference"
    for good in ("reference", "train-median", "crop", "1.3"):
        assert action.type(good) == good
    with pytest.raises(argparse.ArgumentTypeError):
        action.type("huge")


def test_the_model_tools_share_one_help_formatter():
    for make in (train.get_args_parser, evaluate.get_args_parser, predict.get_args_parser, _preview_parser):
        assert make().formatter_class is flags.HelpFormatter, make


@pytest.mark.parametrize("old, new, where", [tuple(re.sub("`", "", c) for c in row) for row in DEPRECATED])
def test_old_spellings_still_work_with_one_deprecation_line(old, new, where, capsys, tmp_path):
    spelling = old.split(",")[0].split(" (")[0].strip()
    for tool in sorted(_where(where)):
        if tool in ("train.py", "evaluate.py", "model.predict"):
            parser = {"train.py": train.get_args_parser, "evaluate.py": evaluate.get_args_parser,
                      "model.predict": predict.get_args_parser}[tool]()
            value = [] if new.startswith("--amp") else ["3"]
            base = {"train.py": [], "evaluate.py": ["--checkpoint", "c", "--out", "o"], "model.predict": ["x"]}[tool]
            args = parser.parse_args([*base, spelling, *value])
            err = capsys.readouterr().err
            assert f"{spelling} " in err and "deprecated" in err and len(err.strip().splitlines()) == 1, (tool, err)
            dest = new.split()[0].lstrip("-").replace("-", "_")
            expected = {"--amp off": "off", "--amp auto": "auto"}.get(new, 3)
            assert getattr(args, dest) == expected, (tool, old)
        else:  # the pipeline: the old spelling still runs the command (here: verify of a missing folder)
            if tool != "pipeline verify" or spelling == "--workers":
                continue
            r = CliRunner().invoke(app, ["verify", "--dataset", "sample", "--split", "val", spelling, str(tmp_path)])
            assert "--out is deprecated" in r.output or "-o is deprecated" in r.output, r.output
            assert str(tmp_path / "sample" / "val") in r.output and r.exit_code == 1


def test_pipeline_old_workers_spelling_prints_one_line(tmp_path):
    r = CliRunner().invoke(app, ["cache-landmarks", "--shards-root", str(tmp_path), "--workers", "0"])
    assert "--workers is deprecated and will be removed; use --dask-workers" in r.output
    assert r.exit_code == 2 and "run extract-frames first" in r.output


def test_usage_errors_exit_2_and_failures_exit_1(tmp_path):
    r = CliRunner().invoke(app, ["verify", str(tmp_path), "--dataset", "sample"])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "nowhere")])
    assert r.exit_code == 1
    with pytest.raises(SystemExit) as e:
        evaluate.get_args_parser().parse_args(["--checkpoint", "c", "--out", "o", "--amp", "fp8"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--checkpoint", str(tmp_path / "none.pt"), "--shards", str(tmp_path), "--out", str(tmp_path)])
    assert e.value.code == "evaluate.py: " + f"{tmp_path / 'none.pt'}: checkpoint not found"
