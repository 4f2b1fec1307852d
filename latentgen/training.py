"""The one training loop, on accelerate. It knows nothing about the model it trains.

Every trainer (VAE, CLIP, UNet, distillation, fine-tuning) builds a model, a data
set and a step function, and hands them to :class:`Trainer`::

    def step_fn(model, batch, ctx):            # batch is already on ctx.device
        loss = ...
        return {"loss": loss, "psnr": p}      # "loss" is backpropagated, the rest is logged

    model = Trainer(cfg, model, dataset, step_fn, frozen={"vae": vae}).fit()

What the loop does: devices, processes and mixed precision (accelerate), AdamW with
linear warm-up, gradient accumulation and clipping, an EMA of the weights (diffusers'
``EMAModel``), a tqdm bar with loss and throughput, TensorBoard plus a
``metrics.jsonl`` log, periodic validation, per-step seeding, atomic rotating
checkpoints and ``resume="latest"``.

Guards: a step whose loss or total gradient norm is NaN or infinite is skipped (the optimizer
does not step, the weights stay as they were) and counted; past ``max_bad_steps`` such steps the
run stops with :class:`NonFiniteLossError`. With fp16 the gradient scaler, not the guard, deals
with overflowing gradients. ``fit`` holds a lock on the run folder
(:class:`latentgen.fsutil.RunLock`), so a second process training into the same ``out`` fails at
once with :class:`latentgen.fsutil.RunLockedError` instead of writing beside the first.

Determinism: micro-batch ``m`` always holds the same examples (a seeded permutation per
epoch, cut the same way on every process) and the global RNG is reseeded from
``(seed, m, rank)`` before each step, so a run that is killed and resumed from a
checkpoint ends with the same weights as an unbroken run.

Checkpoints (:mod:`latentgen.checkpoint`) are written to a temporary folder, fsynced, renamed into
place, and only then is the oldest deleted: a kill or a full disk at any moment leaves the previous
checkpoint whole, and a failed write raises :class:`CheckpointError` naming it. The JSON files the
loop writes (``run_config.json``, the checkpoint's state) are replaced whole, fsynced; the
``metrics.jsonl`` log is appended to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from latentgen import checkpoint
from latentgen.checkpoint import CheckpointError, list_checkpoints, resolve_resume
from latentgen.fsutil import RunLock, RunLockedError, atomic_write_json
from latentgen.loop_config import ResumableBatchSampler, TrainConfig, batch_len, lr_factor

__all__ = [  # the config, schedule and sampler are latentgen.loop_config's, CheckpointError and
    # list_checkpoints latentgen.checkpoint's: here for the trainers
    "CheckpointError", "NonFiniteLossError", "ResumableBatchSampler", "StepContext", "TrainConfig", "Trainer",
    "list_checkpoints", "lr_factor", "resolve_resume",
]


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN or infinite more often than ``max_bad_steps`` allows."""


@dataclass
class StepContext:
    """What a step function may need besides the model and the batch."""

    device: torch.device
    step: int  # optimizer steps done before this one
    frozen: dict[str, nn.Module]
    accelerator: Any
    generator: torch.Generator  # seeded per micro-step and process, on ctx.device


# ----------------------------------------------------------------------------- the loop
class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        dataset: Dataset,
        step_fn: Callable[[nn.Module, Any, StepContext], dict],
        *,
        collate_fn: Callable | None = None,
        frozen: dict[str, nn.Module] | None = None,
        validate_fn: Callable[[Trainer, nn.Module, int], dict] | None = None,
        run_config: dict | None = None,
        may_change: tuple[str, ...] = (),
        params: Callable[[nn.Module], Any] | None = None,
        find_unused_parameters: bool = False,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.cfg = cfg
        self.step_fn, self.validate_fn, self.collate_fn = step_fn, validate_fn, collate_fn
        self.dataset = dataset
        self.run_config = run_config or {}
        self.may_change = set(may_change)  # run_config keys a resumed run may change
        self.ckpt_dir = os.path.join(cfg.out, "checkpoints")
        self.log_dir = os.path.join(cfg.out, "logs")
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # one Trainer after another in a process (tests, the recipe) may differ
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=cfg.out, logging_dir=self.log_dir),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        )
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.frozen = {}
        for name, m in (frozen or {}).items():
            m.requires_grad_(False).eval().to(self.device)
            self.frozen[name] = m

        trainable = params(model) if params else [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        # accelerate steps a prepared scheduler once per process per optimizer step: count in those
        n = self.accelerator.num_processes
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps * n, cfg.max_steps * n, cfg.lr_schedule)
        )
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, self.optimizer, self.lr_scheduler)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ema = None
        if cfg.ema_decay:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self._params, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup)
        self.step = 0
        self.bad_steps = 0
        self._stop = threading.Event()

    # -- helpers a trainer may call
    @property
    def finished(self) -> bool:
        """True when the run reached ``max_steps`` (False after a stop request)."""
        return self.step >= self.cfg.max_steps

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @contextlib.contextmanager
    def ema_weights(self):
        """Swap the EMA weights in for the duration (validation, export)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self._params)
        self.ema.copy_to(self._params)
        try:
            yield
        finally:
            self.ema.restore(self._params)

    def log(self, values: dict, step: int | None = None):
        step = self.step if step is None else step
        values = {k: (v.item() if torch.is_tensor(v) else v) for k, v in values.items()}
        self.accelerator.log(values, step=step)
        if self.is_main:
            with open(os.path.join(self.log_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")

    def log_images(self, tag: str, image, step: int | None = None):
        """Log a PIL image to TensorBoard and save it as ``<out>/samples/<tag>-<step>.png``."""
        if not self.is_main:
            return
        import numpy as np

        step = self.step if step is None else step
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
        os.makedirs(os.path.join(self.cfg.out, "samples"), exist_ok=True)
        image.save(os.path.join(self.cfg.out, "samples", f"{safe}-{step:07d}.png"))
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        if tracker is not None and hasattr(tracker, "add_image"):
            tracker.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def request_stop(self):
        """Finish the current step, write a checkpoint and return from fit()."""
        self._stop.set()

    # -- run config and checkpoints
    def _check_run_config(self, resuming: bool):
        path = os.path.join(self.cfg.out, "run_config.json")
        current = json.loads(json.dumps(self.run_config))
        if resuming and os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            diff = sorted(k for k in set(saved) | set(current)
                          if k not in self.may_change and saved.get(k) != current.get(k))
            if diff and "config_version" in current and "config_version" not in saved:
                raise ValueError(f"{os.path.basename(os.path.normpath(self.cfg.out))} was started by an older "
                                 "latentgen whose settings this one cannot compare: choose a new --out")
            if diff:
                run = os.path.basename(os.path.normpath(self.cfg.out))
                raise ValueError(
                    f"{run} was started with different settings ({', '.join(diff)}: "
                    f"{ {k: saved.get(k) for k in diff} } then, { {k: current.get(k) for k in diff} } now). "
                    f"Resume with the original settings, or choose a new --out."
                )
        if self.is_main:
            atomic_write_json(path, current)

    def _parts(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.lr_scheduler}

    def save_checkpoint(self) -> str:
        """Write ``checkpoint-<step>`` atomically, then drop the oldest beyond ``keep_checkpoints``
        (:func:`latentgen.checkpoint.save`; a failed write raises :class:`CheckpointError`)."""
        state = {"step": self.step, "bad_steps": self.bad_steps, "time": time.time()}
        return checkpoint.save(self.accelerator, self.ckpt_dir, self.step, state, self._parts(), self.ema,
                               self.cfg.keep_checkpoints)

    def load_checkpoint(self, path: str):
        state = checkpoint.load(self.accelerator, path, self._parts(), self.ema)
        self.step, self.bad_steps = state["step"], state.get("bad_steps", 0)

    # -- the loop
    def _batches(self, start_micro: int):
        from accelerate.utils import send_to_device

        acc = self.accelerator
        sampler = ResumableBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed,
                                        acc.process_index, acc.num_processes, start_micro)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate_fn,
                            num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)
        for batch in loader:
            yield send_to_device(batch, self.device)

    def _agree(self, ok) -> bool:
        """Whether ``ok`` (a bool or a 0-dim tensor) holds on every process; all of them get the same answer."""
        flag = torch.as_tensor(ok, dtype=torch.float32, device=self.device).reshape(1)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == self.accelerator.num_processes)

    def _all_finite(self, t: torch.Tensor) -> bool:
        return self._agree(torch.isfinite(t.detach()).all())

    def _validate(self):
        if self.validate_fn is None:
            return
        if self.is_main:
            self.model.eval()
            with self.ema_weights(), torch.no_grad(), self.accelerator.autocast():
                metrics = self.validate_fn(self, self.unwrapped, self.step) or {}
            self.model.train()
            if metrics:
                self.log({f"val/{k}": v for k, v in metrics.items()})
        self.accelerator.wait_for_everyone()

    def fit(self) -> nn.Module:
        """Train to ``max_steps`` (resuming if asked) and return the unwrapped model, EMA weights in.

        Raises :class:`latentgen.fsutil.RunLockedError` before touching the run folder while another
        process trains into it; the lock is held until this returns (or raises)."""
        from tqdm.auto import tqdm

        acc = self.accelerator
        lock = self._lock_run()
        old_handler = None
        try:
            self._begin()
            if threading.current_thread() is threading.main_thread():
                old_handler = signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            self._loop(tqdm)
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            for tracker in acc.trackers:  # not end_training(): that also tears down the process group
                tracker.finish()
            acc.trackers = []
            if lock is not None:
                lock.release()
        if self.ema is not None:
            self.ema.copy_to(self._params)
        return self.unwrapped

    def _lock_run(self) -> RunLock | None:
        """The run folder's lock, taken by the main process; every process raises while another run holds it."""
        lock, error = None, None
        if self.is_main:
            try:
                lock = RunLock(self.cfg.out).acquire()
            except RunLockedError as e:
                error = e
        if not self._agree(error is None):
            raise error or RunLockedError("the run folder is in use by another training process")
        return lock

    def _begin(self):
        """Tidy the checkpoints a killed run left, check the run config, start the trackers, resume."""
        cfg, acc = self.cfg, self.accelerator
        if self.is_main:
            os.makedirs(self.log_dir, exist_ok=True)
            checkpoint.recover(self.ckpt_dir)
        acc.wait_for_everyone()
        resume_path = resolve_resume(cfg.resume, self.ckpt_dir)
        self._check_run_config(resuming=resume_path is not None)
        acc.init_trackers("train", config={k: v for k, v in dataclasses.asdict(cfg).items()
                                           if isinstance(v, (int, float, str, bool))})
        if resume_path:
            self.load_checkpoint(resume_path)
            if self.is_main:
                print(f"resumed from {resume_path} at step {self.step}")

    def _micro_step(self, batch, micro: int) -> dict | None:
        """Forward and backward on one micro-batch, and the optimizer step on a step's last one.
        None when the loss or the gradients are not finite: the step is skipped (see :meth:`_skip`)."""
        cfg, acc = self.cfg, self.accelerator
        seed = (cfg.seed * 1_000_003 + micro * 7919 + acc.process_index) % (2**63)
        torch.manual_seed(seed)
        ctx = StepContext(self.device, self.step, self.frozen, acc, torch.Generator(self.device).manual_seed(seed))
        with acc.accumulate(self.model), acc.autocast():
            out = self.step_fn(self.model, batch, ctx)
            loss = out["loss"]
            if not self._all_finite(loss):
                return self._skip(f"the loss is {loss.item()}", micro)
            acc.backward(loss)
            if acc.sync_gradients:
                norm = acc.clip_grad_norm_(self._params, cfg.max_grad_norm or math.inf)  # inf: measure only
                if acc.scaler is None and not self._all_finite(norm):  # fp16's scaler skips overflows itself
                    return self._skip(f"the gradient norm is {norm.item()} (the loss {loss.item():.4g})", micro)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return out

    def _skip(self, what: str, micro: int) -> None:
        """Drop a non-finite step's gradients and count it; past ``max_bad_steps`` stop the run."""
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.bad_steps > self.cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"{what} at step {self.step + 1} (micro-batch {micro}); "
                f"{self.bad_steps} non-finite step(s), max_bad_steps={self.cfg.max_bad_steps}. "
                f"Lower --lr, use --mixed-precision no, or check the data; "
                f"the last good checkpoint is {checkpoint.last_name(self.ckpt_dir)} (--resume latest)."
            )

    def _loop(self, tqdm):
        cfg, acc = self.cfg, self.accelerator
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (self.is_main and cfg.progress),
                   dynamic_ncols=True, desc=os.path.basename(os.path.normpath(cfg.out)))
        self.model.train()
        micro = self.step * cfg.grad_accum
        batches = self._batches(micro)
        t0, n_seen, acc_logs = time.time(), 0, {}
        while self.step < cfg.max_steps:
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                out = self._micro_step(batch, micro)
                micro += 1
                if out is None:
                    continue
                n_seen += batch_len(batch)
                for k, v in out.items():
                    if torch.is_tensor(v) and v.numel() == 1 or isinstance(v, (int, float)):
                        acc_logs.setdefault(k, []).append(float(v.detach() if torch.is_tensor(v) else v))
            self.step += 1
            if self.ema is not None:
                self.ema.step(self._params)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                dt = max(time.time() - t0, 1e-9)
                logs = {k: sum(v) / len(v) for k, v in acc_logs.items()}
                logs.update(lr=self.lr_scheduler.get_last_lr()[0], samples_per_s=n_seen * acc.num_processes / dt)
                self.log(logs)
                bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4g}", it_s=f"{n_seen / dt / cfg.batch_size:.2f}")
                t0, n_seen, acc_logs = time.time(), 0, {}
            stop = self._stop.is_set()
            if cfg.validate_every and self.step % cfg.validate_every == 0 and self.step < cfg.max_steps:
                self._validate()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps or stop:
                self.save_checkpoint()
            if stop:
                if self.is_main:
                    print(f"stopped at step {self.step}; checkpoint written, resume with --resume latest")
                break
        bar.close()
        if self.step >= cfg.max_steps:
            self._validate()
