"""Image folders: the three caption layouts, every kind of broken file, colour conversion, the dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from latentgen import cli
from latentgen.data import folder, images
from latentgen.data.folder import ImageCaptionDataset, NoUsableImagesError, require_usable, scan_folder
from latentgen.data.images import load_rgb, resize_center_crop
from latentgen.limits import MAX_CAPTION_CHARS
from tests.data_fixtures import BLUE, RED, make_messy_folder, solid, write_metadata_folder


def by_name(report):
    return {os.path.basename(it.path): it for it in report.items}


def skip_kinds(report):
    return {os.path.basename(s.path.split(":")[0]): s.kind for s in report.skipped}


@pytest.fixture
def messy(tmp_path):
    return make_messy_folder(tmp_path)


# ---------------------------------------------------------------- layouts
def test_txt_layout_keeps_the_good_and_skips_each_bad_kind(messy):
    report = scan_folder(messy.path)
    assert {k: it.caption for k, it in by_name(report).items()} == messy.captions
    assert skip_kinds(report) == messy.skips
    assert {os.path.basename(p) for p, _ in report.notes} == messy.notes
    assert all(s.reason.split(":", 1)[1].strip() for s in report.skipped), "every skip says why"


def test_jsonl_layout_with_subfolders_keeps_extra_keys(tmp_path):
    objects = [{"shape": "circle", "colour": "red"}]
    rows = [
        {"file_name": "a.png", "text": "a red thing", "colour": RED, "objects": objects},
        {"file_name": "deep/er/b.png", "text": "a blue thing", "colour": BLUE, "objects": []},
    ]
    root = write_metadata_folder(tmp_path / "j", "jsonl", rows)
    items = by_name(scan_folder(root))
    assert items["a.png"].caption == "a red thing" and items["a.png"].extra["objects"] == objects
    assert items["b.png"].caption == "a blue thing"
    assert items["b.png"].path.endswith(os.path.join("deep", "er", "b.png"))


def test_csv_layout(tmp_path):
    rows = [{"file_name": "x/a.png", "text": "one, with a comma", "colour": RED},
            {"file_name": "b.png", "text": "two", "colour": BLUE}]
    root = write_metadata_folder(tmp_path / "c", "csv", rows)
    report = scan_folder(root)
    captions = {k: it.caption for k, it in by_name(report).items()}
    assert captions == {"a.png": "one, with a comma", "b.png": "two"}
    assert not report.skipped


def test_metadata_problems_are_skipped_not_raised(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    for name in ("ok.png", "nocap.png", "blank.png", "listed_twice.png", "txt_only.png"):
        solid(RED).save(root / name)
    (root / "txt_only.txt").write_text("caption from a txt file")
    lines = [json.dumps({"file_name": "ok.png", "text": "fine"}), "{not json",
             json.dumps({"file_name": "nocap.png"}), json.dumps({"file_name": "blank.png", "text": " "}),
             json.dumps({"file_name": "gone.png", "text": "missing"}), json.dumps({"text": "no file name"}),
             json.dumps({"file_name": "../escape.png", "text": "outside"}),
             json.dumps({"file_name": "listed_twice.png", "text": "first"}),
             json.dumps({"file_name": "listed_twice.png", "text": "second"})]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    report = scan_folder(root)
    captions = {k: it.caption for k, it in by_name(report).items()}
    assert captions == {"ok.png": "fine",
                        "listed_twice.png": "first", "txt_only.png": "caption from a txt file"}
    kinds = sorted(s.kind for s in report.skipped)
    assert kinds == sorted(["bad metadata", "no caption", "empty caption", "missing file", "bad metadata",
                            "bad metadata", "duplicate entry"])
    assert any(s.path.endswith("metadata.jsonl:2") for s in report.skipped), "bad lines are named by number"


def test_hostile_metadata_lines_are_skipped_and_the_rest_is_kept(tmp_path):
    """A nested-list bomb, an over-long line and an over-long caption: each a reported skip, not a crash."""
    root = tmp_path / "hostile"
    root.mkdir()
    for name in ("ok.png", "long_caption.png", "deep.png", "also_ok.png"):
        solid(RED).save(root / name)
    lines = [json.dumps({"file_name": "ok.png", "text": "fine"}),
             "[" * 100_000,  # RecursionError in json.loads
             json.dumps({"file_name": "long_caption.png", "text": "x" * 10_000_000}),  # over 1 MB: not parsed
             json.dumps({"file_name": "deep.png", "text": "x" * (MAX_CAPTION_CHARS + 1)}),
             "1" * 5000,  # an integer over Python's digit limit: ValueError, not JSONDecodeError
             json.dumps({"file_name": "also_ok.png", "text": "also fine"})]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    report = scan_folder(root)
    assert sorted(it.caption for it in report.items) == ["also fine", "fine"]
    reasons = {s.path.rsplit(":", 1)[1]: s.reason for s in report.skipped if ".jsonl:" in s.path}
    assert reasons.keys() == {"2", "3", "5"}, report.skipped
    assert "nested too deeply" in reasons["2"] and "one flat JSON object per line" in reasons["2"]
    assert "line too long" in reasons["3"] and "10,000,0" in reasons["3"]
    assert reasons["5"].startswith("bad metadata")
    deep = next(s.reason for s in report.skipped if s.path.endswith("deep.png"))
    assert deep.startswith("caption too long") and "metadata.jsonl:4" in deep and "2,000" in deep
    assert "shorten" in deep
    # the unparsed line 3 leaves long_caption.png without a caption: skipped as such, not crashed on
    assert {os.path.basename(s.path) for s in report.skipped if s.kind == "no caption"} == {"long_caption.png"}


def test_csv_field_over_the_csv_module_limit_is_a_skip(tmp_path):
    root = tmp_path / "csv"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        solid(BLUE).save(root / name)
    (root / "captions.csv").write_text(
        "file_name,text\na.png,first\nb.png," + "y" * 200_000 + "\nc.png,third\n", encoding="utf-8")
    report = scan_folder(root)
    assert sorted(it.caption for it in report.items) == ["first", "third"]
    bad = [s for s in report.skipped if s.path.endswith("captions.csv:3")]
    assert len(bad) == 1 and bad[0].kind == "bad metadata" and "field" in bad[0].reason, report.skipped


def test_long_txt_captions_are_skipped_and_reported(tmp_path, capsys):
    for name, text in (("ok", "a red square"), ("long", "word " * 1000), ("huge", "z" * 10_000_000)):
        solid(RED).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(text)
    report = scan_folder(tmp_path)
    assert [it.caption for it in report.items] == ["a red square"]
    assert {os.path.basename(s.path): s.kind for s in report.skipped} == {
        "long.png": "caption too long", "huge.png": "caption too long"}
    ds = ImageCaptionDataset(str(tmp_path), size=8)  # the trainers' loader: the same rules
    assert ds.captions == ["a red square"]
    assert cli.main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 usable" in out and "skipped" in out and "huge.png: caption too long" in out


def test_caption_encodings(messy):
    items = by_name(scan_folder(messy.path))
    assert items["cp1252.png"].caption == "café ’quoted’"
    assert items["utf16.png"].caption == "naïve 😀 caption"
    assert items["utf8sig.png"].caption == "bom caption"
    assert folder.read_text(str(messy.path / "cp1252.txt"))[1] == "cp1252"


def test_symlinked_folder_is_followed_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    solid(RED).save(data / "a.png")
    (data / "a.txt").write_text("a")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(data, root / "link1")
    os.symlink(data, root / "link2")
    report = scan_folder(root)
    assert len(report.items) == 1
    assert [s.kind for s in report.skipped] == ["duplicate folder"]


# ---------------------------------------------------------------- bad images
def test_huge_image_is_refused_from_its_header(messy, monkeypatch):
    decoded = []
    monkeypatch.setattr(images, "load_rgb", lambda p: decoded.append(p) or Image.new("RGB", (1, 1)))
    _, reason = images.check_image(str(messy.path / "huge.png"))
    assert reason.startswith("too many pixels") and "10000 x 10000" in reason
    assert decoded == [], "the 100 MP image must not be decoded"


def test_max_pixels_is_a_parameter(tmp_path):
    solid(RED, (100, 100)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a")
    assert len(scan_folder(tmp_path).items) == 1
    assert [s.kind for s in scan_folder(tmp_path, max_pixels=5000).skipped] == ["too many pixels"]


def test_permission_error_is_a_skip(tmp_path, monkeypatch):
    solid(RED).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a")

    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(images, "load_rgb", denied)
    assert [s.reason for s in scan_folder(tmp_path).skipped] == ["unreadable: Permission denied"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file anyway")
def test_chmod_000_file_is_a_skip(tmp_path):
    solid(RED).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a")
    os.chmod(tmp_path / "a.png", 0)
    assert [s.kind for s in scan_folder(tmp_path).skipped] == ["unreadable"]


# ---------------------------------------------------------------- colours
def test_tricky_modes_come_out_in_the_right_colours(messy):
    for name, expected in messy.colours.items():
        img = load_rgb(str(messy.path / name))
        assert img.mode == "RGB"
        for xy, rgb in expected.items():
            got = img.getpixel(xy)
            assert np.abs(np.subtract(got, rgb)).max() <= 12, f"{name} at {xy}: {got}, expected {rgb}"


def test_naive_conversion_would_have_been_wrong(messy):
    """The fixtures really are traps: Pillow's plain convert('RGB') gets them wrong."""
    assert Image.open(messy.path / "grey16.png").convert("RGB").getpixel((8, 8)) == (255, 255, 255)
    assert Image.open(messy.path / "palette.png").convert("RGB").getpixel((2, 8)) == (0, 0, 0)
    assert Image.open(messy.path / "rotated.jpg").size == (20, 10)
    assert load_rgb(str(messy.path / "rotated.jpg")).size == (10, 20)


def test_resize_center_crop_keeps_the_middle():
    img = Image.new("RGB", (60, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # red | blue | red
    out = resize_center_crop(img, 10)
    assert out.size == (10, 10)
    assert np.abs(np.subtract(out.getpixel((5, 5)), BLUE)).max() <= 2
    assert resize_center_crop(Image.new("RGB", (3, 7)), 16).size == (16, 16)  # upscales small images too


# ---------------------------------------------------------------- errors
def test_no_usable_pair_error_names_folder_counts_and_formats(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "a.txt").write_text("caption")
    solid(RED).save(root / "b.png")
    with pytest.raises(NoUsableImagesError) as e:
        require_usable(scan_folder(root))
    msg = str(e.value)
    assert str(root) in msg and "1 empty file" in msg and "1 no caption" in msg
    assert ".txt" in msg and "metadata.jsonl" in msg and "captions.csv" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(NoUsableImagesError, match="holds no image files"):
        require_usable(scan_folder(_empty(tmp_path)))
    with pytest.raises(NoUsableImagesError, match="empty file"):
        ImageCaptionDataset([root], size=8)


def _empty(tmp_path):
    p = tmp_path / "empty"
    p.mkdir()
    return p


def test_bad_paths_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="give the folder"):
        scan_folder(tmp_path / "f.png")


# ---------------------------------------------------------------- dataset
def test_dataset_items_and_preload(messy):
    ds = ImageCaptionDataset(str(messy.path), size=8)
    assert len(ds) == len(messy.captions)
    x = ds[0]
    assert x["pixels"].shape == (3, 8, 8) and x["pixels"].dtype == torch.float32
    assert -1.0 <= float(x["pixels"].min()) and float(x["pixels"].max()) <= 1.0
    assert x["caption"] == ds.items[0].caption and x["index"] == 0
    assert len(ds.report.skipped) == len(messy.skips)
    lazy = ImageCaptionDataset([messy.path], size=8, preload=False)
    for i in range(len(ds)):
        assert torch.equal(ds[i]["pixels"], lazy[i]["pixels"])
    red = next(i for i, it in enumerate(ds.items) if it.path.endswith("red.png"))
    assert torch.allclose(ds[red]["pixels"][:, 4, 4], torch.tensor([1.0, -1.0, -1.0]))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["pixels"].shape == (4, 3, 8, 8) and len(batch["caption"]) == 4


def test_dataset_hflip_and_several_folders(tmp_path):
    img = Image.new("RGB", (8, 8), RED)
    img.paste(BLUE, (4, 0, 8, 8))
    rows_a = [{"file_name": "a.png", "text": "red left, blue right", "colour": RED, "objects": [1]}]
    a = write_metadata_folder(tmp_path / "a", "jsonl", rows_a)
    img.save(a / "a.png")
    b = write_metadata_folder(tmp_path / "b", "csv", [{"file_name": "b.png", "text": "blue", "colour": BLUE}])
    ds = ImageCaptionDataset([str(a), str(b)], size=8, hflip=True)
    assert len(ds) == 4 and ds.items[0].extra["objects"] == [1]
    assert torch.equal(ds[2]["pixels"], ds[0]["pixels"].flip(-1)) and ds[2]["caption"] == ds[0]["caption"]
    assert ds[0]["pixels"][2, 0, 7] > 0.9 and ds[2]["pixels"][2, 0, 0] > 0.9  # blue moved to the left
    with pytest.raises(IndexError):
        ds[4]


# ---------------------------------------------------------------- CLI
def test_cli_data_check_exit_codes(messy, tmp_path, capsys):
    assert cli.main(["data", "check", str(messy.path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(messy.captions)} usable" in out and "truncated.jpg" in out and "too many pixels" in out
    bad = tmp_path / "only_bad"
    bad.mkdir()
    (bad / "x.png").write_text("not an image")
    (bad / "x.txt").write_text("caption")
    assert cli.main(["data", "check", str(bad)]) == 1
    assert "not an image" in capsys.readouterr().out
    assert cli.main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
