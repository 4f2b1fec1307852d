"""bench.finetune: the teal renders and their checker, and the teal case end to end on a tiny model."""

import json
import random

import numpy as np

from latentgen.data import shapes
from tests.tiny_models import make_tiny_pipeline


def test_teal_renders_are_teal_and_the_colour_verdict_can_fail():
    from bench.finetune import TEAL, measure_object, teal_objects, teal_verdict

    assert "teal" not in shapes.COLORS  # the library's palette is left alone
    rng = random.Random(0)
    for obj in teal_objects(6, rng) + [shapes.ShapeObject("square", None, "large", "center")]:
        image = shapes.render_scene([obj], 32, rng, fill=TEAL)
        px = np.asarray(image).reshape(-1, 3).astype(float)  # (S*S, 3)
        ink = 255 - px
        alpha = ink[:, 0] / 255  # every pixel is white mixed with teal: 255 - alpha * (255 - TEAL)
        assert np.abs(ink - alpha[:, None] * (255 - np.array(TEAL))).max() <= 1.0
        assert (px == TEAL).all(1).any() and (px == 255).all(1).any()
        assert teal_verdict(measure_object(image), obj)["correct"], obj

        red = shapes.render_scene([shapes.ShapeObject(obj.shape, "red", obj.size, obj.position)], 32, rng)
        verdict = teal_verdict(measure_object(red), obj)
        assert measure_object(red)["color"] == "red" and not verdict["teal"] and not verdict["correct"]
        assert verdict["shape"] and verdict["size"] and verdict["position"]  # only the colour is wrong
    assert measure_object(np.full((32, 32, 3), 255, np.uint8))["n_objects"] == 0


def test_teal_case_end_to_end_on_a_tiny_model(tmp_path):
    from bench import finetune

    model = make_tiny_pipeline(tmp_path)
    results = str(tmp_path / "res" / "finetune")
    argv = ["--model", model, "--case", "teal", "--steps", "4", "--n", "3", "--sample-steps", "2",
            "--batch-size", "4", "--work", str(tmp_path / "work"), "--results", results]
    finetune.main(argv)
    with open(results + ".json") as f:
        teal = json.load(f)["teal"]
    assert teal["finetune"]["steps"] == 4 and teal["finetune"]["cpu_s"] > 0 and teal["finetune"]["wall_s"] > 0
    for when in ("before", "after"):
        q, a = teal[when]["teal"], teal[when]["adherence"]
        assert set(q) == {"correct", "one_object", "teal", "shape", "size", "position", "n"} and q["n"] == 3
        assert set(a) == {"1_object", "2_objects", "report"}
        assert all(0 <= v <= 1 for v in [*(q[k] for k in q if k != "n"), a["1_object"], a["2_objects"]])
    with open(results + ".md") as f:
        md = f.read()
    assert "## teal" in md and "| before |" in md and "command: `python -m bench.finetune" in md
    finetune.main(argv)  # a finished run is not trained again
    with open(results + ".json") as f:
        assert json.load(f)["teal"]["finetune"] == teal["finetune"]
