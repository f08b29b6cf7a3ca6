"""Processes and devices for training: the torchrun process group, device and mixed-precision choice,
seeding, and every rank's RNG states for checkpoints."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from model.checkpoint import rng_state


@dataclass
class Dist:
    """Process-group facts; world_size 1 and rank 0 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo", store=_attempt_store(),
                                         rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, local_rank=local)


def _attempt_store() -> torch.distributed.Store:
    """torchrun's key-value store with the keys of this attempt under their own prefix.

    After a ``--max-restarts`` restart the workers reach the same agent store, which still holds the
    first attempt's process-group keys, so a rank can read a dead peer's address (seen on the 2-core
    machine, a two-process gloo run restarted once: 2 of 6 stopped with "connectFullMesh failed ... Connection
    refused" and 1 hung; with the prefix 5 of 5 came up, cf. pytorch/pytorch#167288 for NCCL). The restart count in the prefix keeps every
    attempt to its own keys."""
    store, _, _ = next(torch.distributed.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return torch.distributed.PrefixStore(f"default_pg/attempt{attempt}", store)


def teardown_distributed(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (per rank, so dropout differs across ranks like independent workers)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def gather_rng_states(dist: Dist) -> list[dict]:
    """Every rank's RNG states (collective under DDP), so a resumed DDP run restores each rank's own."""
    if not dist.enabled:
        return [rng_state()]
    states: list = [None] * dist.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states
