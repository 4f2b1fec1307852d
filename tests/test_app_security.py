"""The app against hostile and careless input, over real HTTP: extra trainer flags, exposure without a
password, training caps, uploads, the data root, the generation budget and timeout, the prompt cap,
SIGTERM, a second writer, absolute paths in messages and a broken model that sorts first.

Private Gradio events are hidden from the API docs and from ``gradio_client`` only: ``call`` reaches
them the way any HTTP client can (``/gradio_api/call/<api_name>``), so each test checks the server's
own answer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client
from PIL import Image

from latentgen.ui import AppConfig, serve
from latentgen.ui.registry import ModelRegistry
from tests.conftest import free_port
from tests.tiny_models import make_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
ATTACK = "--ou=/any/dir --max-step 1000000000 --mod /elsewhere --resu /elsewhere"
TOY = "tests.app_toy_trainer"


def call(url: str, api_name: str, *data, timeout: float = 60) -> tuple[str, object]:
    """Call event ``api_name`` as any HTTP client can: ("complete", outputs) or ("error", message)."""
    r = requests.post(f"{url}/gradio_api/call/{api_name}", json={"data": list(data)}, timeout=timeout)
    if r.status_code != 200:
        return "refused", r.status_code
    event_id = r.json()["event_id"]
    text = requests.get(f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=timeout).text
    kind, payload = re.findall(r"event: (\w+)\ndata: (.*)", text)[-1]
    return kind, json.loads(payload)


def start_values(name="run", model="tiny", folder="cats", files=None, steps=20, batch=2, every=10, flags=""):
    """The Fine-tune tab's Start inputs, in order."""
    return [name, model, folder, files, "", steps, batch, every, "LoRA", "", flags]


def error_of(result) -> str:
    kind, payload = result
    assert kind == "error", result
    return str(payload)


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def write_job(models: Path, name: str, argv: list[str], max_steps: int = 20, module: str = TOY) -> Path:
    out = models / name
    out.mkdir(parents=True)
    (out / "job.json").write_text(json.dumps({"module": module, "argv": argv, "max_steps": max_steps}))
    return out


def png(path: Path, side: int = 16, noise: bool = False) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8) if noise else np.zeros((side, side, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Models (a broken pair that sorts before ``tiny``), a data root with a link out of it, stale uploads."""
    root = tmp_path_factory.mktemp("secure")
    models = root / "models"
    make_tiny_pipeline(models, name="tiny")
    (models / "aaa-incomplete").mkdir()
    (models / "aaa-incomplete" / "model_index.json").write_text("{}")  # fails the completeness check
    make_tiny_pipeline(models, name="aab-corrupt")  # complete, but its weights do not load
    (models / "aab-corrupt" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    (root / "data" / "cats").mkdir(parents=True)
    png(root / "data" / "cats" / "a.png")
    (root / "data" / "cats" / "a.txt").write_text("a red circle")
    (root / "outside").mkdir()
    os.symlink(root / "outside", root / "data" / "link")
    uploads = models / ".uploads"
    for name in ("ghost", "old", "kept"):
        (uploads / name).mkdir(parents=True)
    write_job(models, "old", ["--data", str(uploads / "old")])
    write_job(models, "kept", ["--data", str(uploads / "kept")])
    two_days_ago = time.time() - 2 * 86400
    os.utime(uploads / "old", (two_days_ago, two_days_ago))
    (root / "no_bundle").mkdir()
    return root


@pytest.fixture(scope="module")
def app(site):
    app = serve(
        AppConfig(
            models_dir=str(site / "models"),
            bundled_dir=str(site / "no_bundle"),
            port=free_port(),
        ),
        block=False,
    )
    yield app
    app.close()


@pytest.fixture(scope="module")
def url(app):
    return app.demo.local_url.rstrip("/")


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


# ---------------------------------------------------------------- 2. exposure without --auth
def test_exposure_without_auth_is_refused_unless_insecure():
    import app as app_module

    for kwargs in ({"host": "0.0.0.0"}, {"host": "192.168.1.20"}, {"share": True}, {"host": ""}):
        with pytest.raises(ValueError, match=re.escape("add --auth USER:PASS")):
            AppConfig(**kwargs)
        AppConfig(**kwargs, auth=("alice", "s3cret"))
        AppConfig(**kwargs, insecure_no_auth=True)
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        AppConfig(host=host)
    for argv in (["--host", "0.0.0.0"], ["--share"]):
        with pytest.raises(SystemExit, match=re.escape("--auth USER:PASS")):
            app_module.main([*argv, "--port", str(free_port())], block=False)


def test_python_app_py_refuses_a_public_host_without_auth(tmp_path):
    port = free_port()
    command = [sys.executable, "app.py", "--host", "0.0.0.0", "--port", str(port), "--models-dir", str(tmp_path)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "--auth USER:PASS" in proc.stderr and "--insecure-no-auth" in proc.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_insecure_no_auth_gives_a_loud_warning():
    from latentgen.ui.limits import check_exposure

    assert check_exposure("127.0.0.1", False, None, False) is None
    assert check_exposure("0.0.0.0", False, ("a", "b"), False) is None
    warning = check_exposure("0.0.0.0", False, None, True)
    assert warning.startswith("WARNING") and "WITHOUT A PASSWORD" in warning and "--auth USER:PASS" in warning


# ---------------------------------------------------------------- 4. generation budget and timeout
@pytest.fixture(scope="module")
def quick(site):
    """A 1 s timeout and no budget: a large request runs into the timeout."""
    app = serve(AppConfig(models_dir=str(site / "models"), bundled_dir=str(site / "no_bundle"), port=free_port(),
                          request_timeout_s=1.0, max_cost=1e9), block=False)
    yield app
    app.close()


def test_requests_over_the_budget_are_refused(client):
    for kwargs, message in (
        ({"steps": 150, "batch_size": 8, "width": 128, "height": 128}, "lower the steps, the batch size or the width"),
        ({"steps": 150, "batch_size": 8}, "1,200 image-steps at the model's native 16 x 16, and at most 400"),
        ({"steps": 10, "width": 136, "height": 16}, "width 136 is more than 8 x this model's native 16 x 16"),
    ):
        with pytest.raises(Exception, match=re.escape(message)):
            client.submit(prompt="a red circle", model="tiny", api_name="/generate", **kwargs).result(timeout=60)
    images, _ = client.predict(prompt="a red circle", model="tiny", steps=50, batch_size=8, seed=1,
                               api_name="/generate")
    assert len(images) == 8  # 400: within the budget


def test_a_request_past_the_timeout_ends_with_an_error(quick):
    c = Client(quick.demo.local_url, verbose=False)
    t0 = time.monotonic()
    job = c.submit(prompt="a red circle", model="tiny", steps=150, batch_size=8, width=64, height=64,
                   api_name="/generate")
    with pytest.raises(Exception, match=re.escape("timed out after 1 s")):
        job.result(timeout=60)
    assert time.monotonic() - t0 < 30
    assert c.predict(prompt="a red circle", model="tiny", steps=2, seed=5, api_name="/generate")[1] == 5


# ---------------------------------------------------------------- 5. prompt cap
def test_a_4_mb_prompt_is_refused_fast_without_flooding_the_log(client, capfd, caplog):
    capfd.readouterr()
    for kwargs in ({"prompt": "a red circle " * 320_000}, {"prompt": "ok", "negative_prompt": "x" * 4_000_000}):
        t0 = time.monotonic()
        with pytest.raises(Exception, match=r"characters long; at most 1,000 are accepted") as info:
            client.submit(api_name="/generate", model="tiny", steps=2, **kwargs).result(timeout=60)
        assert time.monotonic() - t0 < 10 and len(str(info.value)) < 400
    out, err = capfd.readouterr()
    assert len(out) + len(err) + len(caplog.text) < 100_000


# ---------------------------------------------------------------- 9. a broken model that sorts first
def test_broken_models_that_sort_first_are_not_the_default(app, site, client):
    reg = ModelRegistry(site / "models", bundled_dir=site / "no_bundle")
    assert reg.choices()[:3] == ["aaa-incomplete", "aab-corrupt", "tiny"]
    assert reg.default_choice() == "aab-corrupt"  # complete on disk: only loading it tells
    message = app.startup_message
    assert "**aab-corrupt**" in message and "could not be loaded" in message and "Using **tiny** instead" in message
    assert app.registry.default_choice() == "tiny"
    assert client.predict(prompt="a red circle", steps=2, seed=7, api_name="/generate")[1] == 7  # no model given
