"""The shapes benchmark against its spec (docs/shapes.md): geometry, captions, prompts, checker, folders."""

import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from latentgen.data.shape_spec import object_geometry
from latentgen.data.shapes import (
    COLORS,
    EXTRA_COLORS,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    canonical_caption,
    make_caption,
    paraphrase_caption,
    parse_prompt,
    render_scene,
    sample_scene,
    write_extra_colors_folder,
    write_shapes_folder,
)
from latentgen.eval.shapes import add_gaussian_noise, attribute_accuracy, check_image, find_blobs, score_image

SCENE = [ShapeObject("circle", "red", "large", "top left"),
         ShapeObject("square", "blue", "small", "center"),
         ShapeObject("triangle", "yellow", "large", "bottom right")]


def _key(o: ShapeObject):
    return tuple(o.to_dict().values())


# ---------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_render_follows_the_spec_geometry(shape, size):
    side, cell = 96, 32.0
    soft_edges = 0
    for seed, (color, position) in enumerate(zip(COLORS, POSITIONS)):
        obj = ShapeObject(shape, color, size, position)
        image = np.asarray(render_scene([obj], side, random.Random(seed)))  # (S, S, 3)
        cx, cy, r = object_geometry(obj, side, random.Random(seed))  # the same draws as the render
        assert tuple(image[int(cy), int(cx)]) == COLORS[color]  # exact colour at the centre
        lo, hi = {"small": (0.45 * 0.9, 0.45 * 1.1), "large": (0.85 * 0.9, 0.85 * 1.1)}[size]
        assert lo * cell / 2 <= r <= hi * cell / 2
        row, col = divmod(POSITIONS.index(position), 3)
        assert abs(cx - (col + 0.5) * cell) <= 0.07 * cell and abs(cy - (row + 0.5) * cell) <= 0.07 * cell
        ys, xs = np.nonzero((image < 250).any(-1))  # drawn pixels
        assert abs((xs.max() + 1 - xs.min()) / 2 - r) <= 1.0 and abs((ys.max() + 1 - ys.min()) / 2 - r) <= 1.0
        assert (row, col) == (int(ys.mean() // cell), int(xs.mean() // cell))
        assert (image == 255).all(-1).sum() > 0.5 * side * side  # white background
        soft_edges += (~(image == 255).all(-1) & ~(image == COLORS[color]).all(-1)).sum()
    assert soft_edges > 0  # 4x supersampling + BOX leaves anti-aliased edges


def test_render_rejects_free_attributes_and_tiny_canvases():
    with pytest.raises(ValueError, match="every attribute"):
        render_scene([ShapeObject("circle", "red")], 64, random.Random(0))
    with pytest.raises(ValueError, match="size"):
        render_scene(SCENE, 8, random.Random(0))


def test_shape_object_validates_and_round_trips():
    obj = ShapeObject("triangle", "green", "small", "bottom")
    assert ShapeObject.from_dict(obj.to_dict()) == obj
    assert ShapeObject.from_dict({"color": "red"}) == ShapeObject(color="red")
    with pytest.raises(ValueError, match="pentagon"):
        ShapeObject("pentagon")
    assert ShapeObject("star").shape == "star"  # an extra shape: drawn and checked, never sampled
    with pytest.raises(ValueError, match="colour"):
        ShapeObject.from_dict({"colour": "red"})


# ---------------------------------------------------------------- sampling
def test_sample_scene_rules_and_heldout_pairs():
    rng = random.Random(0)
    counts, pairs = set(), set()
    for _ in range(1500):
        scene = sample_scene(rng)
        counts.add(len(scene))
        assert len({o.color for o in scene}) == len(scene) == len({o.position for o in scene})
        assert all(o.complete for o in scene)
        pairs |= {(o.color, o.shape) for o in scene}
    assert counts == {1, 2, 3}
    assert not pairs & HELDOUT_PAIRS  # never sampled by default
    assert len(pairs) == 6 * 3 - 3
    seen = {(o.color, o.shape) for _ in range(1500) for o in sample_scene(rng, include_heldout=True)}
    assert HELDOUT_PAIRS <= seen
    for _ in range(200):
        assert {(o.color, o.shape) for o in sample_scene(rng, require_heldout=True)} & HELDOUT_PAIRS
    with pytest.raises(ValueError, match="n_objects"):
        sample_scene(rng, n_objects=4)


# ---------------------------------------------------------------- captions and prompts
_ALT = "|".join
CLAUSE = (f"a ({_ALT(SIZES)}) ({_ALT(COLORS)}) ({_ALT(SHAPES)}) at "
          f"({_ALT(sorted(POSITIONS, key=len, reverse=True))})")


def test_canonical_caption_format_and_random_order():
    rng = random.Random(1)
    for _ in range(300):
        scene = sample_scene(rng, include_heldout=True)
        text = canonical_caption(scene, rng)
        assert re.fullmatch(f"{CLAUSE}( and {CLAUSE})*", text), text
        assert text.count(" at ") == len(scene)
    assert canonical_caption(SCENE[:1], rng) == "a large red circle at top left"
    firsts = {canonical_caption(SCENE, rng).split(" and ")[0] for _ in range(60)}
    assert len(firsts) == 3  # objects in random order


def test_parse_prompt_round_trips_canonical_and_paraphrased_captions():
    rng = random.Random(2)
    variants = set()
    for _ in range(400):
        scene = sample_scene(rng, include_heldout=True)
        assert sorted(map(_key, parse_prompt(canonical_caption(scene, rng)))) == sorted(map(_key, scene))
        text = paraphrase_caption(scene, rng)
        parsed = sorted(parse_prompt(text), key=lambda o: o.position)
        for got, want in zip(parsed, sorted(scene, key=lambda o: o.position), strict=True):
            assert (got.shape, got.color, got.position) == (want.shape, want.color, want.position), text
            assert got.size in (None, want.size), text
        variants |= {w for w in ("in the", "on the", ":", " in ") if w in text}
        variants |= {"no size"} if any(o.size is None for o in parsed) else set()
    assert variants == {"in the", "on the", ":", " in ", "no size"}
    for _ in range(50):
        text = make_caption(SCENE, rng, paraphrase_prob=0.0)
        assert re.fullmatch(f"{CLAUSE}( and {CLAUSE})*", text)


def test_parse_prompt_partial_and_bad_prompts():
    assert parse_prompt("a red circle") == [ShapeObject("circle", "red")]
    assert parse_prompt("An orange shape in the upper-left corner.") == [
        ShapeObject(None, "orange", None, "top left")]
    assert parse_prompt("top: a small square, and a large circle in green on the right") == [
        ShapeObject("square", None, "small", "top"), ShapeObject("circle", "green", "large", "right")]
    for bad, why in [("", "empty"), ("a purple elephant", "elephant"), ("a large red", "not attached"),
                     ("a red blue circle", "second color")]:
        with pytest.raises(ValueError, match=why):
            parse_prompt(bad)


# ---------------------------------------------------------------- checker
@pytest.mark.parametrize("side", [32, 64])
def test_checker_accuracy_on_clean_and_noisy_renders(side):
    rng, gen = random.Random(side), np.random.default_rng(side)
    clean, noisy = [], []
    for _ in range(120):
        scene = sample_scene(rng, include_heldout=True)
        image = render_scene(scene, side, rng)
        clean.append(check_image(image, scene))
        noisy.append(check_image(add_gaussian_noise(image, 0.1, gen), scene))
    assert attribute_accuracy(clean)["prompt"] >= 0.99
    assert attribute_accuracy(noisy)["prompt"] >= 0.95


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_checker_rejects_wrong_scenes(sigma):
    gen = np.random.default_rng(0)

    def noisy(image):
        return add_gaussian_noise(image, sigma, gen) if sigma else image

    image = noisy(render_scene(SCENE, 64, random.Random(0)))
    assert check_image(image, SCENE).correct
    red, blue, yellow = SCENE
    for attr, value in [("color", "green"), ("shape", "square"), ("size", "small"), ("position", "left")]:
        wrong = [ShapeObject(**{**red.to_dict(), attr: value}), blue, yellow]
        result = check_image(image, wrong)
        assert not result.correct and getattr(result.objects[0], attr) is False, attr
        assert all(o.ok for o in result.objects[1:])
    swapped = [ShapeObject("circle", "blue", "large", "top left"),
               ShapeObject("square", "red", "small", "center")]
    result = check_image(image, swapped + [yellow])
    assert not result.correct and not result.objects[0].ok and not result.objects[1].ok
    # objects are matched to blobs by colour first, so the "blue circle" is judged on the blue square
    assert result.objects[0].found == ShapeObject("square", "blue", "small", "center")
    blank = check_image(noisy(Image.new("RGB", (64, 64), "white")), SCENE)
    assert not blank.correct and all(o.found is None for o in blank.objects)
    extra = check_image(image, [red, blue])
    assert not extra.correct and extra.stray_colors == ["yellow"]
    missing = check_image(noisy(render_scene([red, blue], 64, random.Random(1))), SCENE)
    assert not missing.correct and not missing.objects[2].ok and not missing.stray_colors


def test_checker_partial_prompts_inputs_and_json():
    image = render_scene(SCENE, 64, random.Random(3))
    assert check_image(image, "a red circle and a blue square at center and a triangle").correct
    only_red = check_image(image, "a red circle")
    assert only_red.objects[0].ok and only_red.stray_colors == ["blue", "yellow"] and not only_red.correct
    as_float = np.asarray(image, dtype=np.float32) / 255  # (S, S, 3) on 0..1
    assert check_image(as_float, [o.to_dict() for o in SCENE]).correct
    verdict = json.loads(json.dumps(score_image(image, "a small red circle at top left")))
    assert verdict["objects"][0]["size"] is False and verdict["objects"][0]["color"] is True
    assert verdict["objects"][0]["found"] == SCENE[0].to_dict() and verdict["correct"] is False
    acc = attribute_accuracy([check_image(image, SCENE), only_red])
    assert acc["prompt"] == 0.5 and acc["nothing_else"] == 0.5 and acc["n_objects"] == 4
    assert acc["color"] == 1.0 and acc["size"] == 1.0  # only_red names no size: not counted
    with pytest.raises(ValueError, match="square"):
        check_image(np.zeros((32, 48, 3), np.uint8), SCENE)


# ---------------------------------------------------------------- image folder
def test_write_shapes_folder_format_and_determinism(tmp_path):
    n = write_shapes_folder(tmp_path / "a", n=6, size=32, seed=5, paraphrase_prob=0.5)
    assert n == 6
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"{i:05d}.png" for i in range(6)]
    for r in rows:
        assert set(r) == {"file_name", "text", "objects"}
        objects = [ShapeObject.from_dict(o) for o in r["objects"]]
        assert all(o.complete for o in objects) and not {(o.color, o.shape) for o in objects} & HELDOUT_PAIRS
        assert len(parse_prompt(r["text"])) == len(objects)
        with Image.open(tmp_path / "a" / r["file_name"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
            assert check_image(im, objects).correct
    write_shapes_folder(tmp_path / "b", n=6, size=32, seed=5, paraphrase_prob=0.5)
    write_shapes_folder(tmp_path / "c", n=6, size=32, seed=6, paraphrase_prob=0.5)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "metadata.jsonl").read_text() != (tmp_path / "c" / "metadata.jsonl").read_text()
    with pytest.raises(ValueError, match="positive"):
        write_shapes_folder(tmp_path / "d", n=0)


def test_cli_data_shapes(tmp_path, capsys):
    from latentgen.cli import main

    argv = ["data", "shapes", "--out", str(tmp_path / "cli"), "--n", "4", "--size", "32", "--seed", "7"]
    assert main(argv) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    write_shapes_folder(tmp_path / "direct", n=4, size=32, seed=7)
    for f in ["metadata.jsonl", "00000.png", "00003.png"]:
        assert (tmp_path / "cli" / f).read_bytes() == (tmp_path / "direct" / f).read_bytes()
    assert main(["data", "shapes", "--out", str(tmp_path / "bad"), "--n", "0"]) == 2


def test_write_shapes_folder_fixed_object_count(tmp_path):
    """n_objects / --objects: every scene holds that many objects, held-out pairs still left out."""
    from latentgen.cli import main

    write_shapes_folder(tmp_path / "two", n=12, size=32, seed=3, n_objects=2, paraphrase_prob=0.3)
    rows = [json.loads(line) for line in (tmp_path / "two" / "metadata.jsonl").read_text().splitlines()]
    assert [len(r["objects"]) for r in rows] == [2] * 12
    assert not {(o["color"], o["shape"]) for r in rows for o in r["objects"]} & HELDOUT_PAIRS
    assert all(len(parse_prompt(r["text"])) == 2 for r in rows)
    argv = ["data", "shapes", "--out", str(tmp_path / "cli"), "--n", "12", "--size", "32", "--seed", "3",
            "--objects", "2", "--paraphrase-prob", "0.3"]
    assert main(argv) == 0
    assert (tmp_path / "cli" / "metadata.jsonl").read_text() == (tmp_path / "two" / "metadata.jsonl").read_text()
    with pytest.raises(ValueError, match="n_objects must be 1, 2 or 3"):
        write_shapes_folder(tmp_path / "bad", n=2, n_objects=4)
    assert main(["data", "shapes", "--out", str(tmp_path / "bad2"), "--n", "2", "--paraphrase-prob", "2"]) == 2


def test_palette_argument_finds_a_colour_outside_the_palette():
    """render_scene(fill=) and find_blobs(palette=): the default palette calls teal "other";
    a palette with teal added names it, with the same shape, size and position."""
    teal = (0, 150, 150)
    obj = ShapeObject("triangle", None, "large", "top left")
    image = render_scene([obj], 64, random.Random(3), fill=teal)
    plain = find_blobs(image)
    assert [b.color for b in plain] == ["other"]
    blobs = find_blobs(image, palette={**COLORS, "teal": teal})
    assert [(b.color, b.shape, b.size, b.position) for b in blobs] == [("teal", "triangle", "large", "top left")]
    with pytest.raises(ValueError, match="every attribute"):
        render_scene([obj], 64, random.Random(3))  # no colour and no fill
    with pytest.raises(ValueError, match="palette"):
        find_blobs(image, palette={})


def test_write_extra_colors_folder_draws_what_it_says_in_colours_outside_the_palette(tmp_path):
    """Each caption names one extra colour and 1-2 objects; the image holds that colour's pixels and no other's, and
    the checker, given the extra colours but grey as its palette, finds exactly those objects (it unmixes against
    white, so grey reads as a faint black); no palette colour (so no held-out pair) appears; seeded."""
    assert not set(EXTRA_COLORS) & set(COLORS)
    write_extra_colors_folder(tmp_path / "a", n=12, size=64, seed=1)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"x{i:05d}.png" for i in range(12)]
    clause = re.compile(r"a (small|large) (\w+) (circle|square|triangle) at ([a-z ]+)")
    for r in rows:
        parts = [clause.fullmatch(c).groups() for c in r["text"].split(" and ")]
        assert 1 <= len(parts) <= 2 and len({p[1] for p in parts}) == 1 and parts[0][1] in EXTRA_COLORS
        with Image.open(tmp_path / "a" / r["file_name"]) as im:
            pixels = set(im.getdata())
            assert {c for c, rgb in EXTRA_COLORS.items() if rgb in pixels} == {parts[0][1]}
            if parts[0][1] != "grey":
                palette = {c: rgb for c, rgb in EXTRA_COLORS.items() if c != "grey"}
                found = {(b.size, b.color, b.shape, b.position) for b in find_blobs(im, palette=palette)}
                assert found == set(parts), r
    write_extra_colors_folder(tmp_path / "b", n=12, size=64, seed=1)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
               for f in ["metadata.jsonl", *(r["file_name"] for r in rows)])
    with pytest.raises(ValueError, match="positive"):
        write_extra_colors_folder(tmp_path / "c", n=0)


def test_extra_shapes_are_drawn_and_told_apart_but_never_sampled():
    from latentgen.data.shapes import EXTRA_SHAPES, POSITIONS, SHAPES

    rng = random.Random(0)
    every = SHAPES + EXTRA_SHAPES
    for shape in every:
        for size in ("small", "large"):
            for position in POSITIONS[::2]:
                obj = ShapeObject(shape, "blue", size, position)
                blobs = find_blobs(render_scene([obj], 64, rng), shapes=every)
                assert len(blobs) == 1 and blobs[0].as_object() == obj, (obj, blobs)
    assert all(o.shape in SHAPES for _ in range(200) for o in sample_scene(rng, include_heldout=True))
    star = render_scene([ShapeObject("star", "red", "large", "center")], 64, rng)
    assert find_blobs(star)[0].shape in SHAPES  # the default checker knows only the spec's shapes
