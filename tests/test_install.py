"""The wheel, installed into a fresh environment and used from a folder outside the checkout.

The wheel is built from the package's files (``pip wheel --no-deps --no-build-isolation``) and
installed with ``--no-deps`` into a venv that sees this environment's site-packages for the
dependencies. From a temporary folder: ``latentgen --help``, ``latentgen train NAME --help`` for
every trainer in the package, ``latentgen app --help``, ``latentgen data shapes``, then
``latentgen app`` on a tiny model answering HTTP, while the app's job manager (``latentgen.ui.jobs``)
trains the installed ``latentgen.train.unet`` for two steps into a model folder; and the Fine-tune and
Distill tabs' jobs (``latentgen.train.finetune``, ``latentgen.train.distill``) run from the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.tiny_models import make_tiny_pipeline

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

JOB_SCRIPT = """
import importlib.util, json, sys
from latentgen.ui.jobs import JobManager

module, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
jobs = JobManager("models")
job = jobs.start(module, name, steps, sys.argv[4:])
job.proc.wait(300)
st = jobs.status(name)
print(json.dumps({"state": st.state, "step": st.step, "log": st.log_tail,
                  "trainer": importlib.util.find_spec(module).origin}))
"""
UNET_FLAGS = ["--data=data/shapes", "--model=models/tiny", "--preset=tiny", "--size=16", "--batch-size=4",
              "--checkpoint-every=2", "--validate-every=0", "--val-steps=1", "--no-progress"]


def _env(venv: Path) -> dict:
    """This environment without its Python path settings, the venv's commands first."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _copy_sources(dest: Path) -> Path:
    """The files the wheel is built from (the root's files and the package), without caches or builds."""
    dest.mkdir()
    for path in REPO.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    shutil.copytree(REPO / "latentgen", dest / "latentgen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    src = _copy_sources(root / "src")
    wheels, env_dir = root / "wheels", root / "venv"
    _must(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(src), cwd=root)
    (wheel,) = wheels.glob("latentgen-*.whl")
    # --without-pip: no ensurepip needed; the venv's python runs this environment's pip (system site-packages)
    _must(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir), cwd=root)
    _must(str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel), cwd=root,
          env=_env(env_dir))
    return env_dir


def _must(*command: str, cwd: Path, env: dict | None = None) -> None:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(command)}: {proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def workdir(venv, tmp_path_factory) -> Path:
    """A folder outside the checkout with a tiny model (``models/tiny``)."""
    work = tmp_path_factory.mktemp("user")
    make_tiny_pipeline(work / "models", name="tiny")
    return work


def run(venv: Path, cwd: Path, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=cwd, env=_env(venv), capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_the_installed_package_is_the_one_imported(venv, workdir):
    proc = run(venv, workdir, str(venv / "bin" / "python"), "-c", "import latentgen; print(latentgen.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve().is_relative_to(venv.resolve()), proc.stdout
    assert (venv / "bin" / "latentgen").is_file()


def test_the_commands_answer_outside_the_checkout(venv, workdir):
    found = run(venv, workdir, str(venv / "bin" / "python"), "-c",
                "import importlib.util as u; from latentgen.train import TRAINERS; "
                "print(' '.join(n for n in TRAINERS if u.find_spec('latentgen.train.' + n)))")
    trainers = found.stdout.split()
    assert "unet" in trainers, found.stderr
    helps = {name: subprocess.Popen(["latentgen", "train", name, "--help"], cwd=workdir, env=_env(venv),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in trainers}  # side by side: each imports torch
    top = run(venv, workdir, "latentgen", "--help")
    assert top.returncode == 0 and "train" in top.stdout and "app" in top.stdout, top.stderr
    listing = run(venv, workdir, "latentgen", "train", "--help")
    assert listing.returncode == 0 and all(f"  {name} " in listing.stdout for name in trainers), listing.stdout
    app_help = run(venv, workdir, "latentgen", "app", "--help")
    assert app_help.returncode == 0 and "--models-dir" in app_help.stdout, app_help.stderr
    for name, proc in helps.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith(f"usage: latentgen train {name}"), (name, err[-2000:])


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _job(venv: Path, workdir: Path, module: str, name: str, flags: list[str], steps: int = 2) -> dict:
    """Run ``module`` as the app's job manager runs a tab's job; it must finish from the installed package."""
    job = run(venv, workdir, str(venv / "bin" / "python"), "-c", JOB_SCRIPT, module, name, str(steps), *flags,
              timeout=400)
    assert job.returncode == 0, job.stderr[-3000:]
    result = json.loads(job.stdout.strip().splitlines()[-1])
    assert result["state"] == "finished" and result["step"] == steps, result["log"]
    assert Path(result["trainer"]).resolve().is_relative_to(venv.resolve()), result["trainer"]
    assert f"{venv / 'bin' / 'python'} -m {module}" in (workdir / "models" / name / "logs" / "job.log").read_text()
    return result


def test_the_fine_tune_and_distill_tabs_jobs_run_the_installed_trainers(venv, workdir):
    """The flags the Fine-tune and Distill tabs pass (``latentgen.ui.training_tab``), on the tiny model."""
    data = run(venv, workdir, "latentgen", "data", "shapes", "--out", "data/tabs", "--n", "8", "--size", "16")
    assert data.returncode == 0, data.stderr
    common = ["--data=data/tabs", "--model=models/tiny", "--batch-size=4", "--checkpoint-every=2", "--no-progress",
              "--log-every=1"]
    _job(venv, workdir, "latentgen.train.finetune", "lora-run",
         [*common, "--lora-rank=4", "--tune-decoder=off", "--prior=off"])
    assert (workdir / "models" / "lora-run" / "pytorch_lora_weights.safetensors").is_file()
    _job(venv, workdir, "latentgen.train.distill", "student-run", [*common, "--min-steps=4", "--teacher-steps=8"])
    assert any((workdir / "models" / "student-run").glob("**/model_index.json"))


def test_the_app_serves_while_a_job_trains_the_installed_unet(venv, workdir):
    data = run(venv, workdir, "latentgen", "data", "shapes", "--out", "data/shapes", "--n", "8", "--size", "16")
    assert data.returncode == 0, data.stderr
    port = free_port()
    with open(workdir / "app.log", "w") as log:  # the app keeps its own handle
        app = subprocess.Popen(["latentgen", "app", "--port", str(port), "--models-dir", "models", "--model",
                                "models/tiny", "--data-dir", "data"], cwd=workdir, env=_env(venv),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        _job(venv, workdir, "latentgen.train.unet", "unet-run", UNET_FLAGS)
        assert (workdir / "models" / "unet-run" / "model_index.json").is_file()
        deadline = time.monotonic() + 120
        while not _answers(f"http://127.0.0.1:{port}/") and app.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _answers(f"http://127.0.0.1:{port}/"), (workdir / "app.log").read_text()[-3000:]
    finally:
        app.terminate()
        try:
            app.wait(60)
        except subprocess.TimeoutExpired:
            app.kill()
