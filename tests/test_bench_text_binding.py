"""bench.text_binding: the table's logic on made-up states, and a run on a tiny model."""

import json

import torch

from bench.text_binding import binding_table, main
from latentgen.data.shapes import COLORS, HELDOUT_PAIRS, SHAPES


def _states(colour_weight: float, frames: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    colour = {c: torch.randn(32, generator=g) for c in COLORS}
    shape = {s: torch.randn(32, generator=g) for s in SHAPES}
    return {(c, s): (colour_weight * colour[c] + shape[s] + 0.05 * torch.randn(frames, 32, generator=g))
            for c in COLORS for s in SHAPES}


def test_binding_table_tells_a_shape_led_encoder_from_a_colour_led_one():
    shape_led = binding_table(_states(colour_weight=0.2))
    held = [r for r in shape_led if r["heldout"]]
    assert len(held) == len(HELDOUT_PAIRS) == len(shape_led) - 1
    assert all(not r["colour_wins"] and r["centroid_probe"] == 1.0 for r in held), held
    colour_led = binding_table(_states(colour_weight=3.0))
    assert all(r["colour_wins"] for r in colour_led if r["heldout"])
    assert colour_led[-1]["colour_wins"] == 1.0 and shape_led[-1]["colour_wins"] == 0.0  # the seen baseline


def test_runs_on_a_tiny_model_and_writes_its_results(tmp_path):
    from tests.tiny_models import make_tiny_pipeline

    model = make_tiny_pipeline(tmp_path)
    result = main(["--model", model, "--results", str(tmp_path / "res" / "tb")])
    with open(tmp_path / "res" / "tb.json") as f:
        assert json.load(f)["rows"] == result["rows"]
    assert (tmp_path / "res" / "tb.md").read_text().count("(held out)") == len(HELDOUT_PAIRS)
    for r in result["rows"]:
        assert -1 <= r["same_colour_sim"] <= 1 and -1 <= r["same_shape_sim"] <= 1
