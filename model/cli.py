"""The command-line contract of the model tools (train.py, evaluate.py, ``python -m model ...``).

One help formatter, and one meaning and one set of values per flag across every tool (docs/CONTRACTS.md,
"Command line", lists them; tests/test_cli_contract.py checks every entry point against that table):
- ``--out``: where this command writes; ``--shards-root``: where prepared shards live (read);
- ``--loader-workers``: DataLoader worker processes (the pipeline's Dask processes are ``--dask-workers``);
- ``--device``: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``; ``--amp``: ``auto|off|bf16|fp16``
  (model.device);
- ``--face-scale``: ``reference``, ``train-median``, ``crop`` or a number of face-box sides;
- exit status 0 success, 1 failure (one line naming the file and the reason), 2 usage.
Old spellings keep working for one release and print one deprecation line.
"""
from __future__ import annotations

import argparse
import sys

from model.device import AMP_MODES, DEVICES_HELP

FACE_SCALE_NAMES = ("reference", "train-median", "crop")
FACE_SCALE_HELP = ("how large faces are shown, in face-box sides: 'reference' (the reference's test geometry, the "
                   "1.25x crop minus 5/256 per side = 1.20x), 'train-median' (the median scale of the default "
                   "training recipe, 1.11x; see python -m model face-scale), 'crop' (the whole stored crop) or a "
                   "number")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every model tool's --help: descriptions and examples kept as written, "(default: X)" after every flag whose
    help does not already say it (flags that are off or empty by default say nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, [], argparse.SUPPRESS) \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def deprecated(parser_: argparse.ArgumentParser, old: str, new: str, dest: str, **kw) -> None:
    """Keep the old spelling ``old`` of ``new`` working (same ``dest``), hidden from --help, with one line on
    stderr when it is used. ``kw`` are the old flag's own add_argument settings (e.g. ``const``, ``nargs``)."""

    class _Deprecated(argparse.Action):
        def __call__(self, p, namespace, values, option_string=None):
            print(f"{p.prog}: {option_string} is deprecated and will be removed; use {new}", file=sys.stderr)
            setattr(namespace, self.dest, self.const if values is None or values == [] else values)

    kw.setdefault("nargs", None)
    parser_.add_argument(old, dest=dest, action=_Deprecated, help=argparse.SUPPRESS, **kw)


class _Amp(argparse.Action):
    """``--amp MODE``; a bare ``--amp`` (evaluation's old on/off switch) is ``auto``, with a deprecation line."""

    def __call__(self, p, namespace, values, option_string=None):
        if values is None:
            print(f"{p.prog}: --amp without a value is deprecated and will be removed; use --amp auto",
                  file=sys.stderr)
            values = "auto"
        setattr(namespace, self.dest, values)


def add_device_options(p: argparse.ArgumentParser, amp_default: str, amp_help: str) -> None:
    """``--device`` and ``--amp`` with the values of every tool (``--no-amp`` is the old spelling of ``--amp off``)."""
    p.add_argument("--device", default="auto", help=DEVICES_HELP)
    p.add_argument("--amp", choices=AMP_MODES, default=amp_default, nargs="?", action=_Amp, help=amp_help)
    deprecated(p, "--no-amp", "--amp off", "amp", nargs=0, const="off")


def add_loader_workers(p: argparse.ArgumentParser, default, what: str) -> None:
    """``--loader-workers N`` (DataLoader worker processes), with the old ``--workers`` kept as an alias."""
    p.add_argument("--loader-workers", type=int, default=default, metavar="N",
                   help=f"DataLoader worker processes {what}")
    deprecated(p, "--workers", "--loader-workers", "loader_workers", type=int)


def face_scale_arg(text: str) -> str:
    """argparse type of ``--face-scale``: a name of FACE_SCALE_NAMES or a positive number (kept as text)."""
    if text in FACE_SCALE_NAMES:
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {', '.join(FACE_SCALE_NAMES)} or a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a face scale must be > 0, got {text!r}")
    return text


def hm_range_arg(spec: str) -> tuple[float, float] | None:
    """argparse type of ``--hm-range``: "image" (None: each heatmap from its own min to max) or "LO,HI"."""
    if spec == "image":
        return None
    try:
        lo, hi = (float(x) for x in spec.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'image' or LO,HI, e.g. 0,1, got {spec!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise argparse.ArgumentTypeError(f"need 0 <= LO < HI <= 1 (heatmap probabilities), got {spec!r}")
    return lo, hi
