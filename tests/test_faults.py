"""A training run killed with SIGKILL at a random moment, or in the middle of writing a checkpoint,
resumes with --resume latest and ends with the weights of an unbroken run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from latentgen.training import list_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "tests.kill_worker", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if wait:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads((out / "final.json").read_text())
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
