"""``python -m model convert|predict|preview|face-scale ...``: the model package's command-line tools in one
place, like ``python -m pipeline``. Each subcommand is the tool's own command line (``--help`` on each)."""
import argparse
import sys

from model import cli as flags

COMMANDS = {
    "convert": "convert a reference LAA-Net checkpoint (python -m model.convert)",
    "predict": "are these videos or images fake? a CSV and overlays (python -m model.predict)",
    "preview": "PNG grid of training pairs and their targets (python -m model.data preview)",
    "face-scale": "training face scales beside evaluation's (python -m model.data face-scale)",
}
EXAMPLES = """commands:
""" + "\n".join(f"  {name:<11} {text}" for name, text in COMMANDS.items()) + """

examples:
  python -m model predict clip.mp4 --checkpoint runs/x/best.pt
  python -m model preview --shards shards/sample/train --out out/preview.png
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = flags.parser("python -m model", "The model package's command-line tools; each COMMAND is the tool's own "
                                        "command line (COMMAND --help).", EXAMPLES)
    p.add_argument("command", metavar="COMMAND", help=f"the tool to run: {', '.join(COMMANDS)}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments (COMMAND --help lists them)")
    return p


def main(argv: list[str]) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command not in COMMANDS:
        parser.error(f"unknown command {args.command!r} (one of {', '.join(COMMANDS)})")
    if args.command == "convert":
        from model.convert import main as convert_main

        return convert_main(args.args)
    if args.command == "predict":
        from model.predict import main as predict_main

        return predict_main(args.args)
    from model.data.preview import main as data_main

    return data_main([args.command, *args.args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
