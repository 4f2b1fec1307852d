"""The bundled default model and its 4-step student: present, small, and generating in both pipelines."""

import glob
import os

import numpy as np
import pytest
import torch

from latentgen.pipeline import DEFAULT_MODEL_DIR, read_model_card_defaults

TEACHER = DEFAULT_MODEL_DIR
STUDENT = os.path.join(os.path.dirname(DEFAULT_MODEL_DIR), "default-4step")
PROMPT = "a large red circle at center"


def test_bundle_is_complete_and_small():
    for folder in (TEACHER, STUDENT):
        for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "README.md"):
            assert os.path.exists(os.path.join(folder, part)), f"{folder} lacks {part}"
        assert not glob.glob(os.path.join(folder, "**", "*.bin"), recursive=True)
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(os.path.dirname(TEACHER), "**", "*"),
                                                      recursive=True) if os.path.isfile(p))
    assert total < 120e6, f"the bundled weights take {total / 1e6:.0f} MB (at most 120)"
    assert "CC BY-SA 4.0" in open(os.path.join(os.path.dirname(TEACHER), "NOTICE"), encoding="utf-8").read()
    assert read_model_card_defaults(STUDENT)["num_inference_steps"] == 4
    assert set(read_model_card_defaults(TEACHER)) == {"sampler", "num_inference_steps", "guidance_scale"}


@pytest.mark.parametrize("folder,steps", [(TEACHER, 2), (STUDENT, 4)])
def test_bundled_model_generates_the_same_in_both_pipelines(folder, steps):
    from diffusers import StableDiffusionPipeline

    from latentgen import LatentGenPipeline

    ours = LatentGenPipeline.from_pretrained(folder)
    assert {m.dtype for m in (ours.unet, ours.vae, ours.text_encoder)} == {torch.float32}
    a = ours(PROMPT, num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
             output_type="np").images
    assert a.shape == (1, 64, 64, 3) and np.isfinite(a).all() and a.std() > 0.01
    stock = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    b = stock(PROMPT, num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
              output_type="np").images
    assert abs(a - b).max() < 1e-3
