"""``python -m pipeline``: the preprocessing command line (see pipeline/cli.py)."""
from pipeline.cli import app

if __name__ == "__main__":
    app()
