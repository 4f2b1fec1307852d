"""The command-line convention every trainer shares.

    parser = common.base_parser("Train the VAE", presets=PRESETS)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    args = parser.parse_args(argv)
    cfg = common.train_config(args, checkpoint_every=200)

Flags: --data DIR (repeatable), --out DIR, --model DIR, --preset NAME, --max-steps N,
--batch-size N, --lr X, --seed K, --resume latest, --mixed-precision {no,bf16,fp16},
plus the loop's knobs (--checkpoint-every, --validate-every, --ema-decay, ...).
A flag left unset takes the trainer's default (passed to ``train_config``), then the loop's.
"""

from __future__ import annotations

import argparse
import dataclasses

from latentgen.training import TrainConfig


def base_parser(description: str, presets=None, default_preset: str | None = None,
                needs_model: bool = False, needs_data: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
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


class ContextRecolourer:
    """Conditioning augmentation that leaves colour only in each colour word's own text state.

    The causal text encoder writes a colour into every state after its colour word, so a UNet
    can learn to read colour and shape together from the shape word's state; for a pair it never
    saw (*green circle*) that state is new and the UNet falls back on a pair it knows. Here, with
    probability ``p`` per caption, every state but the colour words' own is taken from the same
    caption with its colours drawn again (``recolour_caption``: uniformly, never to a held-out pair),
    so colour can only be read where it is named and the shape's state must mean the shape in any
    colour's context. At ``p = 1`` the context says nothing of the colour.
    """

    def __init__(self, tokenizer, text_encoder, p: float, seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the recolour probability must lie in [0, 1] (got {p})")
        self.tokenizer, self.text_encoder, self.p, self.seed = tokenizer, text_encoder, p, seed

    def _ids(self, texts: list[str]):
        n = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        return self.tokenizer(texts, padding="max_length", max_length=n, truncation=True,
                              return_tensors="pt").input_ids  # (B, L)

    def __call__(self, captions: list[str], emb, step: int):
        """``emb`` (B, L, D), the states of ``captions``, with the swapped contexts mixed in."""
        import random

        import torch

        from latentgen.data.shapes import recolour_caption
        from latentgen.pipeline import encode_prompts

        rng = random.Random(self.seed * 1_000_003 + step)
        picked = [(i, s) for i, c in enumerate(captions)
                  if c and rng.random() < self.p and (s := recolour_caption(c, rng)) is not None]
        if not picked:
            return emb
        rows, texts = [i for i, _ in picked], [s for _, s in picked]
        orig, swapped = self._ids([captions[i] for i in rows]), self._ids(texts)  # (b, L) each
        keep = orig != swapped  # (b, L): the redrawn colour words' own tokens, the only ones that differ
        aligned = (orig != self.tokenizer.pad_token_id).sum(1) == (swapped != self.tokenizer.pad_token_id).sum(1)
        if not aligned.any():  # a colour word of another length in tokens shifts the rest: left as it was
            return emb
        with torch.no_grad():
            new = encode_prompts(self.tokenizer, self.text_encoder, texts, emb.device).to(emb.dtype)  # (b, L, D)
        mixed = torch.where(keep.to(emb.device)[..., None], emb[rows], new)  # (b, L, D)
        out = emb.clone()
        sel = [r for r, ok in zip(rows, aligned.tolist()) if ok]
        out[sel] = mixed[aligned.to(emb.device)]
        return out
