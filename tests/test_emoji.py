"""OpenMoji rendering: a handful of emoji (never the full 3,800 here), captions, dedup, the written folder."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from latentgen.data import emoji as em
from latentgen.data.folder import scan_folder

GRIN = "\U0001F600"
SAMPLES = {
    GRIN: "grinning face",
    "\U0001F468\u200d\U0001F4BB": "man technologist",  # ZWJ sequence: one ligature glyph
    "\U0001F1E8\U0001F1FF": "flag of czechia",  # regional-indicator pair
    "\U0001F44D\U0001F3FD": "thumbs up medium skin tone",  # skin-tone modifier
    "\u2764\ufe0f": "red heart",
}


def test_package_has_font_and_emoji_list():
    assert em.font_path().endswith("glyf_colr0.ttf")
    seqs = em.openmoji_sequences()
    assert len(seqs) > 4000 and GRIN in seqs


@pytest.mark.parametrize("seq,name", SAMPLES.items())
def test_render_a_handful(seq, name):
    assert em.emoji_name(seq) == name
    img = em.render_emoji(seq, size=32)
    assert img is not None and img.size == (32, 32) and img.mode == "RGB"
    a = np.asarray(img).astype(int)
    assert not em.is_blank(img)
    assert (a[0, 0] == 255).all() and (a[-1, -1] == 255).all(), "drawn on white, with a margin"
    assert (a.max(-1) - a.min(-1)).max() > 100, "in colour, not black and white"


def test_emoji_is_centred():
    a = 255 - np.asarray(em.render_emoji(GRIN, size=64)).astype(int).min(-1)  # ink
    ys, xs = np.nonzero(a > 30)
    assert abs((xs.min() + xs.max()) / 2 - 31.5) <= 1 and abs((ys.min() + ys.max()) / 2 - 31.5) <= 1


def test_names_are_cleaned():
    assert em.clean_name(":Côte_d’Ivoire:") == "côte d'ivoire"
    assert em.emoji_name("\U0001F1E8\U0001F1EE") == "flag of côte d'ivoire"
    assert em.emoji_name("\U0001F10D") == "circled zero with slash"  # not in `emoji`: Unicode name
    assert em.emoji_name("\ue000") is None  # OpenMoji private-use extra: no name


def test_missing_glyphs_are_refused():
    assert not em.in_font("a") and em.render_emoji("a") is None  # tofu
    assert not em.in_font(GRIN + GRIN)  # two glyphs


def test_iter_emoji_drops_duplicates_and_unnamed():
    person_walking, man_walking = "\U0001F6B6", "\U0001F6B6\u200d\u2642\ufe0f"  # the same OpenMoji drawing
    stats = collections.Counter()
    out = list(em.iter_emoji(16, sequences=[GRIN, GRIN, "\ue000", person_walking, man_walking], stats=stats))
    assert [s for s, _, _ in out] == [GRIN, person_walking]
    assert stats == {"kept": 2, "duplicate": 2, "no name": 1}
    assert all(caption for _, caption, _ in out)


def test_emoji_named_by_a_held_out_pair_are_left_out_unless_asked_for():
    green_circle, purple_square, orange_circle = "\U0001F7E2", "\U0001F7EA", "\U0001F7E0"
    assert [em.emoji_name(s) for s in (green_circle, purple_square)] == ["green circle", "purple square"]
    stats = collections.Counter()
    out = list(em.iter_emoji(16, sequences=[green_circle, purple_square, orange_circle], stats=stats))
    assert [c for _, c, _ in out] == ["orange circle"] and stats == {"kept": 1, "held-out pair": 2}
    kept = list(em.iter_emoji(16, sequences=[green_circle, purple_square, orange_circle], include_heldout=True))
    assert [c for _, c, _ in kept] == ["green circle", "purple square", "orange circle"]


def test_names_heldout_pair_reads_colour_then_shape():
    from latentgen.data.shapes import names_heldout_pair

    assert names_heldout_pair("green circle") == ("green", "circle")
    assert names_heldout_pair("a small red square at top and a large Purple Squares at left") == ("purple", "square")
    assert names_heldout_pair("an orange triangle") == ("orange", "triangle")
    assert names_heldout_pair("a green square and a red circle") is None  # the words, not the pair
    assert names_heldout_pair("circle green") is None and names_heldout_pair("") is None


def test_extras_are_the_unnamed_glyphs_only():
    extras = [s for s in em.openmoji_sequences() if "\ue000" <= s[0] <= "\uf8ff"][:3]  # OpenMoji's private use
    assert len(extras) == 3 and not any(em.emoji_name(s) for s in extras)
    stats = collections.Counter()
    out = list(em.iter_emoji(16, sequences=[GRIN, *extras, extras[0]], stats=stats, extras=True))
    assert [s for s, _, _ in out] == extras  # the named grin is left out, the repeated extra too
    assert stats == {"kept": 3, "named": 1, "duplicate": 1}
    assert out[0][1] == f"openmoji {em.codepoints(extras[0]).lower()}"
    named = {s for s, _, _ in em.iter_emoji(16, sequences=[GRIN, *extras])}
    assert named == {GRIN}  # the training set and the extras never share a glyph


def test_write_emoji_folder_subset_is_a_valid_image_folder(tmp_path):
    stats = collections.Counter()
    n = em.write_emoji_folder(str(tmp_path / "emoji"), size=16, limit=6, stats=stats)
    assert n == 6 == stats["kept"]
    lines = (tmp_path / "emoji" / "metadata.jsonl").read_text("utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 6 and all(r["text"] and r["file_name"].endswith(".png") for r in rows)
    report = scan_folder(tmp_path / "emoji")
    assert len(report.items) == 6 and not report.skipped
    assert report.items[0].extra["emoji"] == rows[0]["emoji"]
    with pytest.raises(ValueError, match="at least 8"):
        em.write_emoji_folder(str(tmp_path / "x"), size=4)
