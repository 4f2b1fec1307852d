"""Contrastive pretraining of the CLIP text and image towers on image folders.

    latentgen train clip --data shapes/ --data openmoji/ --out runs/clip --preset small --max-steps 3000
    latentgen train clip --data my_photos/ --model runs/clip --out runs/clip-mine     # continued pretraining
    latentgen train clip --data shapes/ --model weights/default --freeze-text --out runs/clip-v  # scorer only

From scratch, a CLIP byte-level BPE tokenizer is learned on the training captions first (saved to
``<out>/tokenizer`` at once, so ``resume="latest"`` reuses it). With ``model`` an exported CLIP is
continued: its tokenizer and weights are kept, and the caption words it never learned are listed.
Loss: symmetric InfoNCE with the learned temperature clamped at ln 100 (``latentgen.contrastive``) over
the global batch (on several processes every image is ranked against the captions of all of them);
shapes captions also get ``hard_negatives`` altered captions per image (one attribute changed or
two colours swapped), which teaches the text tower which attribute belongs to which object.
``freeze_text`` trains only the image tower and the two projections: the exported ``text_encoder``
is then the one the run started from, bit for bit, so a UNet trained on it stays valid while the
scorer (``clip/``) improves.
Export (:func:`latentgen.export.export_clip`): ``<out>/text_encoder`` (``CLIPTextModel``),
``<out>/tokenizer``, ``<out>/clip`` (the whole ``CLIPModel`` with its tokenizer, image processor
config and ``latentgen_config.json``) and a card in ``<out>``.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import torch
from torch import nn

from latentgen.contrastive import MAX_LOGIT_SCALE, clip_loss, gather_rows, token_identity_loss
from latentgen.eval.clip_probe import is_shapes_caption, probe_shapes, retrieval, sample_hard_negatives
from latentgen.models.clip import PRESETS
from latentgen.train.common import image_folders
from latentgen.train.config import RunConfig, TrainerError, command_for, main_for, opt


@dataclass(frozen=True)
class CLIPTrainConfig(RunConfig):
    TRAINER = "clip"
    REQUIRED = ("data",)
    MAY_CHANGE = ("val_data", "val_count")

    max_steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float | None = 0.999
    validate_every: int = 0
    preset: str = opt("small", "CLIP size (ignored with --model)", choices=tuple(PRESETS))
    vocab_size: int | None = opt(None, "tokenizer size; default: the preset's")
    max_length: int | None = opt(None, "tokens per caption incl. start/end; default: the preset's")
    hard_negatives: int = opt(3, "altered captions per shapes caption (one attribute changed or colours "
                              "swapped, of K distinct kinds); 0: off", metavar="K")
    val_data: tuple[str, ...] = opt((), "held-out image folder for validation", metavar="DIR")
    freeze_text: bool = opt(False, "train only the image tower and the projections (needs --model): "
                            "text_encoder/ stays the base model's, bit for bit, so a UNet trained on it "
                            "stays valid")
    token_loss: float = opt(0.0, "weight of a per-token objective: each token's final state must name its "
                            "own token (latentgen.contrastive.token_identity_loss), so a word's own state "
                            "carries the word for the UNet to read; 0: off (CLIP's loss alone)", metavar="W")
    val_count: int = opt(500, "held-out pairs used by validation")

    def __post_init__(self):
        super().__post_init__()
        if self.token_loss < 0:
            raise ValueError(f"--token-loss must be >= 0, got {self.token_loss}")
        if self.hard_negatives < 0:
            raise ValueError(f"--hard-negatives must be >= 0, got {self.hard_negatives}")
        if self.freeze_text and not self.model:
            raise ValueError("--freeze-text keeps a trained text tower: name it with --model DIR "
                             "(a new text tower would stay random)")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is unknown: choose one of {', '.join(PRESETS)}")


Config = CLIPTrainConfig

WEIGHT_DECAY, ADAM_BETAS = 0.1, (0.9, 0.98)  # CLIP's (Radford et al. 2021, App. F)


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
        # every process's images, captions and hard negatives: the loss of the global batch
        images, texts, hard = (gather_rows(t.float()) for t in (out.image_embeds, text[:b], text[b:]))
        loss = clip_loss(images, texts, clip.logit_scale, hard if len(hard) else None)
        extra = {}
        if token_loss:
            ident = token_identity_loss(out.text_model_output.last_hidden_state,  # (B + K, L, D)
                                        clip.text_model.embeddings.token_embedding.weight,
                                        ids.input_ids.to(ctx.device), ids.attention_mask.to(ctx.device))
            loss = loss + token_loss * ident
            extra["token_loss"] = ident.detach()
        with torch.no_grad():
            sim = out.image_embeds @ text.t()  # (B, B + K): this process's share
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


def load_base(cfg: CLIPTrainConfig):
    """``(model, tokenizer, processor)`` of ``cfg.model``, or None without one."""
    from latentgen.models.clip import load_clip

    if not cfg.model:
        return None
    try:
        return load_clip(cfg.model)
    except FileNotFoundError as e:
        raise TrainerError(f"--model {e}") from e


def load_or_build(cfg: CLIPTrainConfig, base, captions: list[str]):
    """(model, tokenizer) from ``model`` (``base``), a resumed run's tokenizer, or a new tokenizer."""
    from transformers import CLIPTokenizer

    from latentgen.models.clip import (
        build_clip,
        get_clip_preset,
        longest_caption,
        train_tokenizer,
        unseen_word_report,
    )

    if base is not None:
        model, tok, _ = base
        print(f"continuing from {cfg.model} (its preset and tokenizer; --preset is ignored)")
        print(unseen_word_report(tok, captions).summary())
        return model, tok
    preset = get_clip_preset(cfg.preset)
    tok_dir = os.path.join(cfg.out, "tokenizer")
    if cfg.resume and os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        tok = CLIPTokenizer.from_pretrained(tok_dir)
    else:
        t0 = time.time()
        # Every process learns the same tokenizer (it is deterministic); only the first one writes it.
        first = int(os.environ.get("RANK", "0")) == 0
        vocab = cfg.vocab_size or preset.vocab_size
        tok = train_tokenizer(captions, vocab, out_dir=tok_dir if first else None,
                              max_length=cfg.max_length or preset.max_length)
        if first:
            print(f"tokenizer: {len(tok)} tokens from {len(set(captions))} distinct captions "
                  f"in {time.time() - t0:.1f}s -> {tok_dir}")
    longest = longest_caption(tok, captions)
    if longest > tok.model_max_length:
        print(f"warning: the longest caption has {longest} tokens; captions are cut at "
              f"{tok.model_max_length} (raise --max-length)")
    return build_clip(preset, tok), tok


def run(cfg: CLIPTrainConfig) -> dict:
    """Train (or continue) a CLIP and export it to ``<out>/``; returns a summary dict."""
    from latentgen.models.clip import get_clip_preset, image_processor, preset_from_model
    from latentgen.models.presets import config_to_dict
    from latentgen.training import Trainer

    base = load_base(cfg)  # a clear error if it is no CLIP export
    preset = preset_from_model(base[0]) if base else get_clip_preset(cfg.preset)
    data = image_folders(cfg.data, preset.image_size)
    torch.manual_seed(cfg.seed)
    model, tok = load_or_build(cfg, base, data.captions)
    preset = preset_from_model(model)  # the numbers actually built (vocabulary, max_length)
    if cfg.freeze_text:  # the Trainer optimises only what requires a gradient
        model.text_model.requires_grad_(False)
    validate_fn = None
    if cfg.val_data:
        val_set = image_folders(cfg.val_data, preset.image_size, "--val-data")
        validate_fn = make_validate_fn(tok, image_processor(preset.image_size), val_set, cfg.val_count)
    record = cfg.record(clip_config=config_to_dict(preset), examples=len(data))
    t0 = time.time()
    trainer = Trainer(cfg.loop(weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS), model, data,
                      make_step_fn(tok, cfg.hard_negatives, cfg.token_loss), validate_fn=validate_fn,
                      run_config=record, may_change=cfg.may_change())
    model = trainer.fit()
    seconds = time.time() - t0
    summary = {"finished": trainer.finished, "out": cfg.out, "steps": trainer.step, "train_seconds": seconds,
               "vocab": len(tok)}
    if trainer.is_main and trainer.finished:
        export(cfg, model, tok, preset, len(data), record)
        print(f"exported CLIP to {cfg.out}/{{clip,text_encoder,tokenizer}} after {trainer.step} steps "
              f"({seconds / 60:.1f} min)")
    trainer.accelerator.wait_for_everyone()
    return summary


def export(cfg: CLIPTrainConfig, model, tok, preset, examples: int, record: dict) -> str:
    """``<out>/{text_encoder,tokenizer,clip}`` and the card."""
    from latentgen.export import export_clip

    about = (f"A CLIP (transformers `CLIPModel`): a text tower of {preset.text_layers} layers x "
             f"{preset.text_width} and a vision tower of {preset.vision_layers} layers x "
             f"{preset.vision_width} at {preset.image_size} px, a {len(tok)}-token vocabulary, trained "
             f"contrastively on {examples} image-caption pairs. `text_encoder/` and `tokenizer/` condition "
             "a UNet; `clip/` scores images against prompts.")
    body = [about]
    if cfg.freeze_text:
        body.append("The text tower was frozen: `text_encoder/` is the base model's, bit for bit.")
    card = {"front": {}, "title": "latentgen CLIP", "body": body, "command": command_for(cfg),
            "record": record}
    return export_clip(cfg.out, model, tok, preset, card=card)


def main(argv=None) -> dict:
    return main_for(run, CLIPTrainConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
