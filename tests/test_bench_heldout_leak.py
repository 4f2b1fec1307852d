"""bench.heldout_leak: its colour and outline measures on known images, and a run on a tiny model."""

import json
import random

from bench.heldout_leak import GLYPHS, PROMPTS, dark_fraction, main, main_colour
from latentgen.data.emoji import render_emoji
from latentgen.data.shapes import COLORS, parse_prompt, render_scene


def test_measures_tell_an_openmoji_glyph_from_a_shapes_render():
    for name, seq in GLYPHS.items():
        glyph = render_emoji(seq, 64)
        assert main_colour(glyph) == name.split()[0] and dark_fraction(glyph) > 0.02  # outlined
    for colour in COLORS:
        scene = render_scene(parse_prompt(f"a large {colour} triangle at center"), 64, random.Random(0))
        assert main_colour(scene) == colour and dark_fraction(scene) == 0.0  # no outline
    assert main_colour(render_scene([], 64, random.Random(0))) is None  # nothing saturated


def test_runs_on_a_tiny_model_and_writes_its_results(tmp_path):
    from tests.tiny_models import make_tiny_pipeline

    model = make_tiny_pipeline(tmp_path)
    results = main(["--model", model, "--n", "1", "--results", str(tmp_path / "res" / "leak")])
    with open(tmp_path / "res" / "leak.json") as f:
        assert json.load(f)["results"] == results
    rows = results[0]["rows"]
    assert list(rows) == list(PROMPTS) and all(0 <= r["outlined"] <= 1 for r in rows.values())
    assert rows["orange triangle"]["psnr_to_glyph"] is None and rows["green circle"]["psnr_to_glyph"] > 0
    assert (tmp_path / "res" / "leak.png").is_file() and (tmp_path / "res" / "leak.md").read_text().count("| `") == 8


def test_run_all_reports_the_held_out_group_by_pair():
    from bench.run_all import heldout_by_pair

    by = {"green circle": {"n": 4, "object": 0.5}, "orange triangle": {"n": 3, "object": 1.0}}
    lines = heldout_by_pair({"teacher": {"heldout": {"by_pair": by}}, "old": {"heldout": {}}})
    assert lines[2] == "| model | green circle | orange triangle |"
    assert lines[4] == "| teacher | 50.0% (2/4) | 100.0% (3/3) |" and len(lines) == 6
    assert heldout_by_pair({"teacher": {"1_object": {}}}) == []
