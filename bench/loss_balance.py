"""Which loss term shapes the shared features? Gradient norms of each weighted LAA-Net loss term.

LAA-Net's loss is lambda_cls * L_cls + lambda_hm * L_hm + lambda_c * L_c, and all three heads read the same
backbone and decoder. On those shared parameters the update follows the sum of the three gradients, so a term
whose gradient is 100x another's decides where the shared features go (Adam rescales per parameter, not per
term). This script measures, on real SBI training pairs, the gradient norm of each weighted term on the
backbone, on the decoder (E-FPN) and on its own head, the share of each term in the summed gradient's
squared norm, and the cosine between the cls gradient and the others (negative: they pull apart).

Baseline in the same run: the same batches under the paper's weights (``--compare`` default: lambda_hm 10,
lambda_c 100) next to the config's own, on the same network.

    python -m bench.loss_balance --config configs/laanet_lite0_cpu.yaml data.shards=[out/realworld/shards/train]
    python -m bench.loss_balance --checkpoint out/realworld/laanet/best.pt data.shards=[...]   # after training
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model.config_io import load_config
from model.data.datasets import TrainPairDataset, collate_pairs
from model.train.engine import to_device
from model.train.losses import LAALoss, classification_loss, consistency_loss, heatmap_focal_loss

GROUPS = ("backbone", "decoder")


def group_of(name: str) -> str:
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith("heads.") or name.split(".")[0] in ("cls", "hm", "cstency"):
        return "head"
    return "decoder"


def term_gradients(model: torch.nn.Module, criterion: LAALoss, batch: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{term: {group: flattened gradient}} of each weighted loss term, one backward pass per term."""
    model.train()
    outputs = model(batch["image"])
    outputs = {k: v.float() for k, v in outputs.items()}
    cfg = criterion.cfg
    weights = {"cls": cfg.lambda_cls, "hm": cfg.lambda_hm, "cstency": cfg.lambda_c}
    terms = {"cls": lambda: classification_loss(outputs["cls"], batch["label"], cfg.cls_label_smoothing),
             "hm": lambda: heatmap_focal_loss(outputs["hm"], batch["heatmap"], cfg.hm_pos_weight),
             "cstency": lambda: consistency_loss(outputs["cstency"], batch["consistency"])}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    present = [t for t in terms if t in outputs and weights[t] > 0]
    for i, term in enumerate(present):
        loss = weights[term] * terms[term]()
        grads = torch.autograd.grad(loss, [p for _, p in params], retain_graph=i < len(present) - 1,
                                    allow_unused=True)
        by_group: dict[str, list[torch.Tensor]] = {}
        for (n, p), g in zip(params, grads):
            by_group.setdefault(group_of(n), []).append((g if g is not None else torch.zeros_like(p)).flatten())
        out[term] = {k: torch.cat(v) for k, v in by_group.items()}
    return out


def summarise(grads: list[dict[str, dict[str, torch.Tensor]]]) -> dict[str, dict[str, float]]:
    """Per group: each term's gradient norm (mean over batches), its share of the squared norm of the sum, and
    its cosine with the cls gradient."""
    res: dict[str, dict[str, float]] = {}
    for group in GROUPS:
        terms = [t for t in grads[0] if group in grads[0][t]]
        for t in terms:
            norms = [float(g[t][group].norm()) for g in grads]
            cos = [float(torch.nn.functional.cosine_similarity(g[t][group], g["cls"][group], dim=0))
                   for g in grads] if "cls" in grads[0] else []
            share = [float(g[t][group].norm() ** 2 / sum(g[u][group].norm() ** 2 for u in terms)) for g in grads]
            res[f"{group}/{t}"] = {"norm": sum(norms) / len(norms), "share": sum(share) / len(share),
                                   "cos_with_cls": sum(cos) / len(cos) if cos else float("nan")}
    return res


def measure(cfg, model: torch.nn.Module, batches: list[dict], compare: tuple[float, float]) -> dict:
    """The balance under the config's weights and under ``compare`` = (lambda_hm, lambda_c), same batches."""
    from dataclasses import replace

    own = LAALoss(cfg.loss)
    paper = LAALoss(replace(cfg.loss, lambda_hm=compare[0], lambda_c=compare[1]))
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats move in train mode
    result = {}
    for name, crit in (("config", own), ("compare", paper)):
        model.load_state_dict(state)
        torch.manual_seed(0)  # the same dropout draws for both
        result[name] = summarise([term_gradients(model, crit, b) for b in batches])
        result[name]["weights"] = {"lambda_cls": crit.cfg.lambda_cls, "lambda_hm": crit.cfg.lambda_hm,
                                   "lambda_c": crit.cfg.lambda_c}
    model.load_state_dict(state)
    return result


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key in zip(axes, ("compare", "config")):
        r = result[key]
        w = r["weights"]
        labels, shares = [], []
        for group in GROUPS:
            for t in ("cls", "hm", "cstency"):
                if f"{group}/{t}" in r:
                    labels.append(f"{group}\n{t}")
                    shares.append(r[f"{group}/{t}"]["share"])
        ax.bar(range(len(shares)), shares, color=["C0", "C1", "C2"] * 2)
        ax.set_xticks(range(len(shares)), labels, fontsize=7)
        ax.set_title(f"lambda_hm {w['lambda_hm']:g}, lambda_c {w['lambda_c']:g}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("share of the summed gradient's squared norm")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.loss_balance", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help="training config (the network is built from it)")
    p.add_argument("--checkpoint", type=Path, default=None, help="measure a trained network (its own config)")
    p.add_argument("--batches", type=int, default=4, help="training batches measured")
    p.add_argument("--compare", default="10,100", help="lambda_hm,lambda_c measured on the same batches")
    p.add_argument("--png", type=Path, default=None, help="bar chart of the shares")
    p.add_argument("--json", type=Path, default=None, help="every figure")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)
    if args.checkpoint is not None:
        from model import load_checkpoint
        from model.checkpoint import read_checkpoint
        from model.config_io import config_from_dict

        cfg = config_from_dict(read_checkpoint(args.checkpoint)["config"], args.overrides)
        model = load_checkpoint(args.checkpoint)
        what = f"checkpoint {args.checkpoint}"
    else:
        from model.net.laanet import build_model

        cfg = load_config(args.config, args.overrides)
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model)
        what = f"untrained network of {args.config}"
    dataset = TrainPairDataset(cfg.data, cfg.sbi, cfg.bi, cfg.augment)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(dataset), generator=g)[: args.batches * cfg.train.batch_pairs].tolist()
    n = cfg.train.batch_pairs
    batches = [to_device(collate_pairs([dataset[i] for i in idx[k * n:(k + 1) * n]]), torch.device("cpu"), False)
               for k in range(args.batches)]
    compare = tuple(float(x) for x in args.compare.split(","))
    result = measure(cfg, model, batches, compare)
    for key in ("compare", "config"):
        w = result[key]["weights"]
        print(f"{what}, lambda_cls {w['lambda_cls']:g} lambda_hm {w['lambda_hm']:g} lambda_c {w['lambda_c']:g} "
              f"({args.batches} batches of {n} pairs):")
        for k, v in result[key].items():
            if k != "weights":
                print(f"  {k:20s} |grad| {v['norm']:10.4g}  share {v['share']:6.1%}  cos(cls) {v['cos_with_cls']:+.3f}")
    if args.png:
        plot(result, args.png, what)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
