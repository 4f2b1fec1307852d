"""Training runs started from the app, as background processes of the installed trainers.

A job is ``<python> -m latentgen.train.<name> --out <models>/<name> --max-steps N ...``, run by
the app's own Python (``sys.executable``) in the app's working folder: the installed trainers,
imported as any module is, never from a ``train/`` folder. The shared training loop writes
``logs/metrics.jsonl``, ``samples/*.png`` and ``checkpoints/`` in ``<models>/<name>/`` (or in
one subfolder per stage, as ``latentgen.train.distill`` does), and the finished model lands
there too (``model_index.json``, LoRA weights, or ``final/``), where the model list finds it.

The app never imports the trainers: a job is a child process at lower CPU priority, so
generation keeps running while it trains. Stop sends SIGTERM (the loop writes a
checkpoint and exits); resume reruns the same command with ``--resume latest``. The
command is kept in ``<out>/job.json``, so a run can be resumed after the app restarts.

A run whose lock (``RunLock``) another process holds (a trainer left running by an earlier app)
is neither started nor resumed. Staged uploads (``<models>/.uploads/<name>``) are removed when
the run finishes or fails, stale ones at startup. Messages never show absolute server paths.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from latentgen.fsutil import RunLock, atomic_write_json
from latentgen.lora import LORA_FILE
from latentgen.ui.limits import UPLOAD_MAX_AGE_S, hide_paths
from latentgen.ui.uploads import clean_stale, staged_dir

JOB_FILE = "job.json"
LOG_FILE = "job.log"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_run_name(name: str) -> str:
    """A run name is one plain folder name under the models folder (no paths, no ``..``)."""
    name = (name or "").strip()
    if not NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit (it becomes a folder in the models folder, e.g. my-cats)"
        )
    return name


def is_finished_model(folder: Path) -> bool:
    """A full model folder (``model_index.json``) or fine-tuned LoRA weights are the finished result."""
    return (folder / "model_index.json").is_file() or (folder / LORA_FILE).is_file()


def run_finished(out: Path) -> bool:
    """Whether run folder ``out`` holds its finished model (in ``out`` or, for distillation, ``out/final``)."""
    return is_finished_model(out) or is_finished_model(out / "final")


def module_available(module: str) -> bool:
    """Whether ``python -m module`` finds ``module`` from here (its parent packages are imported, it is not)."""
    if not MODULE_RE.match(module):
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or fails to import
        return False


@dataclass
class JobStatus:
    """A snapshot of one job, for the page."""

    name: str
    state: str  # "running" | "stopping" | "stopped" | "finished" | "failed" | "not started"
    step: int
    max_steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    sample: str | None = None  # newest PNG in <out>/samples
    message: str = ""
    log_tail: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.max_steps) if self.max_steps else 0.0


class Job:
    """One run folder and (while it runs) its process."""

    def __init__(self, name: str, out: Path, module: str, argv: list[str], max_steps: int):
        self.name, self.out, self.module, self.argv, self.max_steps = name, out, module, argv, max_steps
        self.proc: subprocess.Popen | None = None
        self.stop_requested = False
        self._metrics: dict[Path, tuple[int, int, list]] = {}  # metrics.jsonl -> (bytes read, step, losses)

    # -- persistence
    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"module": self.module, "argv": self.argv, "max_steps": self.max_steps}
        atomic_write_json(self.out / JOB_FILE, data)

    @classmethod
    def load(cls, name: str, out: Path) -> Job:
        path = out / JOB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no run named {name!r} to resume: its {JOB_FILE} is missing; start a new run instead")
        data = json.loads(path.read_text())
        return cls(name, out, data["module"], list(data["argv"]), int(data["max_steps"]))

    # -- process
    def command(self, python: str, resume: bool) -> list[str]:
        cmd = [python, "-m", self.module, "--out", str(self.out), "--max-steps", str(self.max_steps)]
        return cmd + self.argv + (["--resume", "latest"] if resume else [])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.out / "logs" / LOG_FILE

    # -- progress
    def _stages(self) -> list[Path]:
        """Folders of this run the loop writes into: ``<out>`` itself, or one per stage/round
        (``latentgen.train.distill`` writes ``<out>/stage1``, ``<out>/round-32``, ...), oldest first."""
        found = [
            d for d in [self.out, *sorted(self.out.iterdir())] if (d / "logs" / "metrics.jsonl").is_file()
        ]
        return sorted(found, key=lambda d: (d / "logs" / "metrics.jsonl").stat().st_mtime)

    def _read_metrics(self, stage: Path) -> tuple[int, list[tuple[int, float]]]:
        """(last step, [(step, loss)]) of a stage's metrics.jsonl, read incrementally."""
        path = stage / "logs" / "metrics.jsonl"
        pos, step, losses = self._metrics.get(path, (0, 0, []))
        if path.stat().st_size < pos:  # rewritten: read again from the start
            pos, step, losses = 0, 0, []
        with open(path, "rb") as f:
            f.seek(pos)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines; a half-written one waits for the next poll
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec.get("step"), int):
                step = max(step, rec["step"])
                if isinstance(rec.get("loss"), (int, float)):
                    losses.append((rec["step"], float(rec["loss"])))
        self._metrics[path] = (pos + end, step, losses)
        return step, losses

    @staticmethod
    def _checkpoint_step(stage: Path) -> int:
        steps = [
            int(m.group(1))
            for p in (stage / "checkpoints").glob("checkpoint-*")
            if (m := re.match(r"^checkpoint-(\d+)$", p.name))
        ]
        return max(steps, default=0)

    def _newest_sample(self) -> str | None:
        samples = [*self.out.glob("samples/*.png"), *self.out.glob("*/samples/*.png")]
        return str(max(samples, key=lambda p: (p.stat().st_mtime, p.name))) if samples else None

    def _tail(self, n: int = 12) -> str:
        if not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8000))
            text = f.read().decode("utf-8", "replace")
        lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]  # keep the last state of a tqdm line
        return "\n".join(lines[-n:])

    def status(self) -> JobStatus:
        stages = self._stages() if self.out.is_dir() else []
        step, losses, where = 0, [], ""
        if stages:
            step, losses = self._read_metrics(stages[-1])
            step = max(step, self._checkpoint_step(stages[-1]))
            where = f" ({stages[-1].name})" if stages[-1] != self.out else ""
        done = run_finished(self.out)
        code = self.proc.poll() if self.proc is not None else None
        if self.running:
            state = "stopping" if self.stop_requested else "running"
            message = f"step {step} of {self.max_steps}{where}"
        elif self.proc is None:
            state = "finished" if done else ("stopped" if step else "not started")
            message = {
                "finished": f"the model is in the models folder as {self.name}",
                "stopped": f"at step {step}{where}; press Resume to continue",
                "not started": "press Start",
            }[state]
        elif code == 0 and not self.stop_requested:
            state, message = "finished", f"the model is in the models folder as {self.name}, and in the lists"
        elif self.stop_requested:
            state, message = "stopped", f"at step {step}{where} (checkpoint written); press Resume"
        else:
            state = "failed"
            message = f"exit code {code} at step {step}{where}; see the log below, then fix and press Resume"
        return JobStatus(
            self.name, state, step, self.max_steps, list(losses), self._newest_sample(), message, self._tail()
        )


class JobManager:
    """Starts, watches, stops and resumes training subprocesses; at most ``max_running`` at once.

    ``enabled=False`` (the app's ``--no-training``) refuses every start and resume. ``roots``
    (label -> folder) name folders in messages; the models folder is always one of them. The
    trainers run with ``python -m`` in ``cwd`` (default: the app's working folder).
    """

    def __init__(
        self,
        models_dir: str | os.PathLike,
        python: str = sys.executable,
        max_running: int = 1,
        niceness: int = 10,
        enabled: bool = True,
        roots: dict[str, os.PathLike] | None = None,
        cwd: str | os.PathLike | None = None,
    ):
        self.models_dir = Path(models_dir)
        self.cwd = cwd
        self.python, self.max_running, self.niceness = python, max_running, niceness
        self.enabled = enabled
        self.roots = {self.models_dir.absolute().name: self.models_dir.absolute(), **(roots or {})}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def available(self, module: str) -> bool:
        return self.enabled and module_available(module)

    def out_dir(self, name: str) -> Path:
        return self.models_dir / check_run_name(name)

    def uploads_dir(self, name: str) -> Path:
        """Where the uploaded images of run ``name`` are staged."""
        return staged_dir(self.models_dir, check_run_name(name))

    def _check_can_start(self, module: str):
        if not self.enabled:
            raise ValueError("training is turned off on this server (--no-training): generate images only")
        if not self.available(module):
            raise ValueError(f"{module} is not available in this version (no such trainer here)")
        running = [j.name for j in self._jobs.values() if j.running]
        if len(running) >= self.max_running:
            raise ValueError(f"a training run is already going ({', '.join(running)}): stop it first, "
                             "or wait until it finishes")

    @staticmethod
    def _check_unlocked(name: str, out: Path):
        if RunLock.held(out):
            raise ValueError(
                f"the run {name} is still being trained by another process (an earlier app, or a trainer "
                "started by hand): wait until it finishes or stop that process, then press Resume"
            )

    def check_new(self, module: str, name: str) -> Path:
        """The run folder for a fresh run ``name``, or a ValueError saying why it cannot start now."""
        out = self.out_dir(name)
        self._check_can_start(module)
        self._check_unlocked(name, out)
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"a run or model named {name} already exists: choose another name, or press "
                             "Resume to continue that run")
        return out

    def _spawn(self, job: Job, resume: bool):
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = job.command(self.python, resume)
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # the log follows the run
        with open(job.log_path, "ab") as log:  # the child keeps its own handle
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            job.proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to the app (Ctrl-C, SIGTERM) is not the child's: shutdown()
            )
        if self.niceness and hasattr(os, "setpriority"):  # training yields the CPU to generation
            try:
                os.setpriority(
                    os.PRIO_PROCESS, job.proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.niceness)
                )
            except OSError:
                pass
        job.stop_requested = False
        threading.Thread(target=self._watch, args=(job, job.proc), daemon=True, name="latentgen-job").start()

    def _watch(self, job: Job, proc: subprocess.Popen):
        """Once the process ends: a run that finished or failed gives up its staged uploads."""
        proc.wait()
        with self._lock:
            if job.proc is proc and not job.stop_requested:
                shutil.rmtree(self.uploads_dir(job.name), ignore_errors=True)

    def start(self, module: str, name: str, max_steps: int, argv: list[str]) -> Job:
        """Start a fresh run ``<models>/<name>``; refuses a name that already holds a run or a model."""
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max steps must be a whole number >= 1, got {max_steps!r}")
        with self._lock:
            out = self.check_new(module, name)
            job = Job(check_run_name(name), out, module, [str(a) for a in argv], max_steps)
            job.save()
            self._spawn(job, resume=False)
            self._jobs[job.name] = job
        return job

    def resume(self, name: str) -> Job:
        """Run the same command again with ``--resume latest`` (also after an app restart)."""
        out = self.out_dir(name)
        with self._lock:
            job = self._jobs.get(name) or Job.load(name, out)
            if job.running:
                raise ValueError(f"{name} is already running")
            self._check_can_start(job.module)
            self._check_unlocked(name, out)
            self._check_data(job)
            self._spawn(job, resume=True)
            self._jobs[job.name] = job
        return job

    def _check_data(self, job: Job):
        staged = self.uploads_dir(job.name)
        if any(a in (str(staged), f"--data={staged}") for a in job.argv) and not staged.is_dir():
            raise ValueError(
                f"the uploaded images of {job.name} are gone (they are removed when a run finishes or fails, "
                "and after a day): start a new run and upload them again"
            )

    def stop(self, name: str, wait: float = 0.0) -> Job:
        """SIGTERM: the loop finishes its step, writes a checkpoint and exits (``wait`` seconds at most)."""
        job = self._jobs.get(name)
        if job is None or not job.running:
            raise ValueError(f"no running job named {name!r}")
        job.stop_requested = True
        job.proc.send_signal(signal.SIGTERM)
        if wait:
            try:
                job.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        return job

    def get(self, name: str) -> Job | None:
        """The job for ``name``: one started here, or a run folder left by an earlier session."""
        if name in self._jobs:
            return self._jobs[name]
        try:
            out = self.out_dir(name)
            return Job.load(name, out) if (out / JOB_FILE).is_file() else None
        except ValueError:
            return None

    def status(self, name: str) -> JobStatus:
        """The job's state for the page; its message and log name no absolute server path."""
        job = self.get(name)
        if job is None:
            return JobStatus(name, "not started", 0, 0, message="no run with this name yet")
        st = job.status()
        st.message, st.log_tail = hide_paths(st.message, self.roots), hide_paths(st.log_tail, self.roots)
        return st

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def clean_uploads(self, max_age_s: float = UPLOAD_MAX_AGE_S) -> list[str]:
        """Remove stale staged uploads (``uploads.clean_stale``); the names removed."""
        return clean_stale(self.models_dir, run_finished, max_age_s)

    def shutdown(self, timeout: float = 30.0):
        """Stop every running job (each writes a checkpoint) and wait for them."""
        running = [j for j in self._jobs.values() if j.running]
        for job in running:
            job.stop_requested = True
            job.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for job in running:
            try:
                job.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.proc.kill()
