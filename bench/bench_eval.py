"""Evaluation throughput: faces/s of LAA-Net (EfficientNet-B4, 384 x 384) with and without the flip test.

    python -m bench.bench_eval [--seconds 20] [--batch-size 0] [--device cpu]   (from the repository root)

Times ``model.eval.inference.score_faces`` (the forward pass evaluate.py and predict use) on random faces with
random weights (no checkpoint is needed: the cost does not depend on the weight values). The batch size is
the one evaluate.py would choose for this device's free memory unless given. The flip test runs every face
twice, so its baseline is the same model without it, timed in the same process; the expected ratio is
about 0.5. The machine's load average is printed with the figures, since other work on a shared machine
slows the numbers down.
"""
from __future__ import annotations

import argparse
import os
import time


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="faces/s of LAA-Net B4 inference, flip test on and off")
    p.add_argument("--seconds", type=float, default=20.0, help="timed duration per setting (after warm-up)")
    p.add_argument("--batch-size", type=int, default=0, help="0: evaluate.py's choice for the free memory")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--backbone", default="tf_efficientnet_b4")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch default)")
    return p


def faces_per_second(model, batch, flip: bool, seconds: float) -> tuple[float, float, int]:
    """(mean, best-batch) faces/s over at least ``seconds`` after one untimed warm-up batch, and faces timed.

    The best batch is the figure least disturbed by other work on a shared machine; the mean is what a
    long evaluation would see under the same load.
    """
    import torch

    from model.eval.inference import score_faces

    def sync():
        if batch.device.type == "cuda":
            torch.cuda.synchronize()

    score_faces(model, batch, flip=flip)
    sync()
    times = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        score_faces(model, batch, flip=flip)
        sync()
        times.append(time.perf_counter() - t)
    return len(batch) * len(times) / sum(times), len(batch) / min(times), len(batch) * len(times)


def main(args) -> None:
    import torch

    from model import build_model
    from model.device import keep_freed_memory
    from model.eval.inference import choose_batch_size

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    keep_freed_memory()  # as evaluate.py (LAANET_MALLOC_TUNING=0 measures glibc's defaults)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model({"backbone": args.backbone, "input_size": args.image_size}).to(device).eval()
    g = torch.Generator().manual_seed(0)
    results = {}
    for flip in (False, True):
        bs = choose_batch_size(args.image_size, flip, device, args.batch_size)
        batch = (torch.rand(bs, 3, args.image_size, args.image_size, generator=g) * 2 - 1).to(device)
        fps, best, n = faces_per_second(model, batch, flip, args.seconds)
        results[flip] = (fps, best)
        print(f"{args.backbone} {args.image_size}px {device} flip={'on ' if flip else 'off'} batch {bs}: "
              f"{fps:.2f} faces/s mean, {best:.2f} best batch ({n} faces)  "
              f"loadavg {tuple(round(x, 2) for x in os.getloadavg())}", flush=True)
    (off, off_best), (on, on_best) = results[False], results[True]
    print(f"flip test costs {off / on:.2f}x time per face on the mean, {off_best / on_best:.2f}x on the best batch "
          f"(flip on vs the baseline flip off; torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
