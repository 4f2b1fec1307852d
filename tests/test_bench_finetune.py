"""bench.finetune: the new-word renders and their checker, and the cases end to end on a tiny model."""

import json
import os
import random

import numpy as np
import pytest

from latentgen.data import shapes
from tests.tiny_models import make_tiny_pipeline


def test_teal_renders_are_teal_and_the_colour_verdict_can_fail():
    from bench.finetune import NEW_WORDS

    teal = NEW_WORDS["teal"]
    assert "teal" not in shapes.COLORS  # the library's palette is left alone
    rng = random.Random(0)
    for obj in teal.objects(6, rng) + [shapes.ShapeObject("square", None, "large", "center")]:
        image = teal.render(obj, 32, rng)
        px = np.asarray(image).reshape(-1, 3).astype(float)  # (S*S, 3)
        ink = 255 - px
        alpha = ink[:, 0] / 255  # every pixel is white mixed with teal: 255 - alpha * (255 - TEAL)
        assert np.abs(ink - alpha[:, None] * (255 - np.array(teal.fill))).max() <= 1.0
        assert (px == teal.fill).all(1).any() and (px == 255).all(1).any()
        assert teal.verdict(image, obj)["correct"], obj

        red = shapes.render_scene([shapes.ShapeObject(obj.shape, "red", obj.size, obj.position)], 32, rng)
        verdict = teal.verdict(red, obj)
        assert not verdict["color"] and not verdict["correct"]
        assert verdict["shape"] and verdict["size"] and verdict["position"]  # only the colour is wrong
    assert not teal.verdict(np.full((32, 32, 3), 255, np.uint8), obj)["one_object"]


def test_star_renders_are_told_from_the_spec_shapes_and_the_shape_verdict_can_fail():
    from bench.finetune import NEW_WORDS

    star = NEW_WORDS["star"]
    rng = random.Random(1)
    objs = star.objects(12, rng)
    assert {o.shape for o in objs} == {"star"} and all(o.color in shapes.COLORS for o in objs)
    for obj in objs:
        assert star.prompt(obj) == f"a {obj.size} {obj.color} star at {obj.position}"
        assert star.verdict(star.render(obj, 64, rng), obj)["correct"], obj
        circle = shapes.render_scene([shapes.ShapeObject("circle", obj.color, obj.size, obj.position)], 64, rng)
        verdict = star.verdict(circle, obj)
        assert not verdict["shape"] and not verdict["correct"] and verdict["color"] and verdict["position"]


@pytest.mark.parametrize("case", ["teal", "star"])
def test_new_word_case_end_to_end_on_a_tiny_model(tmp_path, case):
    from bench import finetune

    model = make_tiny_pipeline(tmp_path)
    results = str(tmp_path / "res" / "finetune")
    argv = ["--model", model, "--case", case, "--steps", "4", "--n", "3", "--sample-steps", "2",
            "--flags", "--batch-size 4 --decoder-steps 2 --val-steps 2", "--work", str(tmp_path / "work"),
            "--results", results]
    finetune.main(argv)
    with open(results + ".json") as f:
        res = json.load(f)[case]
    assert res["finetune"]["steps"] == 4 and res["finetune"]["cpu_s"] > 0 and res["finetune"]["wall_s"] > 0
    for when in ("before", "after"):
        q, a = res[when]["new_word"], res[when]["adherence"]
        assert set(q) == {"correct", "one_object", "color", "shape", "size", "position", "n", "by_size"}
        assert q["n"] == 3 and set(q["by_size"]) <= {"small", "large"} and q["by_size"]
        assert all(0 <= v <= 1 for v in q["by_size"].values())
        assert set(a) == {"1_object", "2_objects", "report"}
        assert all(0 <= v <= 1 for v in [*(q[k] for k in q if k not in ("n", "by_size")), a["1_object"],
                                         a["2_objects"]])
    with open(results + ".md") as f:
        md = f.read()
    assert f"| {case} (new " in md and f"## {case}" in md and "| before |" in md and "Points lost on the original prompts" in md
    assert f"{case} prompts drawn right after, by the size asked for: " in md
    assert "command: `python -m bench.finetune" in md and "--work" not in md  # a cache folder: left out
    finetune.main(argv)  # a finished run is not trained again
    with open(results + ".json") as f:
        assert json.load(f)[case]["finetune"] == res["finetune"]


def test_noto_case_end_to_end_on_a_tiny_model(tmp_path):
    from bench import finetune

    model = make_tiny_pipeline(tmp_path)
    results = str(tmp_path / "res" / "finetune")
    argv = ["--model", model, "--case", "noto", "--steps", "3", "--n", "2", "--style-images", "1",
            "--style-source", "tests/data/emoji/noto", "--no-heldout-names", "--sample-steps", "2",
            "--flags", "--batch-size 2 --decoder-steps 2 --val-steps 2", "--work", str(tmp_path / "work"),
            "--results", results]
    finetune.main(argv)
    with open(results + ".json") as f:
        res = json.load(f)["noto"]
    assert res["finetune"]["steps"] == 3 and res["images"] == 1
    with open(tmp_path / "work" / f"noto_data_{res['image_size']}px_1_seed0" / "metadata.jsonl") as f:
        (row,) = [json.loads(line) for line in f]
    assert row["text"].endswith(", noto style")
    for when in ("before", "after"):
        for key in ("trained", "new", "bare"):
            r = res[when][key]
            assert 0 <= r["pixel"]["top1"] <= r["pixel"]["top5"] <= 1 and r["pixel"]["median_rank"] >= 1
            assert key == "bare" or 0 <= r["style_share"] <= 1
        assert res[when]["new"]["n"] == 2 and res[when]["new"]["frechet_distance"] is not None
        assert res[when]["trained"]["n"] == 1  # the folder holds one name: one to draw
    assert res["before"]["new"]["pool"] == 3  # ranked among every Noto render (less the held-out pair)
    with open(results + ".md") as f:
        md = f.read()
    assert "| noto (new style) |" in md  # the one-table summary
    assert "## noto" in md and "style share" in md and (tmp_path / "res" / "finetune_noto.png").is_file()


def test_the_recorded_command_names_repository_paths_relatively_and_leaves_out_cache_folders(tmp_path):
    from bench.common import ROOT, shown_command

    inside = os.path.join(ROOT, "bench", "results", "finetune")
    argv = ["--case", "star", "--work", str(tmp_path), f"--results={inside}", "--results", inside,
            "--model", str(tmp_path / "m"), "--work=/elsewhere"]
    assert shown_command("bench.finetune", argv, cache_flags=("--work",)) == (
        "python -m bench.finetune --case star --results=bench/results/finetune --results bench/results/finetune "
        f"--model {tmp_path / 'm'}")
