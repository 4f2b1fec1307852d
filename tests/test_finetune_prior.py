"""Prior preservation's prompts: the base model folder's prompts.txt, a file given, or the folder's captions."""

import pytest

from latentgen.export import KNOWN_PROMPTS_FILE, write_known_prompts
from latentgen.train.config import TrainerError
from latentgen.train.prior import known_prompts, prior_source

CAPTIONS = ["a large teal circle at center", "a small teal square at top"]


def model(tmp_path):
    return str(tmp_path / "model")


def test_write_known_prompts_samples_distinct_captions_and_is_seeded(tmp_path):
    caps = [f"caption {i % 50}" for i in range(500)] + ["", "  "]
    write_known_prompts(str(tmp_path), caps, n=20)
    first = (tmp_path / KNOWN_PROMPTS_FILE).read_text().splitlines()
    assert len(first) == len(set(first)) == 20 and set(first) <= {f"caption {i}" for i in range(50)}
    write_known_prompts(str(tmp_path), list(reversed(caps)), n=20)
    assert (tmp_path / KNOWN_PROMPTS_FILE).read_text().splitlines() == first  # same set, same sample
    write_known_prompts(str(tmp_path), caps, n=1000)
    assert len((tmp_path / KNOWN_PROMPTS_FILE).read_text().splitlines()) == 50  # all there are


def test_prior_prompts_come_from_the_model_folder_then_a_given_file_then_the_captions(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    # no prompts.txt: the captions without their new words (and their pairs)
    got = prior_source(model(tmp_path), None, CAPTIONS, ["teal"])
    assert got[0] == "a large circle at center" and all("teal" not in p for p in got)
    assert "has no prompts.txt" in capsys.readouterr().out
    # the model folder's prompts.txt: the base model's own prompts, alternating with the captions that lost a word
    (tmp_path / "model" / KNOWN_PROMPTS_FILE).write_text("a large red circle at top\n\nrocket\n")
    got = prior_source(model(tmp_path), None, CAPTIONS, ["teal"])
    assert got[:4] == ["a large red circle at top", "a large circle at center", "rocket",
                       "a large circle at center and a small square at top"]
    assert "2 prompts it was trained on" in capsys.readouterr().out
    # no new words: a caption kept whole is what the folder teaches, never a prior prompt
    assert prior_source(model(tmp_path), None, ["a large red star at center"], []) == ["a large red circle at top", "rocket"]
    # --prior-prompts wins
    given = tmp_path / "mine.txt"
    given.write_text("a small blue square at left\n")
    assert prior_source(model(tmp_path), str(given), CAPTIONS, []) == ["a small blue square at left"]
    assert known_prompts(str(tmp_path / "model"), str(given))[1] == str(given)


def test_captions_of_only_new_words_give_an_unconditional_prior_the_folder_reader_keeps(tmp_path, capsys):
    from PIL import Image

    from latentgen.data.folder import ImageCaptionDataset, NoUsableImagesError

    (tmp_path / "model").mkdir()
    assert prior_source(model(tmp_path), None, ["noto style", "cat face, noto style"],
                        ["noto", "style", "cat", "face"]) == [""]
    assert "with no prompt" in capsys.readouterr().out
    prior = tmp_path / "prior"
    prior.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(prior / "prior-0000.png")
    (prior / "prior-0000.txt").write_text("")
    with pytest.raises(NoUsableImagesError, match="empty caption"):  # a user's folder: a blank caption is a skip
        ImageCaptionDataset([str(prior)], size=8)
    assert ImageCaptionDataset([str(prior)], size=8, empty_captions=True)[0]["caption"] == ""


def test_bad_prior_prompt_files_are_named(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(TrainerError, match="no such file"):
        prior_source(model(tmp_path), str(tmp_path / "missing.txt"), CAPTIONS, [])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(TrainerError, match="holds no prompts"):
        prior_source(model(tmp_path), str(empty), CAPTIONS, [])
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(TrainerError, match="prior prompts"):
        prior_source(model(tmp_path), str(binary), CAPTIONS, [])


def test_the_prompts_command_writes_a_model_folders_prompts_from_its_data(tmp_path, capsys):
    import json

    from latentgen.train.prompts import main

    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    rows = [{"file_name": f"{i}.png", "text": f"a large red circle at top {i % 3}"} for i in range(6)]
    for row in rows:
        Image.new("RGB", (8, 8), "white").save(data / row["file_name"])
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(SystemExit):
        main(["--model", str(model), "--data", str(data)])  # not a model folder
    assert "not a model folder" in capsys.readouterr().err
    (model / "model_index.json").write_text("{}")
    main(["--model", str(model), "--data", str(data)])
    assert sorted((model / KNOWN_PROMPTS_FILE).read_text().splitlines()) == [
        f"a large red circle at top {i}" for i in range(3)]
    with pytest.raises(SystemExit):
        main(["--model", str(model), "--data", str(tmp_path / "nowhere")])
    assert "nowhere" in capsys.readouterr().err
