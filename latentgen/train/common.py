"""What several trainers share: opening image folders and loading a text encoder with errors that name
the flag, and ``SummaryShuffle``, the text-state augmentation of the UNet trainers (``shuffle_summary``)."""

from __future__ import annotations

import argparse
import random
import re

import torch

from latentgen.train.config import TrainerError


def image_folders(folders, size: int, flag: str = "--data", **kw):
    """The :class:`~latentgen.data.folder.ImageCaptionDataset` of ``folders`` (``kw``: its options); a
    missing folder or one without usable images is a :class:`TrainerError` naming ``flag``."""
    from latentgen.data.folder import ImageCaptionDataset

    try:
        return ImageCaptionDataset(list(folders), size=size, **kw)
    except (OSError, ValueError) as e:
        raise TrainerError(f"{flag}: {e}") from e


def load_text_encoder(te_dir: str, flag: str = "--text-encoder"):
    """``(tokenizer, text encoder)`` of a folder holding ``tokenizer/`` and ``text_encoder/`` (train.clip's
    ``--out`` or a model folder); a folder that lacks them is a clear error naming ``flag``."""
    import os

    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [n for n in ("text_encoder/config.json", "tokenizer") if not os.path.exists(os.path.join(te_dir, n))]
    if missing:
        raise TrainerError(f"{flag} {te_dir} has no {', '.join(missing)}: give a folder with text_encoder/ "
                         "and tokenizer/ (train.clip's --out, or a model folder)")
    tok = CLIPTokenizer.from_pretrained(os.path.join(te_dir, "tokenizer"))
    return tok, CLIPTextModel.from_pretrained(os.path.join(te_dir, "text_encoder"), use_safetensors=True)


def probability(text: str) -> float:
    """An argparse converter for a value in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"is a probability in [0, 1], got {value}")
    return value


def shapes_named(caption: str) -> int:
    """How many shape words (``circle``, ``square``, ``triangle``, ``shape``, ...) a caption holds."""
    from latentgen.data.shapes import SHAPES

    nouns = set(SHAPES) | {"shape", "object", "thing"}
    return sum(w in nouns for w in re.findall(r"[a-z]+", caption.lower()))


class SummaryShuffle:
    """Conditioning augmentation: a caption's summary states come from another caption.

    A causal text encoder's states from the first ``<|endoftext|>`` on (the end token and the padding) sum
    up the whole caption, and a UNet trained on them reads colour and shape together from there -- for a
    pair it never saw (*green circle*) that summary is new and it falls back on a pair it knows. With
    probability ``p`` per caption those states are taken from another caption with as many tokens (so the
    word states stay where they are), drawn uniformly, and the UNet has to read each word where it is
    named. Needs a text encoder whose word states carry their words (``train.clip --token-loss``); used by
    ``latentgen.train.unet`` and ``latentgen.train.finetune`` (``shuffle_summary``).
    ``p_multi`` (default ``p``) is the probability for captions naming two or more shapes (``shapes_named``):
    0 spares them: their summary stays their own.
    The empty caption (classifier-free guidance's) is left alone.
    """

    def __init__(self, tokenizer, captions: list[str], states: torch.Tensor, p: float, seed: int = 0,
                 p_multi: float | None = None):
        p_multi = p if p_multi is None else p_multi
        for name, value in (("p", p), ("p_multi", p_multi)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"the shuffle probability {name} must lie in [0, 1] (got {value})")
        lengths = [len(ids) for ids in tokenizer(captions, truncation=True).input_ids]  # incl. <bos>, <eos>
        self.end = torch.tensor(lengths) - 1  # (N,): the first <|endoftext|>'s position
        groups: dict[int, list[int]] = {}
        for i, (c, n) in enumerate(zip(captions, lengths)):
            if c:
                groups.setdefault(n, []).append(i)
        self.donors = {i: g for g in groups.values() if len(g) > 1 for i in g}  # caption id -> same-length ids
        self.p = [p_multi if shapes_named(c) > 1 else p for c in captions]  # (N,): each caption's probability
        self.states, self.seed = states, seed  # states (N, L, D), indexed like ``captions``

    def __call__(self, ids: torch.Tensor, emb: torch.Tensor, step: int) -> torch.Tensor:
        """``emb`` (B, L, D), the states of caption ids ``ids`` (B,), with other captions' summaries."""
        rng = random.Random(self.seed * 1_000_003 + step)  # a resumed run draws the same donors
        out = emb
        for row, i in enumerate(ids.tolist()):
            group = self.donors.get(i)
            if group is None or rng.random() >= self.p[i]:
                continue
            j = i
            while j == i:
                j = rng.choice(group)
            if out is emb:
                out = emb.clone()
            e = int(self.end[i])
            out[row, e:] = self.states[j, e:].to(emb.device, emb.dtype)  # (L - e, D)
        return out
