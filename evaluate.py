"""Evaluate a checkpoint on prepared test shards: ``python evaluate.py --checkpoint best.pt --dataset D ...``.

The evaluation script is ``model/eval/main.py``; this file runs it from a checkout, as ``laanet-evaluate`` does
once the package is installed.
"""
from model.eval.main import cli

if __name__ == "__main__":
    cli()
