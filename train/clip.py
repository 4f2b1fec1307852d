"""Contrastive pretraining of the CLIP text and image towers on image folders.

    python -m train.clip --data shapes/ --data openmoji/ --out runs/clip --preset small --max-steps 3000
    python -m train.clip --data my_photos/ --model runs/clip --out runs/clip-mine     # continued pretraining
    python -m train.clip --data shapes/ --model weights/default --freeze-text --out runs/clip-v  # scorer only

From scratch, a CLIP byte-level BPE tokenizer is learned on the training captions first (saved to
``<out>/tokenizer`` at once, so ``--resume latest`` reuses it). With ``--model`` an exported CLIP is
continued: its tokenizer and weights are kept, and the caption words it never learned are listed.
Loss: symmetric InfoNCE with the learned temperature clamped at ln 100 (``latentgen.contrastive``);
shapes captions also get ``--hard-negatives`` altered captions per image (one attribute changed or
two colours swapped), which teaches the text tower which attribute belongs to which object.
``--freeze-text`` trains only the image tower and the two projections: the exported ``text_encoder``
is then the one the run started from, bit for bit, so a UNet trained on it stays valid while the
scorer (``clip/``) improves.
Export: ``<out>/text_encoder`` (``CLIPTextModel``), ``<out>/tokenizer``, and ``<out>/clip`` (the whole
``CLIPModel`` with its tokenizer, image processor config and ``latentgen_config.json``).
"""

from __future__ import annotations

import os
import random
import time

import torch
from torch import nn
from transformers import CLIPTokenizer

from latentgen.contrastive import MAX_LOGIT_SCALE, clip_loss, token_identity_loss
from latentgen.data.folder import ImageCaptionDataset
from latentgen.eval.clip_probe import is_shapes_caption, probe_shapes, retrieval, sample_hard_negatives
from latentgen.models.clip import (
    PRESETS,
    build_clip,
    get_clip_preset,
    image_processor,
    load_clip,
    longest_caption,
    preset_from_model,
    save_clip,
    train_tokenizer,
    unseen_word_report,
)
from latentgen.models.presets import config_to_dict, save_config
from latentgen.training import Trainer
from train import common


def make_step_fn(tokenizer, hard_negatives: int, token_loss: float = 0.0):
    def step_fn(model: nn.Module, batch, ctx) -> dict:
        captions = list(batch["caption"])
        # Hard negatives are drawn from the step's seeded generator: a resumed run draws the same ones.
        rng = random.Random(int(torch.randint(2**62, (1,), generator=ctx.generator, device=ctx.device)))
        positives = set(captions)  # a neighbour's true caption is no hard negative for it
        drawn = [n for c in captions for n in sample_hard_negatives(c, hard_negatives, rng)]
        negatives = [n for n in drawn if n not in positives]
        # Padding to the batch's longest caption gives the same pooled embeddings as padding to the full
        # length (the text tower is causal and pools at the first <|endoftext|>), for less work.
        ids = tokenizer(captions + negatives, padding=True, truncation=True, return_tensors="pt")
        out = model(input_ids=ids.input_ids.to(ctx.device), pixel_values=batch["pixels"])
        b = len(captions)
        text = out.text_embeds  # (B + K, D), normalised
        clip = ctx.accelerator.unwrap_model(model)
        loss = clip_loss(out.image_embeds, text[:b], clip.logit_scale, text[b:] if negatives else None)
        extra = {}
        if token_loss:
            ident = token_identity_loss(out.text_model_output.last_hidden_state,  # (B + K, L, D)
                                        clip.text_model.embeddings.token_embedding.weight,
                                        ids.input_ids.to(ctx.device), ids.attention_mask.to(ctx.device))
            loss = loss + token_loss * ident
            extra["token_loss"] = ident.detach()
        with torch.no_grad():
            sim = out.image_embeds @ text.t()  # (B, B + K)
            acc = (sim.argmax(1) == torch.arange(b, device=sim.device)).float().mean()
        return {"loss": loss, "acc": acc, "scale": clip.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp(),
                "negatives": float(len(negatives)), **extra}

    return step_fn


def make_validate_fn(tokenizer, processor, val_set, count: int):
    n = min(count, len(val_set))
    pixels = torch.stack([val_set[i]["pixels"] for i in range(n)])  # (N, 3, S, S) in [-1, 1]
    captions = [val_set[i]["caption"] for i in range(n)]
    shapes = [i for i, c in enumerate(captions) if is_shapes_caption(c)]

    def validate_fn(trainer, model, step) -> dict:
        x = pixels.to(next(model.parameters()).device)
        out = retrieval(model, tokenizer, processor, x, captions)
        metrics = {k: v for k, v in out.items() if k != "n"}
        if shapes:
            probe = probe_shapes(model, tokenizer, processor, x[shapes], [captions[i] for i in shapes])
            metrics.update({f"probe_{k}": v for k, v in probe.items() if not k.startswith(("n_", "all_"))})
        if trainer.is_main:
            print(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    return validate_fn


def parse_args(argv=None):
    p = common.base_parser("Contrastive pretraining of the CLIP text encoder (and its image tower)",
                           presets=PRESETS, default_preset="small")
    g = p.add_argument_group("CLIP")
    g.add_argument("--vocab-size", type=int, help="tokenizer size (None: the preset's)")
    g.add_argument("--max-length", type=int, help="tokens per caption incl. start/end (None: the preset's)")
    g.add_argument("--hard-negatives", type=int, default=3, metavar="K",
                   help="altered captions per shapes caption (one attribute changed or colours swapped, of K "
                        "distinct kinds); 0: off")
    g.add_argument("--val-data", action="append", metavar="DIR", help="held-out image folder for validation")
    g.add_argument("--freeze-text", action="store_true",
                   help="train only the image tower and the projections (needs --model): text_encoder/ stays "
                        "the base model's, bit for bit, so a UNet trained on it stays valid")
    g.add_argument("--token-loss", type=float, default=0.0, metavar="W",
                   help="weight of a per-token objective: each token's final state must name its own token "
                        "(latentgen.contrastive.token_identity_loss), so a word's own state carries the word "
                        "for the UNet to read; 0: off (CLIP's loss alone)")
    g.add_argument("--val-count", type=int, default=500, help="held-out pairs used by validation")
    return p.parse_args(argv)


def load_or_build(args, base, captions: list[str], resuming: bool):
    """(model, tokenizer) from ``--model`` (``base``), a resumed run's tokenizer, or a new tokenizer."""
    if base is not None:
        model, tok, _ = base
        print(f"continuing from {args.model} (its preset and tokenizer; --preset is ignored)")
        print(unseen_word_report(tok, captions).summary())
        return model, tok
    preset = get_clip_preset(args.preset)
    tok_dir = os.path.join(args.out, "tokenizer")
    if resuming and os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        tok = CLIPTokenizer.from_pretrained(tok_dir)
    else:
        t0 = time.time()
        vocab = args.vocab_size or preset.vocab_size
        # Every process learns the same tokenizer (it is deterministic); only the first one writes it.
        first = int(os.environ.get("RANK", "0")) == 0
        tok = train_tokenizer(captions, vocab, out_dir=tok_dir if first else None,
                              max_length=args.max_length or preset.max_length)
        if first:
            print(f"tokenizer: {len(tok)} tokens from {len(set(captions))} distinct captions "
                  f"in {time.time() - t0:.1f}s -> {tok_dir}")
    longest = longest_caption(tok, captions)
    if longest > tok.model_max_length:
        print(f"warning: the longest caption has {longest} tokens; captions are cut at "
              f"{tok.model_max_length} (raise --max-length)")
    return build_clip(preset, tok), tok


def main(argv=None) -> dict:
    """Train (or continue) a CLIP and export it to ``<out>/``; returns a summary dict."""
    args = parse_args(argv)
    if args.token_loss < 0:
        raise ValueError(f"--token-loss must be >= 0, got {args.token_loss}")
    if args.hard_negatives < 0:
        raise ValueError(f"--hard-negatives must be >= 0, got {args.hard_negatives}")
    cfg = common.train_config(args, out=args.out, max_steps=3000, batch_size=128, lr=1e-3, warmup_steps=200,
                              weight_decay=0.1, adam_betas=(0.9, 0.98), ema_decay=0.999, checkpoint_every=500,
                              validate_every=0)
    if args.freeze_text and not args.model:
        raise ValueError("--freeze-text keeps a trained text tower: name it with --model DIR "
                         "(a new text tower would stay random)")
    base = load_clip(args.model) if args.model else None  # a clear error if it is no CLIP export
    preset = preset_from_model(base[0]) if base else get_clip_preset(args.preset)
    data = ImageCaptionDataset(args.data, size=preset.image_size)  # a clear error for unusable folders
    torch.manual_seed(cfg.seed)
    model, tok = load_or_build(args, base, data.captions, resuming=bool(cfg.resume))
    preset = preset_from_model(model)  # the numbers actually built (vocabulary, --max-length)
    if args.freeze_text:  # the Trainer optimises only what requires a gradient
        model.text_model.requires_grad_(False)
    validate_fn = None
    if args.val_data:
        val_set = ImageCaptionDataset(args.val_data, size=preset.image_size)
        validate_fn = make_validate_fn(tok, image_processor(preset.image_size), val_set, args.val_count)
    run_config = {
        "trainer": "clip", "preset": None if args.model else args.preset,
        "clip_config": config_to_dict(preset), "vocab": len(tok), "max_length": tok.model_max_length,
        "data": [os.path.abspath(d) for d in args.data],
        "model": os.path.abspath(args.model) if args.model else None, "hard_negatives": args.hard_negatives,
        "freeze_text": args.freeze_text,
        **({"token_loss": args.token_loss} if args.token_loss else {}),  # runs from before the flag resume
    }
    t0 = time.time()
    trainer = Trainer(cfg, model, data, make_step_fn(tok, args.hard_negatives, args.token_loss),
                      validate_fn=validate_fn, run_config=run_config)
    model = trainer.fit()
    seconds = time.time() - t0
    summary = {"finished": trainer.finished, "out": args.out, "steps": trainer.step, "train_seconds": seconds,
               "vocab": len(tok)}
    if trainer.is_main and trainer.finished:
        save_clip(model, tok, args.out)
        save_config(preset, os.path.join(args.out, "clip"))
        print(f"exported CLIP to {args.out}/{{clip,text_encoder,tokenizer}} after {trainer.step} steps "
              f"({seconds / 60:.1f} min)")
    trainer.accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
