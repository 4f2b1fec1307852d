"""Emoji rendering: a handful of OpenMoji (never the full 3,800 here), captions, dedup, the written folder;
the noto and twemoji styles from the few images in tests/data/emoji, and their missing-source errors."""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest

from latentgen.cli import main as cli
from latentgen.data import emoji as em
from latentgen.data import emoji_sources as src
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


# ---------------------------------------------------------------- styles: noto and twemoji
STYLE_DATA = os.path.join(os.path.dirname(__file__), "data", "emoji")  # four glyphs of each (see NOTICE)
ROCKET, CAT, GREEN_CIRCLE = "\U0001F680", "\U0001F431", "\U0001F7E2"


def ink_box(img):
    """(left, top, right, bottom) of the pixels darker than white by more than 30."""
    ys, xs = np.nonzero(255 - np.asarray(img).astype(int).min(-1) > 30)
    return xs.min(), ys.min(), xs.max(), ys.max()


@pytest.mark.parametrize("style", ["noto", "twemoji"])
def test_styles_from_the_test_images_share_openmoji_names(style):
    source = em.open_source(style, os.path.join(STYLE_DATA, style))
    assert sorted(source.sequences()) == sorted([GRIN, ROCKET, CAT, GREEN_CIRCLE])
    stats = collections.Counter()
    out = list(em.iter_emoji(32, stats=stats, source=source))
    assert sorted(name for _, name, _ in out) == ["cat face", "grinning face", "rocket"]
    assert stats == {"kept": 3, "held-out pair": 1}  # green circle names a held-out pair, in every style
    assert len(list(em.iter_emoji(32, source=source, include_heldout=True))) == 4
    for _, _, img in out:
        a = np.asarray(img).astype(int)
        assert img.size == (32, 32) and img.mode == "RGB" and not em.is_blank(img)
        assert (a[0, 0] == 255).all() and (a[-1, -1] == 255).all(), "on white, with a margin"
        assert (a.max(-1) - a.min(-1)).max() > 100, "in colour"


@pytest.mark.parametrize("style", ["noto", "twemoji"])
def test_a_face_is_as_large_and_as_centred_as_openmoji_s(style):
    face = em.open_source(style, os.path.join(STYLE_DATA, style)).render(GRIN, 64)
    x0, y0, x1, y1 = ink_box(face)
    ox0, _, ox1, _ = ink_box(em.render_emoji(GRIN, 64))
    assert abs((x1 - x0) - (ox1 - ox0)) <= 2, (x0, x1, ox0, ox1)
    assert abs((x0 + x1) / 2 - 31.5) <= 1 and abs((y0 + y1) / 2 - 31.5) <= 1


def test_captions_carry_the_style_but_openmoji_s_by_default(tmp_path):
    n = em.write_emoji_folder(str(tmp_path / "tw"), size=16, style="twemoji",
                              where=os.path.join(STYLE_DATA, "twemoji"))
    rows = [json.loads(line) for line in (tmp_path / "tw" / "metadata.jsonl").read_text("utf-8").splitlines()]
    assert n == 3 and {r["text"] for r in rows} == {"grinning face, twemoji style", "rocket, twemoji style",
                                                    "cat face, twemoji style"}
    assert {r["style"] for r in rows} == {"twemoji"} and (tmp_path / "tw" / "1F680.png").is_file()
    em.write_emoji_folder(str(tmp_path / "om"), size=16, limit=1)
    em.write_emoji_folder(str(tmp_path / "omw"), size=16, limit=1, style_word=True)
    bare, worded = (json.loads((tmp_path / d / "metadata.jsonl").read_text("utf-8")) for d in ("om", "omw"))
    assert worded["text"] == bare["text"] + ", openmoji style" and "style" not in bare["text"]
    assert em.emoji_caption("rocket", "noto") == "rocket, noto style"


def test_the_environment_variable_and_the_package_layout_are_found(monkeypatch):
    monkeypatch.setenv(src.TWEMOJI_ENV, os.path.join(STYLE_DATA, "twemoji"))
    assert em.open_source("twemoji").where.endswith(os.path.join("img", "twitter", "64"))
    monkeypatch.setenv(src.NOTO_ENV, os.path.join(STYLE_DATA, "noto"))
    assert em.open_source("noto").has(ROCKET)
    assert src.parse_codepoints("emoji_u1f468_200d_1f4bb") == src.parse_codepoints("1f468-200d-1f4bb") \
        == "\U0001F468\u200d\U0001F4BB"


@pytest.fixture
def nothing_installed(monkeypatch, tmp_path):
    """No noto font and no twemoji package anywhere this run looks."""
    monkeypatch.delenv(src.NOTO_ENV, raising=False)
    monkeypatch.delenv(src.TWEMOJI_ENV, raising=False)
    monkeypatch.setattr(src, "NOTO_PLACES", (str(tmp_path / "NotoColorEmoji.ttf"),))
    monkeypatch.setattr(src, "twemoji_places", lambda: [str(tmp_path / "node_modules" / src.TWEMOJI_PACKAGE)])


@pytest.mark.parametrize("style, install", [
    ("noto", "`apt-get install -y fonts-noto-color-emoji`"),
    ("twemoji", "`npm install --prefix ~/.cache/latentgen/npm emoji-datasource-twitter`"),
])
def test_a_missing_source_names_what_to_install(nothing_installed, tmp_path, capsys, style, install):
    with pytest.raises(FileNotFoundError, match=f"the {style} style needs .*install it with {install}"):
        em.open_source(style)
    rc = cli(["data", "emoji", "--style", style, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: the {style} style needs") and install in err
    assert not (tmp_path / "out").exists(), "the source is looked for before anything is written"


def test_a_source_named_but_unusable_is_an_error_not_skipped(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="--source .*no such file or folder"):
        em.open_source("noto", str(tmp_path / "nope"))
    monkeypatch.setenv(src.TWEMOJI_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{src.TWEMOJI_ENV} .*not emoji-datasource-twitter's folder"):
        em.open_source("twemoji")
    with pytest.raises(ValueError, match="--source is for the noto and twemoji styles"):
        em.open_source("openmoji", str(tmp_path))
    with pytest.raises(ValueError, match="twemoji has none; use --style openmoji"):
        list(em.iter_emoji(16, extras=True, source=em.open_source("twemoji", os.path.join(STYLE_DATA, "twemoji"))))


@pytest.mark.skipif(not any(os.path.isfile(p) for p in src.NOTO_PLACES), reason="Noto Color Emoji not installed")
def test_the_installed_noto_font_draws_as_its_pngs():
    font, pngs = em.open_source("noto"), em.open_source("noto", os.path.join(STYLE_DATA, "noto"))
    assert isinstance(font, src.NotoFontSource) and font.has(GRIN) and not font.has("a")
    for seq in pngs.sequences():
        assert np.array_equal(np.asarray(font.render(seq, 32)), np.asarray(pngs.render(seq, 32)))
