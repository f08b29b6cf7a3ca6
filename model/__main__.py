"""``python -m model convert|predict|preview|face-scale ...``: the model package's command-line tools in one
place, like ``python -m pipeline``. Each subcommand is the tool's own command line (``--help`` on each)."""
import sys

USAGE = """usage: python -m model COMMAND [ARGS]
  convert     convert a reference LAA-Net checkpoint (python -m model.convert)
  predict     are these videos or images fake? a CSV and overlays (python -m model.predict)
  preview     PNG grid of training pairs and their targets (python -m model.data preview)
  face-scale  training face scales beside evaluation's (python -m model.data face-scale)"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "convert":
        from model.convert import main as convert_main

        return convert_main(rest) or 0
    if command == "predict":
        from model.predict import main as predict_main

        return predict_main(rest)
    if command in ("preview", "face-scale"):
        from model.data.preview import main as data_main

        return data_main([command, *rest])
    print(f"python -m model: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
