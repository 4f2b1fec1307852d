"""The training loop's settings and the pure functions of them: the learning-rate schedule and the
order of the batches (:class:`latentgen.training.Trainer` runs the loop)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

LR_SCHEDULES = ("constant", "linear", "cosine", "wsd")
WSD_DECAY = 0.2  # "wsd": the share of the steps after warm-up spent decaying


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings; a trainer's config gives them by ``latentgen.train.config.RunConfig.loop()``."""

    out: str
    max_steps: int = 1000
    batch_size: int = 16  # per process
    lr: float = 1e-4
    seed: int = 0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after warm-up: "constant" | "linear" | "cosine" | "wsd" (to 0 at max_steps)
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0  # 0: only at the end
    log_every: int = 10
    ema_decay: float | None = None
    ema_warmup: bool = True
    resume: str | None = None  # None | "latest" | path to a checkpoint folder
    num_workers: int = 0
    max_bad_steps: int = 0  # steps with a non-finite loss or gradient skipped before the run stops
    progress: bool = True

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1")


# ----------------------------------------------------------------------------- data order
class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches from a seeded permutation per epoch, sharded over processes.

    Micro-batch ``m`` of process ``rank`` is always the same list of indices, so starting at
    ``start`` reproduces exactly the batches an unbroken run would have drawn.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if n < 1:
            raise ValueError("the data set is empty")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.start = n, batch_size, seed, rank, world, start

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        global_b = self.batch_size * self.world
        pos = self.start * global_b + self.rank * self.batch_size  # position in the endless stream
        epoch, perm = -1, []
        while True:
            batch = []
            for p in range(pos, pos + self.batch_size):
                e = p // self.n
                if e != epoch:
                    epoch, perm = e, self._perm(e)
                batch.append(perm[p % self.n])
            yield batch
            pos += global_b


def batch_len(batch) -> int:
    """How many examples a batch holds: the length of its first tensor or list."""
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, dict):
        for v in batch.values():
            if torch.is_tensor(v) or isinstance(v, (list, tuple)):
                return len(v)
    if isinstance(batch, (list, tuple)) and batch:
        return batch_len(batch[0])
    return 1


# ----------------------------------------------------------------------------- learning rate
def lr_factor(step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """The learning rate's multiplier at ``step``: linear warm-up over ``warmup`` steps, then
    constant, or a linear or cosine (Loshchilov & Hutter 2017, Eq. 5) decay to 0 at ``total``, or
    warmup-stable-decay ("wsd", Hu et al. 2024, MiniCPM Sec. 4): constant, then linear to 0 over the
    last ``WSD_DECAY`` of the steps after warm-up (one run that ends annealed, like a constant-rate run
    continued by a short decaying one). A pure function of the step, so a resumed run that raises
    ``total`` decays over the new length."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))  # progress after warm-up, 0 -> 1
    if schedule == "wsd":
        return min(1.0, (1.0 - t) / WSD_DECAY)
    return 1.0 - t if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
