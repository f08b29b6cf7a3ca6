"""Train LAA-Net on prepared shards: ``python train.py --config configs/laanet_sbi.yaml [key.sub=value ...]``.

The training script is ``model/train/main.py`` (read it top to bottom: arguments, run folder, the epoch loop);
this file runs it from a checkout, as ``laanet-train`` does once the package is installed.
"""
from model.train.main import cli

if __name__ == "__main__":
    cli()
