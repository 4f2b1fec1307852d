"""The app against hostile and careless input, over real HTTP: extra trainer flags, exposure without a
password, training caps, uploads, the data root, the generation budget and timeout, the prompt cap,
SIGTERM, a second writer, absolute paths in messages and a broken model that sorts first.

Private Gradio events are hidden from the API docs and from ``gradio_client`` only: ``call`` reaches
them the way any HTTP client can (``/gradio_api/call/<api_name>``), so each test checks the server's
own answer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from latentgen.ui import AppConfig
from tests.conftest import free_port

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


