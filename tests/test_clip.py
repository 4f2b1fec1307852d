"""CLIP: tokenizer, model presets, contrastive loss, trainer, export, probing helpers (fast, seeded)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from latentgen.contrastive import MAX_LOGIT_SCALE, clip_loss, token_identity_loss
from latentgen.data.shapes import canonical_caption, sample_scene, write_shapes_folder
from latentgen.eval.clip_probe import (
    _recall,
    attribute_edits,
    clip_score,
    is_shapes_caption,
    probe_shapes,
    retrieval,
    sample_hard_negatives,
)
from latentgen.models.clip import PRESETS, build_clip, longest_caption, train_tokenizer, unseen_word_report

UNSEEN = ["A Zebra-QUIXOTIC bicycle!", "ümlaut café 🙂 naïve", "x y z 42 1984", "  tabs\tand\nnew   lines  "]


def shapes_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [canonical_caption(sample_scene(rng), rng) for _ in range(n)]


@pytest.fixture(scope="module")
def captions():
    return shapes_captions(400)


@pytest.fixture(scope="module")
def tok_dir(captions, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(captions + ["a grinning face with big eyes"], vocab_size=600, out_dir=out, max_length=40)
    return out


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_reloads_to_identical_ids(captions, tok_dir):
    from transformers import AutoTokenizer, CLIPTokenizer

    tok = train_tokenizer(captions + ["a grinning face with big eyes"], vocab_size=600, max_length=40)
    again = CLIPTokenizer.from_pretrained(tok_dir)
    auto = AutoTokenizer.from_pretrained(tok_dir)
    assert type(auto).__name__ == "CLIPTokenizer"
    assert len(tok) == len(again) == len(auto) > 514  # 512 byte symbols + merges + 2 specials
    assert again.get_vocab() == tok.get_vocab()
    assert again.model_max_length == 40  # saved, not the 1e30 default
    for text in captions[:50] + UNSEEN:
        ids = tok(text).input_ids
        assert again(text).input_ids == ids == auto(text).input_ids


def test_tokenizer_is_clip_shaped(captions, tok_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tok_dir)
    vocab = tok.get_vocab()
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert vocab["<|startoftext|>"] == len(tok) - 2 and vocab["<|endoftext|>"] == len(tok) - 1
    assert "a</w>" in vocab and "circle</w>" in vocab and "red</w>" in vocab  # learned whole words with </w>
    pieces = tok.convert_ids_to_tokens(tok("A RED circle").input_ids)
    assert pieces == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]  # lower-cased
    # the training captions all fit, each word is one token, and there is no unknown token anywhere
    assert longest_caption(tok, captions) <= tok.model_max_length
    for c in captions:
        ids = tok(c).input_ids
        assert len(ids) == len(c.split()) + 2
        assert tok.unk_token_id not in ids[1:-1]


def test_unseen_words_fall_back_to_bytes(tok_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tok_dir)
    for text in UNSEEN:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1:-1]  # unk is <|endoftext|>: it must not appear inside
    for text in ["ümlaut café 🙂", "a quixotic zebra bicycle", "x y z 4 2"]:  # bytes decode back to the text
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert len(tok("zebra").input_ids) > 3  # an unseen word is split, not mapped to an unknown token
    padded = tok(["a red circle", "zebra"], padding="max_length", truncation=True).input_ids
    assert all(len(p) == 40 for p in padded) and padded[0][-1] == tok.pad_token_id


def test_tokenizer_training_is_deterministic(captions):
    a = train_tokenizer(captions, vocab_size=560)
    b = train_tokenizer(list(captions), vocab_size=560)
    assert a.get_vocab() == b.get_vocab() and len(a) == 560  # every process of a run builds the same one


def test_unseen_word_report(tok_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tok_dir)
    report = unseen_word_report(tok, ["a red corgi at top", "a corgi", "a blue square"])
    assert report.n_words == 7  # a, red, corgi, at, top, blue, square
    assert list(report.split) == ["corgi"] and len(report.split["corgi"]) > 1
    assert "corgi" in report.summary()
    assert "whole tokens" in unseen_word_report(tok, ["a red circle"]).summary()


def test_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="caption"):
        train_tokenizer([], vocab_size=600)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["a red circle"], vocab_size=100)


# ---------------------------------------------------------------- model


def test_presets_match_tokenizer(tok_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tok_dir)
    model = build_clip(PRESETS["tiny"], tok)
    t = model.config.text_config
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert t.vocab_size == len(tok) and t.max_position_embeddings == tok.model_max_length
    ids = tok(["a red circle", "a small blue square at top left"], padding="max_length", return_tensors="pt")
    out = model.get_text_features(input_ids=ids.input_ids).pooler_output
    assert out.shape == (2, PRESETS["tiny"].projection_dim)
    img = model.get_image_features(pixel_values=torch.zeros(2, 3, 32, 32)).pooler_output
    assert img.shape == (2, PRESETS["tiny"].projection_dim)
    assert {"tiny", "small", "base"} <= set(PRESETS)


# ---------------------------------------------------------------- loss


def test_loss_is_log_batch_for_random_embeddings():
    g = torch.Generator().manual_seed(0)
    b = 64
    image, text = torch.randn(b, 512, generator=g), torch.randn(b, 512, generator=g)
    loss = clip_loss(image, text, torch.tensor(0.0))  # scale 1: logits are cosines, near 0
    assert abs(loss.item() - math.log(b)) < 0.05


def test_loss_is_zero_for_aligned_embeddings():
    b = 16
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
    image, hard = q[:b], q[b:]  # orthonormal rows
    loss = clip_loss(image, 3 * image, torch.tensor(MAX_LOGIT_SCALE))
    assert loss.item() < 1e-6  # log(1 + 15 exp(-100))
    # extra captions orthogonal to every image change nothing
    assert clip_loss(image, image, torch.tensor(MAX_LOGIT_SCALE), hard).item() < 1e-6
    confusing = image + 0.01 * hard  # a hard negative almost equal to the true caption costs about log 2
    assert clip_loss(image, image, torch.tensor(MAX_LOGIT_SCALE), confusing).item() > 0.2


def test_logit_scale_is_clamped_at_ln_100():
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    big = torch.tensor(10.0, requires_grad=True)
    loss = clip_loss(image, text, big)
    loss.backward()
    assert torch.isclose(loss, clip_loss(image, text, torch.tensor(MAX_LOGIT_SCALE)))
    assert big.grad.item() == 0.0  # no gradient past the clamp
    small = torch.tensor(1.0, requires_grad=True)
    clip_loss(image, text, small).backward()
    assert small.grad.item() != 0.0


def test_token_identity_loss_reads_each_state_against_the_token_embeddings():
    emb = torch.eye(6)  # (V, D): six orthogonal tokens
    ids = torch.tensor([[0, 3, 5, 1], [2, 4, 1, 1]])  # (B, L); the second row is padded after 2 tokens
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    own = 5 * emb[ids]  # (B, L, D): each state points at its own token (the norm does not matter)
    assert token_identity_loss(own, emb, ids, mask, scale=30.0).item() < 1e-6
    # states that all point at one token score log-likelihoods far from zero; padding positions are not scored
    wrong = emb[torch.zeros_like(ids)]
    assert token_identity_loss(wrong, emb, ids, mask, scale=30.0).item() > 10
    padded_wrong = own.clone()
    padded_wrong[1, 2:] = emb[0]
    assert token_identity_loss(padded_wrong, emb, ids, mask, scale=30.0).item() < 1e-6
    chance = token_identity_loss(torch.zeros(2, 4, 6), emb, ids, mask)  # zero states: uniform over V
    assert abs(chance.item() - math.log(6)) < 1e-5


# ---------------------------------------------------------------- probing helpers


def test_attribute_edits():
    caption = "a large red circle at top left and a small orange triangle at bottom"
    e = attribute_edits(caption)
    assert len(e["color"]) == 2 * 4 and len(e["shape"]) == 2 * 2 and len(e["size"]) == 2
    assert len(e["position"]) == 2 * 7 and e["swap"] == ["a large orange circle at top left and a small red triangle at bottom"]
    assert "a large red circle at top left and a small red triangle at bottom" not in e["color"]  # colours stay distinct
    assert "a large orange circle at top left and a small orange triangle at bottom" not in e["color"]
    assert "a large red circle at top and a small orange triangle at bottom" in e["position"]  # "top left" is one word
    assert all(" a orange" not in t and "an large" not in t for ts in e.values() for t in ts)  # articles fixed
    assert "an orange circle" in " ".join(attribute_edits("a red circle at top")["color"])
    assert all(caption not in ts for ts in e.values())
    assert not is_shapes_caption("a grinning face") and sample_hard_negatives("a grinning face", 3, random.Random(0)) == []
    negs = sample_hard_negatives(caption, 5, random.Random(0))
    assert len(negs) == 5 and all(n != caption for n in negs)


def test_recall_counts_identical_captions():
    sim = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.0], [0.5, 0.4, 0.0]])
    own = torch.eye(3, dtype=torch.bool)
    assert _recall(sim, own, 1) == pytest.approx(0.0)
    assert _recall(sim, own, 2) == pytest.approx(2 / 3)
    same = own.clone()
    same[0, 1] = same[1, 0] = True  # captions 0 and 1 are the same text
    assert _recall(sim, same, 1) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- trainer, export, continued pretraining


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    write_shapes_folder(root / "shapes", 16, size=32, seed=0)
    write_shapes_folder(root / "heldout", 24, size=32, seed=1)
    from latentgen.train.clip import CLIPTrainConfig, run

    # 16 pairs, all in every batch: the loss starts near log 16 and falls as the pairs are learned
    cfg = CLIPTrainConfig(data=(str(root / "shapes"),), out=str(root / "run"), preset="tiny", max_steps=40,
                          batch_size=16, lr=3e-3, warmup_steps=0, log_every=5, progress=False,
                          val_data=(str(root / "heldout"),), seed=0, hard_negatives=0)
    summary = run(cfg)
    return root, summary


def test_tiny_trains_and_loss_falls(trained):
    root, summary = trained
    assert summary["steps"] == 40
    rows = [json.loads(line) for line in (root / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5
    assert any("val/t2i_r1" in r and "val/probe_swap" in r for r in rows)  # validation ran retrieval and probing


def test_step_uses_hard_negatives_on_shapes_captions(tok_dir, captions):
    from types import SimpleNamespace

    from transformers import CLIPTokenizer

    from latentgen.train.clip import make_step_fn

    tok = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = build_clip(PRESETS["tiny"], tok)
    ctx = SimpleNamespace(device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                          accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    batch = {"pixels": torch.rand(4, 3, 32, 32) * 2 - 1, "caption": captions[:3] + ["a grinning face"]}
    out = make_step_fn(tok, hard_negatives=2)(model, batch, ctx)
    assert out["negatives"] == 6.0  # two per shapes caption, none for the other one
    out["loss"].backward()
    assert model.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0
    plain = make_step_fn(tok, hard_negatives=0)(model, batch, ctx)
    assert plain["negatives"] == 0.0 and math.isfinite(plain["loss"].item()) and "token_loss" not in plain
    with_tokens = make_step_fn(tok, hard_negatives=0, token_loss=0.5)(model, batch, ctx)
    assert with_tokens["token_loss"].item() > 1.0  # an untrained tower does not name its tokens
    assert with_tokens["loss"].item() == pytest.approx(plain["loss"].item() + 0.5 * with_tokens["token_loss"].item(),
                                                       rel=1e-5)


def test_export_loads_with_transformers(trained):
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel, CLIPTextModel, CLIPTokenizer

    from latentgen.data.folder import ImageCaptionDataset

    root, _ = trained
    out = root / "run"
    model = CLIPModel.from_pretrained(out / "clip")
    text = CLIPTextModel.from_pretrained(out / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    assert CLIPTokenizer.from_pretrained(out / "clip").get_vocab() == tok.get_vocab()
    assert model.logit_scale.item() <= MAX_LOGIT_SCALE + 1e-6
    ids = tok(["a small red circle at top"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        a = text(input_ids=ids).last_hidden_state
        b = model.text_model(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b)
    # the image processor prepares a training image exactly as the training data loader did
    processor = AutoImageProcessor.from_pretrained(out / "clip")
    data = ImageCaptionDataset([str(root / "shapes")], size=32)
    x = processor(images=[Image.open(data.items[0].path)], return_tensors="pt").pixel_values
    assert torch.allclose(x[0], data[0]["pixels"], atol=1e-5)
    card = (out / "README.md").read_text()  # the card gives the command that made the model and its config
    assert "latentgen train clip --out" in card and '"trainer": "clip"' in card


def test_eval_functions_on_the_export(trained):
    from latentgen.models.clip import load_clip

    root, _ = trained
    model, tok, processor = load_clip(root / "run")
    rows = [json.loads(line) for line in (root / "heldout" / "metadata.jsonl").read_text().splitlines()]
    from PIL import Image

    images = [Image.open(root / "heldout" / r["file_name"]) for r in rows]
    captions = [r["text"] for r in rows]
    r = retrieval(model, tok, processor, images, captions)
    assert set(r) == {"t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "n"} and r["n"] == 24
    assert all(0 <= r[k] <= 1 for k in r if k != "n") and r["t2i_r5"] >= r["t2i_r1"]
    p = probe_shapes(model, tok, processor, images, captions)
    assert all(0 <= p[k] <= 1 for k in ("color", "shape", "size", "position", "swap"))
    assert p["n_size"] == sum(len(json.loads(json.dumps(row["objects"]))) for row in rows)  # one flip per object
    s = clip_score(model, processor, tok, images[:3], captions[:3])
    assert s.shape == (3,) and (s >= 0).all() and (s <= 100).all()


def test_continued_pretraining_from_export(trained, tmp_path, capsys):
    from PIL import Image

    from latentgen.train.clip import CLIPTrainConfig, run

    root, _ = trained
    mine = tmp_path / "mine"
    mine.mkdir()
    for i, (colour, word) in enumerate([((200, 30, 30), "a corgi"), ((30, 30, 200), "a blue zebra"),
                                        ((30, 200, 30), "a green corgi")] * 4):
        Image.new("RGB", (48, 48), colour).save(mine / f"{i}.png")
        (mine / f"{i}.txt").write_text(word)
    out = tmp_path / "cont"
    summary = run(CLIPTrainConfig(data=(str(mine),), model=str(root / "run"), out=str(out), max_steps=3,
                                  batch_size=4, progress=False))
    assert summary["steps"] == 3
    printed = capsys.readouterr().out
    assert "corgi" in printed and "zebra" in printed  # the unseen-word report
    from transformers import CLIPModel, CLIPTokenizer

    assert CLIPTokenizer.from_pretrained(out / "tokenizer").get_vocab() == \
        CLIPTokenizer.from_pretrained(root / "run" / "tokenizer").get_vocab()
    assert CLIPModel.from_pretrained(out / "clip").config.vision_config.image_size == 32


def test_freeze_text_keeps_the_text_encoder_bit_for_bit(trained, tmp_path):
    from safetensors.torch import load_file

    from latentgen.train.clip import CLIPTrainConfig, run

    root, _ = trained
    out = tmp_path / "frozen"
    summary = run(CLIPTrainConfig(data=(str(root / "shapes"),), model=str(root / "run"), out=str(out),
                                  freeze_text=True, max_steps=3, batch_size=8, lr=1e-2, warmup_steps=0,
                                  progress=False))
    assert summary["finished"] and summary["steps"] == 3
    before = load_file(root / "run" / "text_encoder" / "model.safetensors")
    after = load_file(out / "text_encoder" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    old = load_file(root / "run" / "clip" / "model.safetensors")
    new = load_file(out / "clip" / "model.safetensors")
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert any(k.startswith("vision_model.") for k in changed) and "text_projection.weight" in changed
    assert not any(k.startswith("text_model.") for k in changed)


def test_freeze_text_needs_a_base_model(tmp_path):
    from latentgen.train.clip import CLIPTrainConfig

    with pytest.raises(ValueError, match="--freeze-text.*--model"):
        CLIPTrainConfig(data=(str(tmp_path / "d"),), out=str(tmp_path / "o"), freeze_text=True)


def test_bad_model_folder_is_a_clear_error(tmp_path, capsys):
    from latentgen.train import clip as train_clip
    from latentgen.train.config import TrainerError

    write_shapes_folder(tmp_path / "d", 4, size=32, seed=0)
    cfg = train_clip.Config(data=(str(tmp_path / "d"),), model=str(tmp_path), out=str(tmp_path / "o"))
    with pytest.raises(TrainerError, match="not a CLIP export"):
        train_clip.run(cfg)
    with pytest.raises(SystemExit):  # the command line says it in one line, without a traceback
        train_clip.main(["--data", str(tmp_path / "d"), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "not a CLIP export" in capsys.readouterr().err


def test_flags_give_the_config():
    """Every flag of the CLIP trainer, and the trainer's own defaults for the loop's knobs."""
    from latentgen.train.clip import CLIPTrainConfig
    from latentgen.train.config import parse_config

    cfg = parse_config(CLIPTrainConfig, "", [
        "--data", "a", "--out", "o", "--model", "m", "--preset", "tiny", "--vocab-size", "700",
        "--max-length", "30", "--hard-negatives", "0", "--val-data", "v", "--val-data", "w", "--freeze-text",
        "--token-loss", "0.5", "--val-count", "7", "--lr-schedule", "linear"])
    assert cfg == CLIPTrainConfig(data=("a",), out="o", model="m", preset="tiny", vocab_size=700,
                                  max_length=30, hard_negatives=0, val_data=("v", "w"), freeze_text=True,
                                  token_loss=0.5, val_count=7, lr_schedule="linear")
    d = parse_config(CLIPTrainConfig, "", ["--data", "a", "--out", "o"])
    assert (d.preset, d.vocab_size, d.max_length, d.hard_negatives, d.token_loss, d.val_count) == \
        ("small", None, None, 3, 0.0, 500)
    assert (d.max_steps, d.batch_size, d.lr, d.warmup_steps, d.ema_decay, d.validate_every) == \
        (3000, 128, 1e-3, 200, 0.999, 0)
    for bad in ({"token_loss": -1.0}, {"hard_negatives": -1}):
        with pytest.raises(ValueError, match="must be >= 0"):
            CLIPTrainConfig(data=("a",), out="o", **bad)
