"""The tiny recipe end to end: empty folder -> teacher and 4-step student that both pipelines load."""

import json
import os

import torch


def test_tiny_recipe_end_to_end_and_resume(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from latentgen import LatentGenPipeline
    from train import recipe

    out = str(tmp_path / "recipe")
    state = recipe.main(["--out", out, "--preset", "tiny", "--no-progress"])
    assert set(state["done"]) == set(recipe.STAGES)
    teacher, student = os.path.join(out, "unet"), os.path.join(out, "distill", "final")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for folder, steps in ((teacher, 4), (student, 4)):
        ours = LatentGenPipeline.from_pretrained(folder)
        a = ours("a large red circle at center", num_inference_steps=steps, guidance_scale=3.0, generator=g(),
                 output_type="np").images
        stock = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        b = stock("a large red circle at center", num_inference_steps=steps, guidance_scale=3.0, generator=g(),
                  output_type="np").images
        assert a.shape == (1, 16, 16, 3) and abs(a - b).max() < 1e-3
    # the held-out pairs were kept out of the data
    with open(os.path.join(out, "data", "shapes", "metadata.jsonl")) as f:
        pairs = {(o["color"], o["shape"]) for row in map(json.loads, f) for o in row["objects"]}
    assert not pairs & {("purple", "square"), ("orange", "triangle"), ("green", "circle")}
    # a second run finds every stage done and trains nothing
    capsys.readouterr()
    recipe.main(["--out", out, "--preset", "tiny", "--no-progress"])
    assert capsys.readouterr().out.count(": done") == len(recipe.STAGES)
