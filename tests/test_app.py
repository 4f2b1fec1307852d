"""The browser app in-process: API generation, reproducible seeds, bad input, auth, path traversal,
background jobs, and a short load test. A tiny random model; a free loopback port per server."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from PIL import Image

from latentgen.pngmeta import read_png_params
from latentgen.ui import AppConfig, serve
from latentgen.ui.jobs import JobManager, check_run_name
from latentgen.ui.registry import ModelRegistry
from tests.conftest import free_port
from tests.tiny_models import make_tiny_pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    models = root / "models"
    models.mkdir()
    make_tiny_pipeline(models, name="tiny")
    make_tiny_pipeline(models, name="tiny-4step", seed=1, time_cond_proj_dim=8)
    (root / "no_bundle").mkdir()
    return root


@pytest.fixture(scope="module")
def app(models):
    app = serve(
        AppConfig(
            models_dir=str(models / "models"),
            bundled_dir=str(models / "no_bundle"),
            port=free_port(),
            concurrency=2,
        ),
        block=False,
    )
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.demo.local_url, verbose=False)


def _pixels(result) -> list[np.ndarray]:
    images, _ = result
    return [np.asarray(Image.open(item["image"])) for item in images]


def test_loopback_by_default_and_endpoints(app, client):
    assert app.demo.local_url.startswith("http://127.0.0.1:")
    assert app.demo.share_url is None
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/generate", "/edit", "/models", "/png_params"}  # README: API
    params = [p["parameter_name"] for p in api["named_endpoints"]["/generate"]["parameters"]]
    assert params[:7] == ["prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height"]
    assert client.predict(api_name="/models") == ["tiny", "tiny-4step"]


def test_the_generate_tab_offers_the_example_prompts(app):
    from latentgen.examples import EXAMPLE_PROMPTS

    config = requests.get(app.demo.local_url.rstrip("/") + "/config", timeout=10).json()
    datasets = [c["props"] for c in config["components"] if c.get("type") == "dataset"]
    assert [[p] for p in EXAMPLE_PROMPTS] in [d.get("samples") for d in datasets]
    names = {d.get("api_name") for d in config["dependencies"]}
    assert "load_example" in names  # clicking one fills the prompt (a private event: not in the API)


def test_example_prompts_are_in_the_bundled_models_vocabulary():
    from latentgen.data.emoji import emoji_name, openmoji_sequences
    from latentgen.data.shapes import HELDOUT_PAIRS, canonical_clause, parse_prompt
    from latentgen.examples import EMOJI, EXAMPLE_PROMPTS, HELDOUT, SHAPES

    assert EXAMPLE_PROMPTS == SHAPES + HELDOUT + EMOJI and len(set(EXAMPLE_PROMPTS)) == len(EXAMPLE_PROMPTS)
    for prompt in SHAPES + HELDOUT:
        objects = parse_prompt(prompt)  # every word in the shapes vocabulary
        assert " and ".join(map(canonical_clause, objects)) == prompt, prompt  # canonical and complete
        assert all(None not in (o.size, o.color, o.shape, o.position) for o in objects), prompt
        assert any((o.color, o.shape) in HELDOUT_PAIRS for o in objects) == (prompt in HELDOUT), prompt
    assert set(EMOJI) <= {emoji_name(seq) for seq in openmoji_sequences()}  # OpenMoji names, as captioned


def test_generate_is_reproducible_and_png_holds_settings(client):
    a = client.predict(prompt="a red circle", seed=123, steps=3, api_name="/generate")
    b = client.predict(prompt="a red circle", seed=123, steps=3, api_name="/generate")
    c = client.predict(prompt="a red circle", seed=124, steps=3, api_name="/generate")
    assert a[1] == 123
    (ia,), (ib,), (ic,) = _pixels(a), _pixels(b), _pixels(c)
    assert ia.shape == (16, 16, 3)
    np.testing.assert_array_equal(ia, ib)
    assert np.abs(ia.astype(int) - ic).max() > 0
    params = read_png_params(a[0][0]["image"])
    assert params["seed"] == 123 and params["prompt"] == "a red circle" and params["steps"] == 3
    assert client.predict(handle_file(a[0][0]["image"]), api_name="/png_params") == params


def test_batch_seeds_are_per_image_and_random_seed_is_reported(client):
    images, seed = client.predict(
        prompt="a blue square", seed=-1, steps=2, batch_size=2, model="tiny-4step", api_name="/generate"
    )
    assert len(images) == 2 and 0 <= seed < 2**32
    assert [read_png_params(i["image"])["seed"] for i in images] == [seed, seed + 1]
    # the second image alone, from the settings in its PNG, is the same image
    p = read_png_params(images[1]["image"])
    again = client.predict(
        prompt=p["prompt"], seed=p["seed"], steps=p["steps"], model=p["model"], api_name="/generate"
    )
    # batched and alone are different float sums: a value on a rounding edge may move one 8-bit level
    diff = np.abs(_pixels(again)[0].astype(int) - np.asarray(Image.open(images[1]["image"])).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


BAD_REQUESTS = [
    ({"steps": 0}, "steps must be a whole number from 1 to 150"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"width": 15}, "not a multiple of this model's VAE factor 2"),
    ({"model": ""}, "no model chosen"),
    ({"model": "../tiny"}, "contains '..'"),
    ({"model": "/etc"}, "outside the models folder"),
    ({"model": "nope"}, "no model named 'nope'"),
    ({"sampler": "warp"}, "unknown sampler 'warp'"),
    ({"guidance": 99}, "guidance must be a number from 0 to 30"),
    ({"batch_size": 0}, "batch size must be a whole number from 1 to 8"),
]


def test_bad_requests_are_readable_errors_and_the_server_stays_up(client):
    for i, (bad, message) in enumerate(BAD_REQUESTS):
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(api_name="/generate", **{"prompt": "a red circle", "steps": 2, **bad})
        if i == 0:  # a bad request, then a good one succeeds
            assert client.predict(prompt="a red circle", seed=1, steps=2, api_name="/generate")[1] == 1
    assert client.predict(prompt="a red circle", seed=2, steps=2, api_name="/generate")[1] == 2


def test_edit_and_unreadable_image(client, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (24, 20), (200, 30, 30)).save(src)
    images, seed = client.predict(
        image=handle_file(str(src)), prompt="a blue square", strength=0.5, steps=4, seed=3, api_name="/edit"
    )
    assert seed == 3 and Image.open(images[0]["image"]).size == (16, 16)
    assert read_png_params(images[0]["image"])["mode"] == "img2img"
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(Exception, match="could not read broken.png as an image"):
        client.predict(image=handle_file(str(bad)), prompt="x", api_name="/edit")
    assert client.predict(prompt="ok", seed=2, steps=2, api_name="/generate")[1] == 2


def test_short_load_with_one_bad_request(client, app):
    """3 clients x 2 requests at once (the app runs 2 at a time), plus one bad request: only the bad
    one fails, and each image equals the one the same request gives alone."""

    def one(i):
        c = Client(app.demo.local_url, verbose=False)
        return [c.predict(prompt=f"a red circle {i}", seed=i * 10 + k, steps=3, api_name="/generate")
                for k in range(2)]

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(3)]
        bad = pool.submit(lambda: client.predict(prompt="x", width=17, api_name="/generate"))
        results = [r for f in futures for r in f.result(timeout=120)]
        with pytest.raises(Exception, match="VAE factor"):
            bad.result(timeout=120)
    assert sorted(seed for _, seed in results) == [0, 1, 10, 11, 20, 21]
    for result in results[::2]:  # requests running side by side do not disturb each other
        seed = result[1]
        alone = client.predict(prompt=f"a red circle {seed // 10}", seed=seed, steps=3, api_name="/generate")
        np.testing.assert_array_equal(_pixels(result)[0], _pixels(alone)[0])


# ---------------------------------------------------------------- auth and an empty install
@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    (root / "no_bundle").mkdir()
    app = serve(
        AppConfig(
            models_dir=str(root / "models"),
            bundled_dir=str(root / "no_bundle"),
            port=free_port(),
            auth=("alice", "s3cret"),
        ),
        block=False,
    )
    yield app
    app.close()


def test_auth_protects_page_and_api(auth_app):
    url = auth_app.demo.local_url.rstrip("/")
    assert requests.get(url + "/config", timeout=10).status_code == 401
    assert requests.get(url + "/gradio_api/info", timeout=10).status_code == 401
    for path in (
        "/gradio_api/queue/join",
        "/gradio_api/call/generate",
        "/gradio_api/run/generate",
        "/gradio_api/upload",
    ):
        assert requests.post(url + path, json={"data": ["x"]}, timeout=10).status_code == 401, path
    with pytest.raises(ValueError, match="credentials were not provided"):
        Client(url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("alice", "wrong"), verbose=False)
    ok = Client(url, auth=("alice", "s3cret"), verbose=False)
    assert ok.predict(api_name="/models") == []


def test_no_model_installed_says_how_to_get_one(auth_app):
    assert "No model is installed" in auth_app.startup_message and "--model DIR" in auth_app.startup_message
    c = Client(auth_app.demo.local_url, auth=("alice", "s3cret"), verbose=False)
    with pytest.raises(Exception, match="No model is installed"):
        c.predict(prompt="a red circle", api_name="/generate")


# ---------------------------------------------------------------- model paths
def test_model_paths_stay_inside_the_models_folder(models, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    outside = Path(make_tiny_pipeline(tmp_path, name="elsewhere"))
    os.symlink(outside, root / "escape")  # a link out of the folder
    os.symlink(models / "models" / "tiny", root / "inside")  # also out: its target is elsewhere
    reg = ModelRegistry(root, bundled_dir=tmp_path / "none")
    assert reg.choices() == []  # links that leave the folder are not offered
    for bad in ("escape", "inside", str(outside), "../elsewhere", "escape/../../elsewhere", "/", str(root)):
        with pytest.raises(ValueError, match="outside the models folder|contains '..'"):
            reg.resolve(bad)
    make_tiny_pipeline(root, name="mine")
    assert reg.choices() == ["mine"]
    assert reg.resolve("mine") == (root / "mine").resolve()
    assert reg.resolve(str(root / "mine")) == (root / "mine").resolve()
    with pytest.raises(ValueError, match="no model chosen"):
        reg.resolve("  ")
    # the operator's --model may live anywhere; it is offered by name only
    reg2 = ModelRegistry(root, startup_model=outside, bundled_dir=tmp_path / "none")
    assert reg2.default_choice() == "elsewhere" and reg2.resolve("elsewhere") == outside
    with pytest.raises(ValueError, match="outside the models folder"):
        reg2.resolve(str(outside))


def test_concurrent_requests_share_the_tokenizer_safely(models):
    """Tokenizers keep padding/truncation state: unlocked, concurrent prompts failed ~3% of calls."""
    import threading

    reg = ModelRegistry(models / "models", bundled_dir=models / "no_bundle")
    errors = []

    def work(i):
        for _ in range(8):
            try:
                reg.for_call("tiny")(f"a red circle and a big blue square left of a small green triangle {i}",
                                     num_inference_steps=1, output_type="latent")
            except Exception as e:  # collected: the assertion below names them
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_run_names_are_plain_folder_names():
    assert check_run_name(" my-cats_2 ") == "my-cats_2"
    for bad in ("", "..", "../x", "a/b", "/tmp/x", ".hidden", "x" * 65):
        with pytest.raises(ValueError, match="invalid model name"):
            check_run_name(bad)


# ---------------------------------------------------------------- background jobs
def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_job_start_progress_stop_resume(tmp_path):
    jobs = JobManager(tmp_path / "models", python=sys.executable)
    assert jobs.available("tests.app_toy_trainer") and jobs.available("latentgen.train.unet")
    assert not jobs.available("latentgen.train.no_such_trainer") and not jobs.available("train/unet")
    with pytest.raises(ValueError, match="not available in this version"):
        jobs.start("latentgen.train.no_such_trainer", "x", 10, [])
    argv = ["--step-sleep", "0.1", "--validate-every", "3", "--no-progress"]
    job = jobs.start("tests.app_toy_trainer", "toy", 20, argv)
    with pytest.raises(ValueError, match="already going"):
        jobs.start("tests.app_toy_trainer", "toy2", 20, argv)
    _wait(lambda: jobs.status("toy").step >= 3 and jobs.status("toy").sample, 90, "step 3 and a sample")
    st = jobs.status("toy")
    assert st.state == "running" and 0 < st.fraction < 1 and st.losses and st.sample.endswith(".png")
    jobs.stop("toy", wait=60)
    st = jobs.status("toy")
    assert st.state == "stopped" and not job.running, st.message
    stopped_at = st.step
    assert (tmp_path / "models" / "toy" / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()
    assert not (tmp_path / "models" / "toy" / "model_index.json").exists()
    with pytest.raises(ValueError, match="already exists"):
        jobs.start("tests.app_toy_trainer", "toy", 20, argv)

    # a fresh manager (an app restart) finds the run folder and resumes it
    jobs2 = JobManager(tmp_path / "models", python=sys.executable)
    assert jobs2.status("toy").state == "stopped"
    job = jobs2.resume("toy")
    job.proc.wait(120)
    st = jobs2.status("toy")
    assert st.state == "finished" and st.step == 20, st.log_tail
    assert "resumed from" in job.log_path.read_text()
    assert (tmp_path / "models" / "toy" / "model_index.json").is_file()
    assert [s for s, _ in st.losses if s <= stopped_at] and max(s for s, _ in st.losses) == 20


def test_the_training_tabs_offer_a_model_made_after_the_page_was_built(app, models):
    """Opening a training tab's model list reads the models folder again: the model a fine-tune just
    wrote can be chosen as the Distill tab's teacher without reloading the page."""
    import json
    import shutil

    url = app.demo.local_url.rstrip("/")
    make_tiny_pipeline(models / "models", name="tuned-later")
    try:
        for key in ("finetune", "distill"):
            r = requests.post(f"{url}/gradio_api/call/{key}_models", json={"data": []}, timeout=30)
            assert r.status_code == 200, r.text
            text = requests.get(f"{url}/gradio_api/call/{key}_models/{r.json()['event_id']}", timeout=30).text
            kind, payload = re.findall(r"event: (\w+)\ndata: (.*)", text)[-1]
            assert kind == "complete", payload
            assert [c[0] for c in json.loads(payload)[0]["choices"]] == ["tiny", "tiny-4step", "tuned-later"]
    finally:
        shutil.rmtree(models / "models" / "tuned-later")


# ---------------------------------------------------------------- the command line
def test_latentgen_train_lists_the_trainers_and_runs_one(capsys, monkeypatch):
    from latentgen.cli import main
    from latentgen.train import TRAINERS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    listing = capsys.readouterr().out
    assert all(f"\n  {name} " in listing for name in TRAINERS), listing
    with pytest.raises(SystemExit):
        main(["train", "unet", "--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: latentgen train unet") and "--preset" in usage and "--max-steps" in usage
    seen = []
    monkeypatch.setattr("latentgen.train.unet.main", seen.append)
    assert main(["train", "unet", "--out", "runs/u", "--lr=1e-3", "--no-progress"]) == 0
    assert seen == [["--out", "runs/u", "--lr=1e-3", "--no-progress"]]  # every flag after the name, as given
    with pytest.raises(SystemExit):
        main(["train", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_latentgen_app_takes_the_apps_flags(capsys):
    import app as app_module
    from latentgen.cli import build_parser, main

    argv = ["--port", "0", "--auth", "bob:pa:ss", "--queue-size", "5", "--no-training"]
    args = build_parser().parse_args(["app", *argv])
    expected = vars(app_module.parse_args(argv))
    assert {k: v for k, v in vars(args).items() if k != "cmd"} == {**expected, "auth": "bob:pa:ss"}
    assert main(["app", "--auth", "bob"]) == 2 and "--auth must be USER:PASS" in capsys.readouterr().err
    assert main(["app", "--queue-size", "0"]) == 2
    for abbreviated in (["--mod", "x"], ["--por", "1"]):
        with pytest.raises(SystemExit):
            main(["app", *abbreviated])
    with pytest.raises(SystemExit, match=re.escape("--auth USER:PASS")):  # before anything listens
        main(["app", "--host", "0.0.0.0", "--port", str(free_port())])


def test_app_command_line_defaults_and_errors():
    import app as app_module

    args = app_module.parse_args([])
    assert (args.host, args.port, args.share, args.auth, args.models_dir) == (
        "127.0.0.1", 7860, False, None, "./models")
    assert (args.data_dir, args.no_training, args.insecure_no_auth) == ("./data", False, False)
    assert (args.max_cost, args.request_timeout) == (400.0, 300.0)
    assert (args.concurrency, args.queue_size) == (1, 256)
    assert app_module.parse_args(["--queue-size", "10000"]).queue_size == 10_000
    assert app_module.parse_args(["--auth", "bob:pa:ss"]).auth == ("bob", "pa:ss")
    for bad in (["--auth", "bob"], ["--auth", ":pw"], ["--concurrency", "0"], ["--model", "/no/such/dir"],
                ["--max-cost", "0"], ["--request-timeout", "-1"], ["--mod", "x"], ["--queue-size", "0"],
                ["--queue-size", "10001"], ["--queue-size", "many"]):
        with pytest.raises(SystemExit):
            app_module.parse_args(bad)


def test_app_config_refuses_a_queue_size_out_of_range():
    import app as app_module
    from latentgen.ui.server import MAX_QUEUE_SIZE

    assert app_module.MAX_QUEUE_SIZE == MAX_QUEUE_SIZE == 10_000
    assert AppConfig(queue_size=1).queue_size == 1
    for bad in (0, -5, MAX_QUEUE_SIZE + 1):
        with pytest.raises(ValueError, match="--queue-size must be from 1 to 10,000"):
            AppConfig(queue_size=bad)


def test_unknown_words_are_named_in_the_status_line_and_the_image_is_still_made():
    from types import SimpleNamespace

    from latentgen.ui.generation import Result
    from latentgen.ui.streaming import Sessions, stream

    class Gen:
        def check(self, req):
            pass

        def run(self, req, on_step, cancel):
            on_step(1, 1, None)
            return Result(paths=["x.png"], seed=req.seed, interrupted=False, steps_done=1, seconds=0.1,
                          warning="The model never learned: dog, park.")

    *_, last = stream(Gen(), Sessions(), SimpleNamespace(seed=3), None)
    assert last[0] == ["x.png"] and "never learned: dog, park" in last[3]


def test_a_distill_run_without_images_draws_them_and_a_fine_tune_needs_them(tmp_path):
    from latentgen.ui.training_tab import DISTILL, DRAWN_SCENES, FINETUNE, TRAIN_ONE, TabLimits, start_run

    started = []

    class Registry:
        def resolve(self, name):
            return tmp_path / name

    class Jobs:
        def check_new(self, module, name):
            pass

        def start(self, module, name, steps, argv):
            started.append((module, argv))
            return "started"

    limits = TabLimits(data_root=tmp_path)
    assert start_run(DISTILL, Registry(), Jobs(), limits, "student", "default", "", None, "", 10, 2, 10, 4,
                     TRAIN_ONE, "")
    (module, argv), = started
    assert module == "latentgen.train.distill" and f"--draw-data={DRAWN_SCENES}" in argv
    assert not any(a.startswith(("--data=", "--from-student")) for a in argv)
    # from a student: no images drawn or needed, the student's folder resolved in the models folder
    start_run(DISTILL, Registry(), Jobs(), limits, "fast", "mine", "", None, "", 10, 2, 10, 4, "default-4step", "")
    argv = started[-1][1]
    assert f"--from-student={tmp_path / 'default-4step'}" in argv and f"--model={tmp_path / 'mine'}" in argv
    assert not any(a.startswith(("--data", "--draw-data", "--refine-steps")) for a in argv)
    (tmp_path / "mine-images").mkdir()  # with images: refined for the tab's steps
    start_run(DISTILL, Registry(), Jobs(), limits, "fast2", "mine", "mine-images", None, "", 10, 2, 10, 4,
              "default-4step", "")
    assert {"--refine-steps=10", f"--data={tmp_path / 'mine-images'}"} <= set(started[-1][1])
    with pytest.raises(ValueError, match="give an image folder"):
        start_run(FINETUNE, Registry(), Jobs(), limits, "tuned", "default", "", None, "", 10, 2, 10, "LoRA", "", "")


def test_fine_tune_tab_starts_at_the_trainers_default_steps():
    from latentgen.train.finetune import FinetuneConfig
    from latentgen.ui.training_tab import FINETUNE

    assert FINETUNE.default_steps == FinetuneConfig.max_steps


def test_fine_tune_tabs_methods_are_the_trainers_lora_default_and_full():
    from latentgen.train.config import parse_config
    from latentgen.train.finetune import FinetuneConfig
    from latentgen.ui.training_tab import FINETUNE, trainer_flags

    base = ["--model", "m", "--data", "d", "--out", "o"]
    lora = parse_config(FinetuneConfig, "", base + trainer_flags(FINETUNE, 100, ("LoRA", "", "")))
    full = parse_config(FinetuneConfig, "", base + trainer_flags(FINETUNE, 100, ("Full", "", "")))
    assert lora == FinetuneConfig(model="m", data=("d",), out="o") and lora.lora_rank > 0
    assert full.lora_rank == 0 and full.loop().lr != lora.loop().lr
