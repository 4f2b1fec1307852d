"""The command-line convention every trainer shares.

    parser = common.base_parser("Train the VAE", presets=PRESETS)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    args = parser.parse_args(argv)
    cfg = common.train_config(args, checkpoint_every=200)

Flags: --data DIR (repeatable), --out DIR, --model DIR, --preset NAME, --max-steps N,
--batch-size N, --lr X, --seed K, --resume latest, --mixed-precision {no,bf16,fp16},
plus the loop's knobs (--checkpoint-every, --validate-every, --ema-decay, ...).
A flag left unset takes the trainer's default (passed to ``train_config``), then the loop's.
Also here: ``SummaryShuffle``, the text-state augmentation the UNet trainers share (``--shuffle-summary``).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re

import torch

from latentgen.training import TrainConfig


def base_parser(description: str, presets=None, default_preset: str | None = None,
                needs_model: bool = False, needs_data: bool = True) -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix such as --ou or --max-step is an error, never another flag
    p = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", action="append", required=needs_data, metavar="DIR",
                   help="image folder (repeat for several)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoints, logs and the exported model")
    p.add_argument("--model", required=needs_model, metavar="DIR", help="base model folder")
    if presets:
        p.add_argument("--preset", choices=list(presets), default=default_preset or next(iter(presets)))
    g = p.add_argument_group("training loop")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--batch-size", type=int, help="per process")
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--resume", metavar="latest|PATH", help="resume from the latest (or a given) checkpoint")
    g.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    g.add_argument("--grad-accum", type=int)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--lr-schedule", choices=["constant", "linear", "cosine", "wsd"],
                   help="after warm-up: constant (default), or a linear or cosine decay to 0 at --max-steps, "
                        "or wsd (constant, then linear to 0 over the last 20%%) "
                        "(on --resume it follows the new --max-steps)")
    g.add_argument("--checkpoint-every", type=int)
    g.add_argument("--keep-checkpoints", type=int)
    g.add_argument("--validate-every", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--num-workers", type=int)
    g.add_argument("--max-bad-steps", type=int, help="non-finite losses to skip before stopping")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return p


def train_config(args: argparse.Namespace, **defaults) -> TrainConfig:
    """A TrainConfig from parsed flags; flags that were not given fall back to ``defaults``."""
    values = dict(defaults)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return TrainConfig(**values)


def load_text_encoder(te_dir: str, flag: str = "--text-encoder"):
    """``(tokenizer, text encoder)`` of a folder holding ``tokenizer/`` and ``text_encoder/`` (train.clip's
    ``--out`` or a model folder); a folder that lacks them is a clear error naming ``flag``."""
    import os

    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [n for n in ("text_encoder/config.json", "tokenizer") if not os.path.exists(os.path.join(te_dir, n))]
    if missing:
        raise SystemExit(f"error: {flag} {te_dir} has no {', '.join(missing)}: give a folder with text_encoder/ "
                         "and tokenizer/ (train.clip's --out, or a model folder)")
    tok = CLIPTokenizer.from_pretrained(os.path.join(te_dir, "tokenizer"))
    return tok, CLIPTextModel.from_pretrained(os.path.join(te_dir, "text_encoder"), use_safetensors=True)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"is a probability in [0, 1], got {value}")
    return value


def add_shuffle_summary(p: argparse.ArgumentParser) -> None:
    """``--shuffle-summary P`` (``SummaryShuffle``), the same flag in every UNet trainer."""
    p.add_argument("--shuffle-summary", type=_probability, default=0.0, metavar="P",
                   help="with probability P per caption, the text states from its <|endoftext|> on are another "
                        "caption's of the same length in tokens, so the UNet reads each word's own state rather "
                        "than the causal encoder's whole-caption summary (for text encoders trained with "
                        "train.clip --token-loss); 0: off")
    p.add_argument("--shuffle-summary-multi", type=_probability, default=None, metavar="P",
                   help="the shuffle's probability for captions that name two or more shapes (the summary is "
                        "where a causal encoder keeps which colour goes with which shape); default: "
                        "--shuffle-summary's")


def check_shuffle_summary(p: argparse.ArgumentParser, args) -> None:
    """``--shuffle-summary-multi`` sets a probability of the shuffle, so it needs the shuffle on."""
    if args.shuffle_summary_multi is not None and not args.shuffle_summary:
        p.error("--shuffle-summary-multi sets the shuffle's probability for multi-shape captions: "
                "give --shuffle-summary P (> 0) as well")


def shuffle_settings(args) -> dict:
    """The run-config keys of ``--shuffle-summary`` (and ``-multi``), only those that are on, so older runs resume."""
    out = {"shuffle_summary": args.shuffle_summary} if args.shuffle_summary else {}
    if args.shuffle_summary and args.shuffle_summary_multi is not None:
        out["shuffle_summary_multi"] = args.shuffle_summary_multi
    return out


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
    ``train.unet`` and ``train.finetune`` (``--shuffle-summary``).
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
