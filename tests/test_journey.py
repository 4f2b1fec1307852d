"""The whole journey in a real browser, on a tiny model: fine-tune (LoRA) from a folder on the server and
watch the run, generate with the new model, distil it (the distiller merges the LoRA into its base) into a
student, generate with the student; then make its student from the base's in seconds and generate with it.

Each training run is a few steps at batch size 1, so the test takes seconds of training; the app
runs the installed trainers as background jobs, as it does for a user. Skipped, with the reason,
where ``/usr/bin/chromium`` or Playwright is missing (``tests/browser_util.py``). Set
``LATENTGEN_SCREENSHOTS=DIR`` to keep a screenshot of each step.
"""

from __future__ import annotations

import pytest

from tests.browser_util import generated_image, keep, open_page, require_browser, tiny_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
require_browser()

TUNED, STUDENT, FAST, BASE_STUDENT = "shapes-tuned", "shapes-student", "shapes-fast", "tiny-4step"
RUN_TIMEOUT_MS = 240_000  # a training run: seconds here, minutes on a machine that is busy


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from latentgen.data.shapes import write_shapes_folder

    root = tmp_path_factory.mktemp("journey")
    write_shapes_folder(root / "data" / "shapes", n=8, size=16, seed=0)
    with tiny_app(root, data_dir=root / "data") as app:
        _student_of(root / "models" / "tiny", root / "models" / BASE_STUDENT)
        yield app


def _student_of(base, out):
    """A 4-step student of ``base`` as distillation starts one (its weights, a zero guidance embedding)."""
    from latentgen import LatentGenPipeline
    from latentgen.distill import make_student
    from latentgen.modelcard import write_card

    pipe = LatentGenPipeline.from_pretrained(str(base))
    pipe.register_modules(unet=make_student(pipe.unet, 16))
    pipe.save_pretrained(str(out))
    write_card(out, {"sampler": "ddim", "num_inference_steps": 4, "guidance_scale": 3.0}, "student", [])


@pytest.fixture(scope="module")
def page(app):
    with open_page(app.demo.local_url, "#generate") as page:
        yield page


def _tab(page, title: str):
    page.get_by_role("tab", name=title, exact=True).click()


def _number(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _text(page, elem_id: str, value: str):
    page.locator(f"#{elem_id}").get_by_role("textbox").fill(value)


def _choose(page, elem_id: str, option: str, tries: int = 3):
    """Pick ``option`` from the dropdown's list, as a user does (it must be offered there), and see it chosen:
    opening the list reads the models again, and a list redrawn under the pointer takes the click elsewhere,
    so a user (and this) picks again."""
    box = page.locator(f"#{elem_id} input")
    for _ in range(tries):
        box.click()
        page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()  # this list's
        page.wait_for_timeout(200)  # the list's refresh, if it was late, lands first
        if box.input_value() == option:
            return
    assert box.input_value() == option, f"{elem_id}: chose {option!r}, shows {box.input_value()!r}"


def _wait_for_run(page, key: str) -> str:
    """The run's status line once it has ended; it must have finished (else the log tail says why)."""
    page.wait_for_function(
        "id => /^(finished|failed|stopped)\\b/.test(document.querySelector(id).innerText.trim())",
        arg=f"#{key}-status", timeout=RUN_TIMEOUT_MS)
    status = page.inner_text(f"#{key}-status").strip()
    log = page.locator(f"#{key}-log").get_by_role("textbox").input_value()
    assert status.startswith("finished"), f"{status}\n{log}"
    return status


def _generate_with(page, model: str, tmp_path) -> dict:
    """Generate one image with ``model`` on the Generate tab; the settings its PNG holds."""
    from latentgen.pngmeta import read_png_params

    _tab(page, "Generate")
    page.click("#refresh")
    _choose(page, "model", model)
    page.wait_for_function("m => document.querySelector('#status-line').innerText.includes(`Model ${m} ready.`)",
                           arg=model)
    page.fill("#prompt textarea", "a red circle")
    img = generated_image(page)
    png = tmp_path / f"{model.replace('/', '-')}.png"
    png.write_bytes(page.request.get(img.get_attribute("src")).body())
    keep(page, tmp_path, f"generate-{png.name}")
    return read_png_params(png)


def test_fine_tune_generate_distil_generate(page, app, tmp_path):
    # 1. Fine-tune the tiny model on a folder on the server, and watch the run
    _tab(page, "Fine-tune")
    assert page.locator("#finetune-model input").input_value() == "tiny"
    _text(page, "finetune-name", TUNED)
    _text(page, "finetune-data", "shapes")
    _number(page, "finetune-steps", 4)
    _number(page, "finetune-batch", 1)
    _number(page, "finetune-every", 4)
    page.locator("#finetune-method").get_by_label("LoRA", exact=True).check()  # the distiller merges it
    _text(page, "finetune-prompt", "a red circle")
    _text(page, "finetune-flags", "--tune-decoder off --prior off")
    page.click("#finetune-start")
    page.wait_for_function("() => /^(running|finished)/.test(document.querySelector('#finetune-status')"
                           ".innerText.trim())")
    sample = page.wait_for_selector("#finetune-sample img", timeout=RUN_TIMEOUT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=sample)
    assert "the model is in the models folder as " + TUNED in _wait_for_run(page, "finetune")
    assert "step 4 / 4" in page.inner_text("#finetune-progress")
    keep(page, tmp_path, "finetune.png")

    # 2. Generate with the fine-tuned model
    params = _generate_with(page, TUNED, tmp_path)
    assert params["model"] == TUNED and params["prompt"] == "a red circle"

    # 3. Distil the fine-tuned model into a 1-step student
    _tab(page, "Distill")
    _choose(page, "distill-model", TUNED)
    _text(page, "distill-name", STUDENT)
    _text(page, "distill-data", "shapes")
    _number(page, "distill-steps", 2)
    _number(page, "distill-batch", 1)
    _number(page, "distill-every", 2)
    page.locator("#distill-student").get_by_label("1", exact=True).check()
    _text(page, "distill-flags", "--teacher-steps 2")
    page.click("#distill-start")
    _wait_for_run(page, "distill")
    keep(page, tmp_path, "distill.png")

    # 4. Generate with the student, in the one step it was distilled to
    params = _generate_with(page, f"{STUDENT}/final", tmp_path)
    assert params["model"] == f"{STUDENT}/final" and params["steps"] == 1

    # 5. Or, in seconds: the base's student moved by what the fine-tune changed; it samples as that student
    _tab(page, "Distill")
    _choose(page, "distill-model", TUNED)
    _text(page, "distill-name", FAST)
    _text(page, "distill-data", "")
    _text(page, "distill-flags", "")
    _choose(page, "distill-from", BASE_STUDENT)
    page.click("#distill-start")
    _wait_for_run(page, "distill")
    params = _generate_with(page, f"{FAST}/final", tmp_path)
    assert params["model"] == f"{FAST}/final" and params["steps"] == 4
