"""The PNG ``parameters`` chunk: written in AUTOMATIC1111's text form, read back from it and from the JSON
that older latentgen versions wrote."""

import json

import PIL.Image
import pytest
from PIL.PngImagePlugin import PngInfo

from latentgen.diffusion import SAMPLERS
from latentgen.pngmeta import (
    A1111_SAMPLERS,
    format_params,
    parse_params,
    read_png_params,
    save_png_with_params,
)

SETTINGS = {"prompt": "a red circle", "negative_prompt": "blue", "steps": 25, "sampler": "dpm++2m",
            "guidance": 4.0, "seed": 1, "width": 64, "height": 64, "model": "default"}


def _png_with_chunk(path, text: str) -> str:
    info = PngInfo()
    info.add_text("parameters", text)
    PIL.Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return str(path)


def test_written_in_a1111_form_and_read_back(tmp_path):
    path = save_png_with_params(PIL.Image.new("RGB", (4, 4)), tmp_path / "x.png", SETTINGS)
    assert PIL.Image.open(path).text["parameters"] == (
        "a red circle\nNegative prompt: blue\n"
        "Steps: 25, Sampler: DPM++ 2M, CFG scale: 4, Seed: 1, Size: 64x64, Model: default")
    assert read_png_params(path) == SETTINGS


def test_no_negative_prompt_line_without_one_and_the_model_is_never_a_path(tmp_path):
    params = {**SETTINGS, "negative_prompt": "", "model": str(tmp_path / "runs" / "teacher"), "guidance": 4.5}
    text = format_params(params)
    assert text == ("a red circle\n"
                    "Steps: 25, Sampler: DPM++ 2M, CFG scale: 4.5, Seed: 1, Size: 64x64, Model: teacher")
    assert str(tmp_path) not in text
    assert parse_params(text) == {**params, "model": "teacher"}


@pytest.mark.parametrize("ours", SAMPLERS)
def test_every_sampler_has_its_a1111_name_and_reads_back(ours):
    assert set(A1111_SAMPLERS) == set(SAMPLERS)
    text = format_params({**SETTINGS, "sampler": ours})
    assert f"Sampler: {A1111_SAMPLERS[ours]}," in text
    assert parse_params(text)["sampler"] == ours


def test_image_to_image_settings_and_awkward_text_round_trip():
    params = {"prompt": 'two lines, "quoted":\nsecond', "negative_prompt": "x\ny", "steps": 4, "sampler": "euler_a",
              "guidance": 1.0, "seed": 9, "width": 16, "height": 16, "model": "my-run/final", "strength": 0.5,
              "init_image": "in, put.png", "mode": "img2img", "batch_size": 1}
    text = format_params(params)
    assert "Denoising strength: 0.5" in text and 'Init image: "in, put.png"' in text
    assert parse_params(text) == params


def test_reads_what_a1111_writes(tmp_path):
    path = _png_with_chunk(tmp_path / "a1111.png", (
        "parrot, masterpiece\nNegative prompt: ugly, (bad:1.2)\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
        "Seed: 123, Size: 512x768, Model hash: abc123, Model: sd15, Clip skip: 2, Version: v1.6.0"))
    assert read_png_params(path) == {
        "prompt": "parrot, masterpiece", "negative_prompt": "ugly, (bad:1.2)", "steps": 20, "sampler": "euler_a",
        "guidance": 7.0, "seed": 123, "width": 512, "height": 768, "Model hash": "abc123", "model": "sd15",
        "Clip skip": 2, "Version": "v1.6.0"}
    # A1111 drops an empty prompt's line; an unknown sampler stays as it is
    assert parse_params("Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 8x8") == {
        "prompt": "", "negative_prompt": "", "steps": 2, "sampler": "DPM++ 2M Karras", "guidance": 7.0,
        "seed": 1, "width": 8, "height": 8}


def test_reads_the_json_that_older_versions_wrote(tmp_path):
    old = {"prompt": "a red circle", "negative_prompt": "", "steps": 3, "sampler": "euler", "guidance": 4.0,
           "seed": 5, "width": 16, "height": 16, "model": "/somewhere/tiny"}
    path = _png_with_chunk(tmp_path / "old.png", json.dumps(old, sort_keys=True))
    assert read_png_params(path) == old


def test_a_prompt_alone_is_a_prompt():
    assert parse_params("just a prompt, with: a colon") == {"prompt": "just a prompt, with: a colon",
                                                             "negative_prompt": ""}
    assert format_params({"prompt": "only"}) == "only"
