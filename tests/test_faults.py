"""A training run killed with SIGKILL at a random moment, in the middle of writing a checkpoint or of
re-saving one, or whose disk fills up (a real EFBIG from RLIMIT_FSIZE), resumes with --resume latest
and ends with the weights of an unbroken run; a second process training into the same folder is
turned away at once."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentgen.fsutil import RunLock
from latentgen.training import list_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(out, *extra):
    return [sys.executable, "-m", "tests.kill_worker", str(out), *extra]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _attempt(out, *extra) -> subprocess.CompletedProcess:
    """Run the worker to its end, whatever the outcome."""
    return subprocess.run(_cmd(out, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
                          check=False)


def _run(out, *extra, wait=True):
    if wait:
        r = _attempt(out, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads((out / "final.json").read_text())
    return subprocess.Popen(_cmd(out, *extra), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(pred, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("unbroken"))


def _close(a, b):
    for pa, pb in zip(a, b):
        assert max(abs(x - y) for x, y in zip(pa, pb)) < 1e-6


def test_sigkill_at_a_random_moment_then_resume(unbroken, tmp_path):
    out = tmp_path / "run"
    proc = _run(out, "--step-sleep", "0.05", wait=False)
    ckpts = out / "checkpoints"
    _wait_for(lambda: len(list_checkpoints(str(ckpts))) >= 1)
    time.sleep(random.Random().uniform(0.0, 0.6))  # somewhere in the next few steps, or mid-save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list_checkpoints(str(ckpts))
    assert done, "a complete checkpoint survives the kill"
    _close(_run(out, "--resume", "latest"), unbroken)


def test_sigkill_while_writing_a_checkpoint(unbroken, tmp_path):
    out = tmp_path / "run"
    proc = _run(out, "--hang-in-save", "9", wait=False)
    _wait_for(lambda: (out / "in-save").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = str(out / "checkpoints")
    assert [s for s, _ in list_checkpoints(ckpts)] == [3, 6]  # the half-written step-9 one does not count
    assert any(n.startswith(".tmp-checkpoint-9") for n in os.listdir(ckpts))
    _close(_run(out, "--resume", "latest"), unbroken)
    assert not any(n.startswith(".tmp") for n in os.listdir(ckpts))  # cleaned up by the resumed run


def _error_line(stderr: str, name: str) -> str:
    """The ``<module>.<name>: message`` line a worker's traceback ends with."""
    return next(line for line in reversed(stderr.splitlines()) if f"{name}: " in line)


@pytest.mark.parametrize("limit, cause", [
    (512, "(SafetensorError: Error while serializing: I/O error: File too large"),  # model.safetensors
    (1024, "(SafetensorError: Error while serializing: I/O error: File too large"),  # optimizer.safetensors
    (128, "(File too large)"),  # optimizer.json, the first file written
], ids=["model", "optimizer", "json"])
def test_full_disk_while_writing_a_checkpoint(unbroken, tmp_path, limit, cause):
    """From step 9 on no file may grow past ``limit`` bytes, so checkpoint-9's write fails for real: in
    safetensors (the model or the optimizer's tensors, SafetensorError) or in a JSON file (OSError)."""
    out = tmp_path / "run"
    r = _attempt(out, "--file-size-limit", str(limit), "--limit-from-step", "9")
    assert r.returncode == 1, r.stderr[-2000:]
    msg = _error_line(r.stderr, "CheckpointError")
    assert "could not write checkpoint-9" in msg and cause in msg, msg
    assert "Free disk space" in msg and "--resume latest" in msg, msg
    assert msg.endswith("the last complete checkpoint is checkpoint-6."), msg
    assert str(tmp_path) not in msg  # the folder's name, not the server's path
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-3", "checkpoint-6"]  # no .tmp-checkpoint-9
    _close(_run(out, "--resume", "latest"), unbroken)


def test_full_disk_while_writing_the_run_config_keeps_the_old_one(tmp_path):
    out = tmp_path / "run"
    _run(out, "--max-steps", "3")
    before = (out / "run_config.json").read_bytes()
    r = _attempt(out, "--resume", "latest", "--file-size-limit", "16")  # the lock's pid fits, the config not
    assert r.returncode == 1 and "File too large" in _error_line(r.stderr, "OSError"), r.stderr[-2000:]
    assert (out / "run_config.json").read_bytes() == before
    assert [n for n in os.listdir(out) if "run_config" in n] == ["run_config.json"]  # no temporary file left


def test_sigkill_while_a_resave_moves_in_keeps_that_step(unbroken, tmp_path):
    """Re-saving a step (a run resumed from an older checkpoint reaching it again) moves the old copy
    aside, not away: killed just before the new copy is renamed in, the next run finds the step."""
    out = tmp_path / "run"
    _run(out, "--max-steps", "9")
    ckpts = out / "checkpoints"
    r = _attempt(out, "--resume", str(ckpts / "checkpoint-6"), "--max-steps", "9", "--kill-at-publish")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    whole = [n for n in os.listdir(ckpts)
             if n.startswith("checkpoint-9") and (ckpts / n / "trainer_state.json").is_file()]
    assert whole, f"no complete copy of step 9 is left: {sorted(os.listdir(ckpts))}"
    r = _attempt(out, "--resume", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "checkpoint-9 at step 9" in r.stdout, r.stdout
    assert not any(".old-" in n or n.startswith(".tmp") for n in os.listdir(ckpts))
    _close(json.loads((out / "final.json").read_text()), unbroken)


def test_a_second_process_training_into_the_same_folder_fails_at_once(unbroken, tmp_path):
    out = tmp_path / "run"
    first = _run(out, "--step-sleep", "1.0", wait=False)
    ckpts = out / "checkpoints"
    _wait_for(lambda: len(list_checkpoints(str(ckpts))) >= 1)
    assert RunLock.held(out)
    second = _attempt(out, "--resume", "latest")  # e.g. a restarted app resuming a run that still goes on
    assert second.returncode == 1
    msg = _error_line(second.stderr, "RunLockedError")
    assert "the run folder run is in use by another training process" in msg, msg
    assert first.poll() is None  # turned away while the first one trains
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not RunLock.held(out)  # the kernel dropped the killed process's lock
    _close(_run(out, "--resume", "latest"), unbroken)


REWRITE_CONFIG = """
import sys
from latentgen.models.presets import save_config
from latentgen.models.vae import get_vae_config
from tests.kill_worker import limit_file_size

limit_file_size(int(sys.argv[2]))
save_config(get_vae_config("tiny"), sys.argv[1])
"""


def test_full_disk_while_rewriting_a_model_config_keeps_the_old_one(tmp_path):
    """The trainers' JSON files (model configs, finetune.json, recipe.json, ...) are written atomically too."""
    from latentgen.models.presets import CONFIG_NAME, save_config
    from latentgen.models.vae import get_vae_config

    path = Path(save_config(get_vae_config("tiny"), tmp_path))
    before = path.read_bytes()
    r = subprocess.run([sys.executable, "-c", REWRITE_CONFIG, str(tmp_path), str(len(before) // 2)], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "File too large" in _error_line(r.stderr, "OSError"), r.stderr[-2000:]
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [CONFIG_NAME]
