"""docs/CONTRACTS.md against the code: every module home it names exists, every default it states is the code's."""
import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

CONTRACTS = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"
TEXT = CONTRACTS.read_text()


def _resolve(dotted: str):
    """The object a dotted name such as ``model.config.LossConfig`` or ``model.build_model`` names."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


NAMES = sorted(set(re.findall(r"`((?:model|pipeline)(?:\.[A-Za-z_]\w*)+)", TEXT)))


@pytest.mark.parametrize("dotted", NAMES)
def test_every_named_home_exists(dotted):
    _resolve(dotted)


def _documented_defaults() -> list[tuple[str, str, str]]:
    """(config class, field, documented value) from each bullet that names a `model.config.X` class."""
    out = []
    for bullet in re.split(r"\n- ", TEXT):
        m = re.search(r"`model\.config\.(\w+)`", bullet)
        if not m:
            continue
        for segment in re.findall(r"`([^`]*=[^`]*)`", bullet):
            for part in re.split(r",\s*(?=\w+=)", segment):
                key, _, value = part.partition("=")
                if re.fullmatch(r"\w+", key.strip()):
                    out.append((m.group(1), key.strip(), value.strip()))
    return out


DEFAULTS = _documented_defaults()


def test_the_contract_states_defaults():
    assert {cls for cls, _, _ in DEFAULTS} >= {"ModelConfig", "LossConfig", "DataConfig"}


@pytest.mark.parametrize("cls, key, value", DEFAULTS, ids=[f"{c}.{k}" for c, k, _ in DEFAULTS])
def test_documented_defaults_are_the_code_defaults(cls, key, value):
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module("model.config"), cls))}
    assert key in fields, f"docs/CONTRACTS.md documents {cls}.{key}, which does not exist"
    f = fields[key]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    assert ast.literal_eval(value) == default, f"docs/CONTRACTS.md: {cls}.{key}={value}, the code: {default!r}"
