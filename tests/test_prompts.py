"""Words a model never learned: found from its tokenizer, named by `latentgen generate` on stderr and by
the app's generation result, the image still made; and the command's output free of library warnings."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from transformers import CLIPTokenizer

from latentgen.cli import main as cli
from latentgen.examples import EXAMPLE_PROMPTS
from latentgen.loading import DEFAULT_MODEL_DIR
from latentgen.prompts import unknown_words
from latentgen.ui.generation import Generator, check_request
from latentgen.ui.registry import ModelRegistry
from tests.tiny_models import make_tiny_pipeline, make_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
PARK = "a photo of a dog playing in the park"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("models"))


def test_unknown_words_of_the_tiny_tokenizer():
    tok = make_tiny_tokenizer()
    assert unknown_words(tok, PARK) == ["photo", "dog", "playing", "in", "the", "park"]
    assert unknown_words(tok, "a red circle") == []
    assert unknown_words(tok, "A RED Circle, left of 3 big squares!") == ["squares"]  # case, digits, punctuation
    assert unknown_words(tok, "dog and dog") == ["dog"]
    assert unknown_words(tok, "") == []


def test_unknown_words_of_the_bundled_tokenizer():
    tok = CLIPTokenizer.from_pretrained(os.path.join(DEFAULT_MODEL_DIR, "tokenizer"))
    # dog and park are OpenMoji names (dog face, national park), learned whole; photo is no training word
    assert unknown_words(tok, PARK) == ["photo"]
    assert unknown_words(tok, "a red circle") == []
    assert unknown_words(tok, "a large purple kangaroo at center, naïve") == ["naïve"]
    for prompt in EXAMPLE_PROMPTS:
        assert unknown_words(tok, prompt) == [], prompt


def test_generate_names_unknown_words_on_stderr_and_carries_no_library_warnings(tmp_path):
    """A fresh process, as a user runs it, on a guidance-conditioned student (it loads the most library code):
    stderr holds progress bars and the one warning line, nothing else."""
    student = make_tiny_pipeline(tmp_path, name="tiny-4step", time_cond_proj_dim=8)
    run = subprocess.run([sys.executable, "-m", "latentgen.cli", "generate", "--model", student, "--prompt",
                          "a red dog in the park", "--steps", "1", "--seed", "1", "--sampler", "euler",
                          "--device", "cpu", "--out", str(tmp_path / "dog.png")],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert Image.open(tmp_path / "dog.png").size == (16, 16)  # still drawn
    for noise in ("deprecated", "FutureWarning", "DeprecationWarning", "UserWarning"):
        assert noise not in run.stderr, run.stderr
    lines = [line for line in re.split(r"[\r\n]", run.stderr) if line.strip() and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith("warning: "), run.stderr  # progress bars aside
    assert "'dog', 'in', 'the', 'park'" in lines[0]
    assert "latentgen generate --help" in lines[0] and "README" in lines[0]


def test_generate_says_nothing_of_known_words(model_dir, tmp_path, capsys):
    assert cli(["generate", "--model", model_dir, "--prompt", "a red circle", "--steps", "1",
                "--out", str(tmp_path / "red.png")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_app_names_unknown_words_and_still_makes_the_image(model_dir, tmp_path):
    gen = Generator(ModelRegistry(tmp_path / "models", startup_model=model_dir, bundled_dir=tmp_path / "none"),
                    out_dir=str(tmp_path / "out"))
    model = gen.registry.default_choice()
    res = gen.run(check_request("a photo of a red circle", "", model, "auto", 1, 4.0, 3, None, None))
    assert len(res.paths) == 1 and os.path.isfile(res.paths[0])
    assert res.warning.startswith("The model never learned the word 'photo'") and "example prompts" in res.warning
    assert gen.run(check_request("a red circle", "", model, "auto", 1, 4.0, 3, None, None)).warning == ""
