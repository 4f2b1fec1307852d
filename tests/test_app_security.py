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
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client
from PIL import Image

from latentgen.fsutil import RunLock
from latentgen.ui import AppConfig, serve
from latentgen.ui.flags import ALLOWED, parse_extra_flags
from latentgen.ui.jobs import JobManager, module_available
from latentgen.ui.registry import ModelRegistry
from tests.conftest import free_port
from tests.tiny_models import make_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
ATTACK = "--ou=/any/dir --max-step 1000000000 --mod /elsewhere --resu /elsewhere"
TOY = "tests.app_toy_trainer"
FINETUNE, DISTILL = "latentgen.train.finetune", "latentgen.train.distill"
needs_finetune = pytest.mark.skipif(not module_available(FINETUNE),
                                    reason="latentgen.train.finetune is not in this package: no Fine-tune tab")


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
            data_dir=str(site / "data"),
            port=free_port(),
            max_upload_files=3,
            max_upload_bytes=50_000,
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


# ---------------------------------------------------------------- 1. extra trainer flags
@needs_finetune
def test_the_attack_string_is_refused_over_http(app, url, site):
    message = error_of(call(url, "finetune_start", *start_values(name="attack", flags=ATTACK)))
    assert "'--ou' is not allowed in the extra flags" in message and "--lr, --warmup-steps" in message
    assert not (site / "models" / "attack").exists() and not app.jobs.jobs()


@pytest.mark.parametrize("text, message", [
    (ATTACK, "'--ou' is not allowed"),
    ("--out /tmp/x", "'--out' is not allowed"),
    ("--data=/etc", "'--data' is not allowed"),
    ("--max-steps 10", "'--max-steps' is not allowed"),
    ("--batch-size 4096", "'--batch-size' is not allowed"),
    ("--text-encoder /elsewhere", "'--text-encoder' is not allowed"),
    ("--lr 1e-4 /etc/passwd", "'/etc/passwd' is not allowed"),
    ("--lr", "--lr needs a value"),
    ("--lr 5", "--lr must be a number from 1e-08 to 1"),
    ("--lr nan", "--lr must be a number"),
    ("--seed -1", "--seed must be a whole number from 0"),
    ("--validate-every 1", "--validate-every must be a whole number from 10 to 20,000"),
    ("--lr-schedule sawtooth", "--lr-schedule must be one of constant, linear, cosine, wsd"),
    ("--train-text-encoder=1", "--train-text-encoder takes no value"),
    ("--lr '1e-4", "could not read the extra flags"),
])
def test_extra_flags_outside_the_allow_list_are_refused(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_extra_flags(text, FINETUNE)


def _trainer_parser(module: str):
    """The flag parser of an installed trainer (``latentgen.train.<name>``), as its ``main`` builds it."""
    from latentgen.train.config import parser_for

    return parser_for(pytest.importorskip(module).Config, module).parse_args


def test_allowed_flags_become_single_tokens_the_trainers_accept(tmp_path):
    got = parse_extra_flags("--lr 1e-4 --ema-decay=0.999 --train-text-encoder --instance-prompt '--out=/x'",
                            FINETUNE)
    assert got == ["--lr=0.0001", "--ema-decay=0.999", "--train-text-encoder", "--instance-prompt=--out=/x"]
    base = ["--model", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    args = _trainer_parser(FINETUNE)([*base, *got])
    assert args.instance_prompt == "--out=/x" and args.out == str(tmp_path / "o")  # a value stays a value
    samples = {"int": "10", "float": "0.5", "switch": None, "text": "a cat"}
    for module in (FINETUNE, DISTILL):
        tokens = []
        for name, flag in ALLOWED[module].items():
            if name != "--train-text-encoder":  # it excludes --shuffle-summary
                tokens += [name] if flag.kind == "switch" else [name, (flag.choices or [samples[flag.kind]])[0]]
        text = shlex.join(tokens)
        _trainer_parser(module)([*base, *parse_extra_flags(text, module)])  # every allowed flag is a real flag


@pytest.mark.parametrize("module", ["latentgen.train.unet", FINETUNE, DISTILL])
def test_the_trainers_refuse_abbreviated_flags(module, tmp_path, capsys):
    parse = _trainer_parser(module)
    base = ["--model", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    for abbreviated in (["--max-step", "5"], ["--ou=/any/dir"], ["--resu", "latest"]):
        with pytest.raises(SystemExit):
            parse([*base, *abbreviated])
        assert "unrecognized arguments" in capsys.readouterr().err


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


# ---------------------------------------------------------------- 3. training endpoints
@needs_finetune
def test_private_events_are_hidden_but_reachable_so_the_server_checks(url, client):
    api = client.view_api(return_format="dict", print_info=False)
    assert "/finetune_start" not in api["named_endpoints"]
    with pytest.raises(ValueError, match="Cannot find a function"):
        client.predict("x", api_name="/finetune_start")
    assert call(url, "finetune_status", "nope")[0] == "complete"  # any HTTP client reaches it


@needs_finetune
@pytest.mark.parametrize("values, message", [
    ({"steps": 20001}, "max steps must be a whole number from 1 to 20,000"),
    ({"steps": 1e12}, "max steps must be a whole number from 1 to 20,000"),
    ({"batch": 65}, "batch size must be a whole number from 1 to 64"),
    ({"every": 1}, "checkpoint every must be a whole number from 10 to 20"),
    ({"every": 21}, "checkpoint every must be a whole number from 10 to 20"),
])
def test_training_caps_are_enforced_by_the_server(app, url, values, message):
    assert message in error_of(call(url, "finetune_start", *start_values(**values)))
    assert not app.jobs.jobs()


@needs_finetune
@pytest.mark.parametrize("folder, message", [
    ("/", "is outside the data folder"),
    ("../outside", "contains '..'"),
    ("link", "is outside the data folder"),  # a symlink out of it
    ("cats/../../outside", "contains '..'"),
    ("missing", "does not exist in the data folder"),
])
def test_image_folders_stay_inside_the_data_root(app, url, site, folder, message):
    text = error_of(call(url, "finetune_start", *start_values(folder=folder)))
    assert message in text and "--data-dir" in text and "data/" in text
    assert str(site) not in text  # 8. no absolute server path
    text = error_of(call(url, "finetune_start", *start_values(folder=str(site / "outside"))))
    assert "outside the data folder" in text and not app.jobs.jobs()


def _upload(url: str, paths: list[Path]) -> list[dict]:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = requests.post(f"{url}/gradio_api/upload", files=files, timeout=60)
    if r.status_code != 200:
        return r.status_code
    return [{"path": p, "orig_name": Path(p).name, "meta": {"_type": "gradio.FileData"}} for p in r.json()]


@needs_finetune
def test_upload_caps(app, url, site, tmp_path):
    small = [png(tmp_path / f"s{i}.png") for i in range(4)]
    message = error_of(call(url, "finetune_start", *start_values(folder="", files=_upload(url, small))))
    assert "4 files uploaded; at most 3 per run" in message
    big = [png(tmp_path / f"b{i}.png", side=80, noise=True) for i in range(3)]  # ~19 KB each
    assert 16_000 < big[0].stat().st_size < 25_000
    message = error_of(call(url, "finetune_start", *start_values(folder="", files=_upload(url, big))))
    assert "at most 50 KB per run" in message
    assert _upload(url, [png(tmp_path / "huge.png", side=160, noise=True)]) == 413  # Gradio's max_file_size
    # a refused upload (no caption) leaves nothing staged
    message = error_of(call(url, "finetune_start", *start_values(name="nocap", folder="", files=_upload(url, small[:2]))))
    assert "have no caption" in message
    assert not (site / "models" / ".uploads" / "nocap").exists() and not app.jobs.jobs()


def test_stale_uploads_are_removed_at_startup(app, site):
    uploads = site / "models" / ".uploads"
    assert sorted(p.name for p in uploads.iterdir()) == ["kept"]  # ghost: no run; old: two days old


def staged_gone(staged: Path):
    return lambda: not staged.exists()


def test_staged_uploads_go_when_the_run_finishes_or_fails(tmp_path):
    jobs = JobManager(tmp_path / "models")
    for name, argv in (("done", ["--no-progress"]), ("broken", ["--no-such-flag"])):
        staged = jobs.uploads_dir(name)
        staged.mkdir(parents=True)
        png(staged / "a.png")
        job = jobs.start(TOY, name, 3, argv)
        job.proc.wait(120)
        wait_for(staged_gone(staged), 10, f"the staged uploads of {name} to go")
    assert jobs.status("done").state == "finished" and jobs.status("broken").state == "failed"


def test_no_training_hides_the_tabs_and_refuses_the_handlers(tmp_path):
    jobs = JobManager(tmp_path / "models", enabled=False)
    with pytest.raises(ValueError, match="training is turned off"):
        jobs.start(TOY, "x", 3, [])
    write_job(tmp_path / "models", "old", [])
    with pytest.raises(ValueError, match="training is turned off"):
        jobs.resume("old")


# ---------------------------------------------------------------- 4. generation budget and timeout
@pytest.fixture(scope="module")
def quick(site):
    """No training; a 1 s timeout and no budget: a large request runs into the timeout."""
    app = serve(AppConfig(models_dir=str(site / "models"), bundled_dir=str(site / "no_bundle"), port=free_port(),
                          training=False, request_timeout_s=1.0, max_cost=1e9), block=False)
    yield app
    app.close()


def test_no_training_app_has_no_training_events(quick):
    quick_url = quick.demo.local_url.rstrip("/")
    config = requests.get(quick_url + "/config", timeout=10).json()
    names = {d.get("api_name") for d in config["dependencies"]}
    assert "generate" in names and not any(str(n).startswith(("finetune", "distill")) for n in names)
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert "Generate" in labels and "Fine-tune" not in labels and "Distill" not in labels
    assert call(quick_url, "finetune_start", *start_values())[0] != "complete"


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


# ---------------------------------------------------------------- 6. SIGTERM
@needs_finetune
def test_sigterm_stops_the_training_children_then_the_app(tmp_path):
    import psutil

    models = tmp_path / "models"
    tiny = make_tiny_pipeline(tmp_path, name="tiny")
    out = write_job(models, "toy", ["--step-sleep", "0.2", "--no-progress"], max_steps=10_000)
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--models-dir", str(models), "--model", tiny,
               "--data-dir", str(tmp_path)]
    with open(tmp_path / "app.log", "w") as log:  # the app keeps its own handle
        app = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    children = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 120, "the app to listen")
        assert call(url, "finetune_resume", "toy")[0] == "complete"
        wait_for(lambda: (out / "logs" / "metrics.jsonl").is_file(), 120, "the trainer's first step")
        children = [p for p in psutil.Process(app.pid).children() if TOY in " ".join(p.cmdline())]
        assert len(children) == 1
        app.send_signal(signal.SIGTERM)
        assert app.wait(90) == 0, (tmp_path / "app.log").read_text()[-2000:]
        assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE
        assert list((out / "checkpoints").glob("checkpoint-*")), "the child wrote no checkpoint"
        assert "stopped at step" in (out / "logs" / "job.log").read_text()
    finally:
        for proc in children:
            if proc.is_running():
                proc.kill()
        if app.poll() is None:
            app.kill()


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/config", timeout=2).status_code == 200
    except requests.RequestException:
        return False


# ---------------------------------------------------------------- 7. a second writer
@needs_finetune
def test_a_run_another_process_trains_is_not_resumed_or_restarted(app, url, site):
    out = write_job(site / "models", "locked", [])
    code = ("import sys, time\nfrom latentgen.fsutil import RunLock\n"
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked" and RunLock.held(out)
        for result in (call(url, "finetune_resume", "locked"),
                       call(url, "finetune_start", *start_values(name="locked"))):
            assert "still being trained by another process" in error_of(result)
        assert not app.jobs.jobs()
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- 8. no absolute paths in messages
@needs_finetune
def test_messages_name_folders_without_absolute_paths(app, url, site, client):
    assert str(site) not in app.startup_message
    with pytest.raises(Exception) as info:
        client.predict(prompt="x", model="nope", api_name="/generate")
    assert "no model named 'nope' in the models folder models/" in str(info.value)
    assert str(site) not in str(info.value)
    with pytest.raises(Exception) as info:
        client.predict(prompt="x", model="aaa-incomplete", api_name="/generate")
    assert "aaa-incomplete" in str(info.value) and str(site) not in str(info.value)
    jobs = JobManager(site / "models")
    jobs.start(TOY, "toydone", 3, ["--no-progress"]).proc.wait(120)
    kind, outputs = call(url, "finetune_status", "toydone")
    assert kind == "complete", outputs
    status, log_tail = outputs[1], outputs[4]
    assert status == "**finished**: the model is in the models folder as toydone"
    assert "--out models/toydone" in log_tail and str(site) not in log_tail


# ---------------------------------------------------------------- 9. a broken model that sorts first
def test_broken_models_that_sort_first_are_not_the_default(app, site, client):
    reg = ModelRegistry(site / "models", bundled_dir=site / "no_bundle")
    assert reg.choices()[:3] == ["aaa-incomplete", "aab-corrupt", "tiny"]
    assert reg.default_choice() == "aab-corrupt"  # complete on disk: only loading it tells
    message = app.startup_message
    assert "**aab-corrupt**" in message and "could not be loaded" in message and "Using **tiny** instead" in message
    assert app.registry.default_choice() == "tiny"
    assert client.predict(prompt="a red circle", steps=2, seed=7, api_name="/generate")[1] == 7  # no model given
