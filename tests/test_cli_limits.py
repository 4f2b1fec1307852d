"""`latentgen generate` and `latentgen eval shapes` refuse bad input with one short `error:` line, exit 2,
before any model is loaded: numbers out of range, over-long prompts, unwritable --out paths, corrupt
weights and decompression-bomb init images."""

import os
import re
import shutil

import PIL.Image
import pytest

from latentgen import LatentGenPipeline
from latentgen.cli import main as cli
from latentgen.pngmeta import read_png_params
from tests.data_fixtures import huge_png
from tests.tiny_models import make_tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("models"))


def run(capsys, *argv):
    """(exit code, stdout, stderr) of the `latentgen` command."""
    rc = cli(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err[:2000]
    return err


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("flags, message", [
    (["--width", "100000"], "--width 100000: must be a whole number from 8 to 2048"),
    (["--height", "4"], "--height 4: must be a whole number from 8 to 2048"),
    (["--steps", "0"], "--steps 0: must be a whole number from 1 to 1000"),
    (["--steps", "5000"], "--steps 5000: must be a whole number from 1 to 1000"),
    (["--n", "65"], "--n 65: must be a whole number from 1 to 64 \\(all are made in one batch"),
    (["--n", "0"], "--n 0: must be a whole number from 1 to 64"),
    (["--guidance", "nan"], "--guidance nan: must be a finite number from 0 to 30"),
    (["--guidance", "inf"], "--guidance inf: must be a finite number from 0 to 30"),
    (["--guidance", "-1"], "--guidance -1.0: must be a finite number from 0 to 30"),
    (["--strength", "1.5"], "--strength 1.5: must be a finite number from 0 to 1"),
    (["--seed", "-1"], "--seed -1: must be a whole number from 0 to 4294967295"),
    (["--seed", str(2**32)], "--seed 4294967296: must be a whole number from 0 to 4294967295"),
    (["--seed", "4294967295", "--n", "2"], "image i uses seed 4294967295 \\+ i"),
    (["--width", "9" * 400], "--width 999999999999... \\(400 digits\\): must be a whole number"),
])
def test_generate_numbers_are_bounded_before_the_model_loads(tmp_path, capsys, flags, message):
    """The model folder does not exist: the error can only be the argument's, checked first."""
    rc, _, err = run(capsys, "generate", "--model", str(tmp_path / "no_model"), "--prompt", "a",
                     "--out", str(tmp_path / "x.png"), *flags)
    assert rc == 2
    assert re.search(message, one_error_line(err)), err
    assert not os.path.exists(tmp_path / "x.png")


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size 0: must be a whole number from 1 to 64"),
    (["--batch-size", "100000"], "--batch-size 100000: must be a whole number from 1 to 64"),
    (["--n", "0"], "--n 0: must be a whole number from 1 to 10000"),
    (["--steps", "5000"], "--steps 5000: must be a whole number from 1 to 1000"),
    (["--guidance", "nan"], "--guidance nan: must be a finite number from 0 to 30"),
    (["--seed", "-3"], "--seed -3: must be a whole number from 0 to 4294967295"),
])
def test_eval_shapes_numbers_are_bounded_before_the_model_loads(tmp_path, capsys, flags, message):
    rc, _, err = run(capsys, "eval", "shapes", "--model", str(tmp_path / "no_model"), *flags)
    assert rc == 2 and message in one_error_line(err)


def test_the_ranges_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(8 to 2048: a multiple of the model's VAE factor)" in text and "(1 to 64: all are made" in text
    assert "existing PNGs are overwritten" in text and "at most 1,000 characters" in text


# ---------------------------------------------------------------- prompts
def test_a_116k_character_prompt_is_refused_with_one_line(model_dir, tmp_path, capsys):
    """It used to print 230 KB of tokenizer warnings and exit 0."""
    out = tmp_path / "x.png"
    rc, stdout, err = run(capsys, "generate", "--model", model_dir, "--prompt", "red " * 29_000, "--steps", "1",
                          "--out", str(out))
    assert rc == 2 and not stdout and not out.exists()
    assert "the --prompt is 116,000 characters long; at most 1,000" in one_error_line(err)
    assert len(err) < 300
    rc, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a", "--negative-prompt", "x" * 1001,
                     "--steps", "1", "--out", str(out))
    assert rc == 2 and "the --negative-prompt is 1,001 characters long" in one_error_line(err)


# ---------------------------------------------------------------- --out
def test_out_that_cannot_be_written_is_refused_before_generating(model_dir, tmp_path, capsys):
    common = ["generate", "--model", model_dir, "--prompt", "a", "--steps", "1", "--seed", "3"]
    (tmp_path / "notes.txt").write_text("keep me")
    rc, _, err = run(capsys, *common, "--out", str(tmp_path / "notes.txt"))  # a folder is needed
    assert rc == 2 and "is an existing file, not a folder" in one_error_line(err)
    assert (tmp_path / "notes.txt").read_text() == "keep me"

    (tmp_path / "dir.png").mkdir()  # a .png file is needed
    rc, _, err = run(capsys, *common, "--out", str(tmp_path / "dir.png"))
    assert rc == 2 and "dir.png' is an existing folder, not a .png file" in one_error_line(err)
    (tmp_path / "many-1.png").mkdir()  # the second of --n 2
    rc, _, err = run(capsys, *common, "--n", "2", "--out", str(tmp_path / "many.png"))
    assert rc == 2 and "many-1.png' is an existing folder" in one_error_line(err)
    assert not (tmp_path / "many-0.png").exists()

    rc, _, err = run(capsys, *common, "--out", str(tmp_path / "notes.txt" / "sub" / "x.png"))
    assert rc == 2 and "cannot create the folder" in one_error_line(err) and "notes.txt' is not a folder" in err
    assert not os.listdir(tmp_path / "dir.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any folder")
def test_out_in_a_read_only_folder_is_refused(model_dir, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a", "--steps", "1",
                         "--out", str(ro / "new" / "x.png"))
    finally:
        ro.chmod(0o700)
    assert rc == 2 and "ro' is not writable" in one_error_line(err)


def test_an_existing_png_is_overwritten(model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    PIL.Image.new("RGB", (4, 4)).save(out)
    rc, stdout, _ = run(capsys, "generate", "--model", model_dir, "--prompt", "a", "--steps", "1", "--seed", "7",
                        "--out", str(out))
    assert rc == 0 and str(out) in stdout
    assert read_png_params(out)["seed"] == 7 and PIL.Image.open(out).size == (16, 16)


# ---------------------------------------------------------------- weights and images
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_is_a_clear_error(model_dir, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    rc, _, err = run(capsys, "generate", "--model", str(broken), "--prompt", "a", "--steps", "1",
                     "--out", str(tmp_path / "x.png"))
    assert rc == 2
    assert one_error_line(err).startswith(f"error: {broken}: could not read unet/diffusion_pytorch_model.safetensors "
                                          "(corrupt or truncated safetensors file: ")
    with pytest.raises(ValueError, match="could not read unet/diffusion_pytorch_model.safetensors"):
        LatentGenPipeline.from_pretrained(str(broken))


def test_decompression_bomb_init_image_is_refused_from_its_header(model_dir, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    huge_png(bomb, side=20_000)  # 400 MP declared, a few hundred KB on disk
    rc, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a", "--steps", "1",
                     "--init-image", str(bomb), "--out", str(tmp_path / "x.png"))
    assert rc == 2 and f"--init-image {str(bomb)!r}" in one_error_line(err) and "pixel limit" in err
    big = tmp_path / "big.png"
    huge_png(big, side=7_000)  # 49 MP: under Pillow's own limit, over latentgen's
    rc, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a", "--steps", "1",
                     "--init-image", str(big), "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "7000 x 7000 pixels, over the 40,000,000-pixel limit" in one_error_line(err)


def test_init_image_that_is_not_an_image_is_refused(tmp_path, capsys):
    common = ["generate", "--model", str(tmp_path / "no_model"), "--prompt", "a", "--out", str(tmp_path / "x.png")]
    (tmp_path / "text.png").write_text("not an image")
    rc, _, err = run(capsys, *common, "--init-image", str(tmp_path / "text.png"))
    assert rc == 2 and "is not an image Pillow can read" in one_error_line(err)
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    rc, _, err = run(capsys, *common, "--init-image", str(tmp_path / "cut.png"))
    assert rc == 2 and "is not a readable image" in one_error_line(err)
    rc, _, err = run(capsys, *common, "--init-image", str(tmp_path))
    assert rc == 2 and "is a folder: give an image file" in one_error_line(err)
