"""CLIP: a byte-level BPE tokenizer learned on our captions, and ``transformers.CLIPModel`` presets.

The tokenizer follows CLIP (Radford et al. 2021, and OpenAI's ``simple_tokenizer.py``): text is
NFC-normalised, whitespace-collapsed and lower-cased, split with CLIP's pattern, mapped to the 256
byte symbols, and merged by byte-pair encoding with a ``</w>`` end-of-word suffix. The vocabulary is
built the CLIP way -- the 256 byte symbols, their ``</w>`` variants, one token per learned merge, then
``<|startoftext|>`` and ``<|endoftext|>`` -- so every string tokenizes (through bytes if need be) and
``CLIPTokenizer.from_pretrained`` reloads it to identical ids. ``<|endoftext|>`` doubles as the pad
token, as in CLIP, and the text tower pools at its first occurrence.

No training code here: the trainer is ``latentgen/train/clip.py``, the loss ``latentgen/contrastive.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, trainers
from tokenizers.models import BPE
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from latentgen.models.presets import get_preset

BOS, EOS, EOW = "<|startoftext|>", "<|endoftext|>", "</w>"
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)  # maps [0, 1] to [-1, 1], the range the data loaders give


@dataclass(frozen=True)
class ClipPreset:
    """A text tower and a vision tower (ViT) joined by a shared embedding space."""

    text_width: int
    text_layers: int
    text_heads: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    projection_dim: int
    image_size: int = 64  # 64 (the project's side) or 32
    vocab_size: int = 4096  # the tokenizer's target size (fewer if the captions hold fewer merges)
    max_length: int = 40  # tokens incl. start/end; the longest 3-object shapes caption needs 25


PRESETS = {
    "tiny": ClipPreset(32, 2, 2, 32, 2, 2, patch_size=8, projection_dim=32, image_size=32, vocab_size=600),
    # small: a 4 x 4 grid of 16 px patches at 64 px (8 px patches learned positions far more slowly in
    # our runs); captions outnumber images (hard negatives), so the text tower is the narrower one.
    # About an hour of one CPU core for the benchmark's run (bench/clip.py).
    "small": ClipPreset(128, 4, 4, 192, 4, 4, patch_size=16, projection_dim=128),
    "base": ClipPreset(512, 8, 8, 512, 8, 8, patch_size=8, projection_dim=512, vocab_size=8192),
}


def get_clip_preset(name: str) -> ClipPreset:
    return get_preset(PRESETS, name, kind="CLIP")


# ---------------------------------------------------------------- tokenizer


def _word_pieces(tokenizer: CLIPTokenizer, text: str) -> list[tuple[str, list[str]]]:
    """(word, its BPE pieces) for every pre-tokenized word of ``text``, CLIP's normalisation applied."""
    backend = tokenizer.backend_tokenizer
    words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
    out = []
    for word, _ in words:
        pieces = [t.value for t in backend.model.tokenize(word)]
        out.append((word, pieces))
    return out


def _clip_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """Give a bare ``tokenizers.Tokenizer`` CLIPTokenizer's normaliser and pre-tokenizer (the exact ones)."""
    reference = CLIPTokenizer().backend_tokenizer
    tokenizer.normalizer = reference.normalizer
    tokenizer.pre_tokenizer = reference.pre_tokenizer
    return tokenizer


def learn_merges(captions: list[str], n_tokens: int) -> list[tuple[str, str]]:
    """BPE merges learned on ``captions`` with CLIP's normalisation, split pattern and ``</w>`` suffix.

    Returns merges (in rank order) that spell at most ``n_tokens`` distinct new tokens.
    """
    bpe = _clip_pipeline(Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=EOW, unk_token=EOS)))
    byte_symbols = list(bytes_to_unicode().values())
    # The trainer counts its alphabet (single symbols, suffixed ones) in its size; give it room for all 512.
    trainer = trainers.BpeTrainer(
        vocab_size=n_tokens + 2 * len(byte_symbols),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=byte_symbols,
        end_of_word_suffix=EOW,
        continuing_subword_prefix="",
    )
    bpe.train_from_iterator(captions, trainer)
    merges, spelled = [], set(byte_symbols) | {s + EOW for s in byte_symbols}
    for a, b in json.loads(bpe.to_str())["model"]["merges"]:
        if a + b not in spelled and len(spelled) - 2 * len(byte_symbols) >= n_tokens:
            break
        merges.append((a, b))
        spelled.add(a + b)
    return merges


def clip_tokenizer(merges: list[tuple[str, str]], max_length: int) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` built as CLIP builds its vocabulary: bytes, bytes + ``</w>``, merges, specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + EOW for s in symbols]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:  # two merges can spell the same token; keep its first id
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges], model_max_length=max_length)
    if len(tok) != len(vocab):
        raise RuntimeError(f"CLIPTokenizer built {len(tok)} tokens from a {len(vocab)}-token vocabulary")
    return tok


def train_tokenizer(
    captions: list[str], vocab_size: int, out_dir: str | os.PathLike | None = None, max_length: int = 40
) -> CLIPTokenizer:
    """Learn a CLIP tokenizer on ``captions``; ``vocab_size`` counts the 512 byte symbols and 2 specials.

    With few distinct words (shapes captions) the merges run out early and the vocabulary is smaller.
    Saved to ``out_dir`` when given; ``CLIPTokenizer.from_pretrained(out_dir)`` reloads it exactly.
    """
    if not captions:
        raise ValueError("train_tokenizer needs at least one caption; the data folders gave none")
    if vocab_size < 514:
        raise ValueError(f"vocab_size={vocab_size} is too small: CLIP's byte symbols alone take 514 ids")
    merges = learn_merges(captions, vocab_size - 514)
    tok = clip_tokenizer(merges, max_length)
    if out_dir is not None:
        tok.save_pretrained(out_dir)
    return tok


def longest_caption(tokenizer: CLIPTokenizer, captions: list[str]) -> int:
    """Length in tokens (with start and end) of the longest caption."""
    return max(len(ids) for ids in tokenizer(list(captions), truncation=False).input_ids)


@dataclass
class UnseenWordReport:
    """Caption words the tokenizer has no whole-word token for: it never learned them as words."""

    n_words: int  # distinct words in the captions
    split: dict[str, list[str]]  # word -> the pieces it is split into
    bytes_only: list[str]  # words that fall back to raw byte symbols (no learned merge applies at all)

    def summary(self, limit: int = 12) -> str:
        if not self.split:
            return f"all {self.n_words} caption words are whole tokens of the tokenizer"
        shown = ", ".join(f"{w} -> {'|'.join(p)}" for w, p in list(self.split.items())[:limit])
        more = f" and {len(self.split) - limit} more" if len(self.split) > limit else ""
        return (
            f"{len(self.split)} of {self.n_words} distinct caption words are new to the tokenizer and are "
            f"split into pieces ({len(self.bytes_only)} into raw bytes): {shown}{more}. Continued "
            f"pretraining gives them meaning only through these pieces."
        )


def unseen_word_report(tokenizer: CLIPTokenizer, captions: list[str]) -> UnseenWordReport:
    """Which caption words the tokenizer splits into several pieces (words it never learned whole)."""
    byte_symbols = set(bytes_to_unicode().values())
    counts: Counter[str] = Counter()
    pieces_of: dict[str, list[str]] = {}
    for caption in captions:
        for word, pieces in _word_pieces(tokenizer, caption):
            if re.fullmatch(r"[^\w]+", word):  # punctuation is not a word
                continue
            counts[word] += 1
            pieces_of[word] = pieces
    split = {w: pieces_of[w] for w, _ in counts.most_common() if len(pieces_of[w]) > 1}
    bytes_only = [w for w, p in split.items() if all(x.removesuffix(EOW) in byte_symbols for x in p)]
    return UnseenWordReport(n_words=len(counts), split=split, bytes_only=bytes_only)


# ---------------------------------------------------------------- model


def build_clip(preset: ClipPreset, tokenizer: CLIPTokenizer) -> CLIPModel:
    """A freshly initialised ``CLIPModel``; vocabulary, length and special ids come from ``tokenizer``."""
    if tokenizer.model_max_length > 1024:
        raise ValueError(
            "the tokenizer has no model_max_length; build it with train_tokenizer(..., max_length=N)"
        )
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.text_width,
        intermediate_size=4 * preset.text_width,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=preset.projection_dim,
    )
    vision = CLIPVisionConfig(
        hidden_size=preset.vision_width,
        intermediate_size=4 * preset.vision_width,
        num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads,
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        projection_dim=preset.projection_dim,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=preset.projection_dim
    )
    return CLIPModel(config)


def image_processor(image_size: int) -> CLIPImageProcessor:
    """Prepares images as training did: resize the short side, centre-crop, scale to [-1, 1]."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )


def preset_from_model(model: CLIPModel) -> ClipPreset:
    """The preset numbers of an existing model (for continued pretraining and model cards)."""
    t, v = model.config.text_config, model.config.vision_config
    return ClipPreset(
        text_width=t.hidden_size,
        text_layers=t.num_hidden_layers,
        text_heads=t.num_attention_heads,
        vision_width=v.hidden_size,
        vision_layers=v.num_hidden_layers,
        vision_heads=v.num_attention_heads,
        patch_size=v.patch_size,
        projection_dim=model.config.projection_dim,
        image_size=v.image_size,
        vocab_size=t.vocab_size,
        max_length=t.max_position_embeddings,
    )


def clip_folder(path: str | os.PathLike) -> str:
    """The ``clip/`` folder of an exported run, accepting the run folder or the ``clip/`` folder itself."""
    path = os.fspath(path)
    for candidate in (os.path.join(path, "clip"), path):
        if os.path.isfile(os.path.join(candidate, "config.json")) and os.path.isfile(
            os.path.join(candidate, "tokenizer_config.json")
        ):
            return candidate
    raise FileNotFoundError(
        f"{path!r} is not a CLIP export: expected {os.path.join(path, 'clip')}/config.json with its "
        f"tokenizer (train one with `latentgen train clip --data DIR --out {path}`)"
    )


def load_clip(path: str | os.PathLike) -> tuple[CLIPModel, CLIPTokenizer, CLIPImageProcessor]:
    """Model, tokenizer and image processor of an exported CLIP (run folder or its ``clip/``)."""
    folder = clip_folder(path)
    model = CLIPModel.from_pretrained(folder)
    tok = CLIPTokenizer.from_pretrained(folder)
    return model, tok, image_processor(model.config.vision_config.image_size)


def save_clip(model: CLIPModel, tokenizer: CLIPTokenizer, out: str | os.PathLike) -> None:
    """Export ``text_encoder/`` and ``tokenizer/`` (diffusers layout) and the whole model in ``clip/``."""
    out = os.fspath(out)
    with torch.no_grad():  # the temperature is clamped in the loss; store the value that was used
        model.logit_scale.clamp_(max=math.log(100.0))
    model.text_model.save_pretrained(os.path.join(out, "text_encoder"))
    tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
    clip_dir = os.path.join(out, "clip")
    model.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    image_processor(model.config.vision_config.image_size).save_pretrained(clip_dir)


__all__ = [
    "PRESETS",
    "ClipPreset",
    "UnseenWordReport",
    "build_clip",
    "clip_folder",
    "get_clip_preset",
    "image_processor",
    "load_clip",
    "longest_caption",
    "preset_from_model",
    "save_clip",
    "train_tokenizer",
    "unseen_word_report",
]
