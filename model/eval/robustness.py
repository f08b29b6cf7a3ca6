"""Robustness (paper Table 2): the test set scored again under each perturbation at each of its 5 levels."""
from __future__ import annotations

from model.data.datasets import collate_eval
from model.data.tensors import tensor_to_uint8, to_tensor
from model.eval import perturb
from model.eval.inference import run_dataset
from model.eval.metrics import compute_metrics
from model.eval.protocol import Scoring


class PerturbCollate:
    """Collate that perturbs each face (as uint8 at network resolution) before stacking.

    Runs inside DataLoader workers; the seed of every face comes from its video id and frame index, so the
    result does not depend on batch composition or worker count.
    """

    def __init__(self, name: str, level: int, collate):
        self.name, self.level, self.collate = name, level, collate

    def __call__(self, items: list[dict]) -> dict:
        for item in items:
            img = tensor_to_uint8(item["image"])
            seed = perturb.perturbation_seed(f"{item['video_id']}:{item['frame_index']}", self.name, self.level)
            item["image"] = to_tensor(perturb.apply(img, self.name, self.level, seed=seed))
        return self.collate(items)


def run_robustness(model, dataset, perturbations: list[str], clean_auc: float, batch_size: int, device,
                   scoring: Scoring, name: str) -> dict:
    """Video AUC of every perturbation type at every level: one full pass over ``dataset`` each.

    Returns ``{"clean": auc, "perturbations": {type: [auc level 1..5]}, "details": {type: [per-level dicts]}}``.
    """
    out = {"clean": clean_auc, "perturbations": {}, "details": {}}
    for kind in perturbations:
        aucs, details = [], []
        for level in perturb.LEVELS:
            frames = run_dataset(model, dataset, batch_size, device, scoring.flip,
                                 PerturbCollate(kind, level, collate_eval), scoring.loader_workers,
                                 desc=f"{name} {kind} L{level}", amp=scoring.amp)
            m, _, _ = compute_metrics(frames, scoring.aggregate)
            aucs.append(m["auc"])
            details.append({"level": level, "param": perturb.PARAMS[kind][level - 1], "auc": m["auc"],
                            "ap": m["ap"], "acc": m["acc"], "frame_auc": m["frame_auc"]})
        out["perturbations"][kind] = aucs
        out["details"][kind] = details
        print(f"{name} {kind}: video AUC by level " + " ".join(f"{100 * a:.2f}" for a in aucs))
    return out
