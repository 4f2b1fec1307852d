"""The training loop's checkpoint folders: written whole or not at all, rotated, found, recovered.

A checkpoint is ``<out>/checkpoints/checkpoint-<step>``: the trained weights (``model.safetensors``), the
optimizer's tensors (``optimizer.safetensors``) and settings (``optimizer.json``), the learning-rate
schedule's and fp16 gradient scaler's counters (JSON), the EMA weights and ``trainer_state.json``. No
pickles: a checkpoint from anywhere is safe to resume from. The RNG is not saved: the loop reseeds it before
every step. A checkpoint of an older latentgen (accelerate's ``optimizer.bin``) still loads, through
accelerate's restricted unpickler (``weights_only``).

A folder counts as complete only with ``trainer_state.json``. It is written to ``.tmp-checkpoint-<step>``,
fsynced, and moved into place with :func:`latentgen.fsutil.replace_dir` (a re-save of a step moves the old
copy aside until the new one is in); only then is the oldest beyond ``keep`` deleted. A failed write (a full
disk: ``OSError``, ``SafetensorError``) removes the temporary folder and raises :class:`CheckpointError`,
which names the last complete checkpoint. :func:`recover`, run before training starts, removes temporary
folders a kill left and puts back a checkpoint a kill left moved aside.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch

from latentgen.fsutil import WRITE_ERRORS, atomic_write_json, replace_dir

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ASIDE_RE = re.compile(r"^(checkpoint-\d+)\.old-\d+$")  # replace_dir's name for the copy it replaces
TMP_PREFIX = ".tmp-checkpoint-"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
EMA_JSON = "ema.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_JSON, SCALER_JSON = "scheduler.json", "scaler.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions): the previous one is intact."""


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """Completed checkpoints in ``folder`` as (step, path), oldest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = CHECKPOINT_RE.match(name)
        path = os.path.join(folder, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def resolve_resume(resume: str | None, ckpt_dir: str) -> str | None:
    """Turn ``--resume`` into a checkpoint path (None: start fresh)."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(ckpt_dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise FileNotFoundError(
            f"{resume} is not a complete checkpoint (no {STATE_FILE}); pass --resume latest "
            f"or one of the checkpoint-N folders in {ckpt_dir}"
        )
    return resume


def last_name(ckpt_dir: str) -> str:
    """The newest complete checkpoint's folder name (``checkpoint-N``), or "none" (for messages)."""
    kept = list_checkpoints(ckpt_dir)
    return os.path.basename(kept[-1][1]) if kept else "none"


def recover(ckpt_dir: str) -> None:
    """Tidy what a killed run left in ``ckpt_dir`` (only while no other process writes there):
    half-written ``.tmp-checkpoint-*`` folders go, and a checkpoint that a kill during a re-save
    left moved aside is renamed back (or deleted, when its replacement made it into place)."""
    if not os.path.isdir(ckpt_dir):
        return
    for name in sorted(os.listdir(ckpt_dir)):
        path = os.path.join(ckpt_dir, name)
        m = ASIDE_RE.match(name)
        if name.startswith(TMP_PREFIX) or (m and os.path.exists(os.path.join(ckpt_dir, m.group(1)))):
            shutil.rmtree(path, ignore_errors=True)
        elif m and os.path.isfile(os.path.join(path, STATE_FILE)):
            os.rename(path, os.path.join(ckpt_dir, m.group(1)))


def save(accelerator, ckpt_dir: str, step: int, state: dict, parts: dict, ema=None, keep: int = 2) -> str:
    """Write ``checkpoint-<step>``: ``parts`` (the prepared ``model``, ``optimizer`` and ``scheduler``, by
    :func:`write_state`), ``ema`` and ``state`` (``trainer_state.json``), then drop the oldest beyond ``keep``;
    called on every process, returns its path. Raises :class:`CheckpointError` when a write fails."""
    acc = accelerator
    final = os.path.join(ckpt_dir, f"checkpoint-{step}")
    tmp = os.path.join(ckpt_dir, f"{TMP_PREFIX}{step}")
    try:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        acc.wait_for_everyone()
        write_state(acc, tmp, **parts)
        if acc.is_main_process:
            _write_ema(tmp, ema)
            atomic_write_json(os.path.join(tmp, STATE_FILE), state, indent=None)  # last: marks it complete
            replace_dir(tmp, final)  # fsyncs every file first
    except WRITE_ERRORS as e:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(ckpt_dir, step, e) from e
    acc.wait_for_everyone()
    if acc.is_main_process:
        for _, old in list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(accelerator, path: str, parts: dict, ema=None) -> dict:
    """Load a checkpoint written by :func:`save` into ``parts`` (as given to it) and ``ema``; returns its
    state."""
    from safetensors.torch import load_file

    if os.path.isfile(os.path.join(path, OPTIMIZER_FILE)):
        read_state(accelerator, path, **parts)
    else:  # an older latentgen's checkpoint: accelerate's files, read with torch.load(weights_only=True)
        accelerator.load_state(path)
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    if ema is not None and os.path.isfile(os.path.join(path, EMA_FILE)):
        tensors = load_file(os.path.join(path, EMA_FILE))
        with open(os.path.join(path, EMA_JSON)) as f:
            sd = json.load(f)
        sd["shadow_params"] = [tensors[f"p{i}"].to(accelerator.device) for i in range(len(tensors))]
        ema.load_state_dict(sd)
    return state


def write_state(accelerator, folder: str, model, optimizer, scheduler) -> None:
    """The loop's state as safetensors and JSON: the model's weights under its unwrapped names (one process
    writes; DDP's copies are equal), the optimizer's per-parameter tensors as ``<param>.<name>`` and the rest
    of its state dict as JSON, the schedule's and (fp16) the gradient scaler's state dicts as JSON."""
    from safetensors.torch import save_file, save_model

    acc = accelerator
    if not acc.is_main_process:
        return
    sd = optimizer.state_dict()
    plain = {p: {k: v for k, v in st.items() if not torch.is_tensor(v)} for p, st in sd["state"].items()}
    atomic_write_json(os.path.join(folder, OPTIMIZER_JSON), {"param_groups": sd["param_groups"], "state": plain},
                      indent=None)
    atomic_write_json(os.path.join(folder, SCHEDULER_JSON), scheduler.state_dict(), indent=None)
    if acc.scaler is not None:
        atomic_write_json(os.path.join(folder, SCALER_JSON), acc.scaler.state_dict(), indent=None)
    save_model(acc.unwrap_model(model), os.path.join(folder, MODEL_FILE))  # shared tensors saved once
    save_file({f"{p}.{k}": v.detach().contiguous().cpu() for p, st in sd["state"].items()
               for k, v in st.items() if torch.is_tensor(v)}, os.path.join(folder, OPTIMIZER_FILE))


def read_state(accelerator, folder: str, model, optimizer, scheduler) -> None:
    """What :func:`write_state` wrote, into the prepared ``model``, ``optimizer`` and ``scheduler``."""
    from safetensors.torch import load_file, load_model

    acc = accelerator
    load_model(acc.unwrap_model(model), os.path.join(folder, MODEL_FILE), device=str(acc.device))
    with open(os.path.join(folder, OPTIMIZER_JSON)) as f:
        meta = json.load(f)
    state = {int(p): dict(st) for p, st in meta["state"].items()}
    for key, t in load_file(os.path.join(folder, OPTIMIZER_FILE)).items():
        p, name = key.split(".", 1)
        state.setdefault(int(p), {})[name] = t
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    with open(os.path.join(folder, SCHEDULER_JSON)) as f:
        scheduler.load_state_dict(json.load(f))
    if acc.scaler is not None and os.path.isfile(os.path.join(folder, SCALER_JSON)):
        with open(os.path.join(folder, SCALER_JSON)) as f:
            acc.scaler.load_state_dict(json.load(f))


def _write_ema(folder: str, ema) -> None:
    """The EMA weights as safetensors and its counters as JSON (diffusers' ``EMAModel`` state)."""
    if ema is None:
        return
    from safetensors.torch import save_file

    sd = ema.state_dict()
    shadow = sd.pop("shadow_params")
    save_file({f"p{i}": t.detach().contiguous().cpu() for i, t in enumerate(shadow)},
              os.path.join(folder, EMA_FILE))
    atomic_write_json(os.path.join(folder, EMA_JSON),
                      {k: v for k, v in sd.items() if isinstance(v, (int, float, bool))}, indent=None)


def _write_failed(ckpt_dir: str, step: int, e: BaseException) -> CheckpointError:
    """The error for a failed write: the cause, the fix, and the checkpoint a resume would use."""
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror  # "No space left on device"
    else:  # torch's and safetensors' errors say little alone ("basic_ios::clear: iostream error")
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    return CheckpointError(
        f"could not write checkpoint-{step} ({reason}). "
        f"Free disk space (or choose another --out) and rerun with --resume latest; "
        f"the last complete checkpoint is {last_name(ckpt_dir)}."
    )
