"""The recipe's presets: how much data, which model sizes, how many steps in each stage.

A :class:`RecipePreset` fixes everything a recipe trains; ``PRESETS`` names the ones ``latentgen train
recipe --preset`` offers. ``DATA_FIELDS`` are the fields that make the data (a change needs a new recipe
folder); ``STEP_FIELDS`` are, per stage, the fields it trains to (a change reopens that stage).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from latentgen.train.distill import GUIDANCE_MAX

STAGES = ("data", "vae", "decoder", "clip", "unet", "clip2", "finetune", "distill", "distill2", "scorer")


@dataclass(frozen=True)
class RecipePreset:
    size: int              # image side of the data
    shapes: int            # shapes images (held-out pairs excluded)
    emoji: int | None      # OpenMoji images (None: all, 0: none)
    vae_preset: str
    vae_steps: int
    vae_batch: int
    clip_preset: str
    clip_steps: int
    clip_batch: int
    unet_preset: str
    unet_steps: int
    unet_batch: int
    unet_lr: float
    teacher_steps: int     # DDIM steps of the teacher the distillation starts from
    student_steps: int     # the last round's step count
    stage1_steps: int
    round_steps: int
    distill_batch: int
    mixed_precision: str = "no"
    emoji_holdout: int = 0  # OpenMoji images held out by group (data/emoji-heldout), to measure the VAE on
    decoder_steps: int = 0  # decoder-only VAE steps after the vae stage (0: no decoder stage)
    decoder_shapes: int = 4000  # shapes images beside all the OpenMoji ones in the decoder stage
    vae_shapes: int = 0  # shapes images in the vae stage beside all the OpenMoji ones (0: every shapes image)
    vae_hflip: bool = False  # the vae stage also trains on every image mirrored (VAETrainConfig.hflip)
    vae_ema_decay: float = 0.0  # EMA of the vae stage's weights, which it exports (0: none)
    clip_lr_schedule: str = "constant"
    unet_lr_schedule: str = "constant"
    distill_lr_schedule: str = "constant"  # restarts in every stage and round
    distill_guidance_max: float = GUIDANCE_MAX  # the largest guidance scale the student learns
    last_round_steps: int = 0  # steps of the last round (0: round_steps, as every other round)
    # the UNet learns colour from a short-trained text encoder, which binds the shape word to the colour;
    # CLIP then trains on from the UNet's text encoder (clip2) and the UNet is fine-tuned on it (finetune)
    clip2_steps: int = 0  # CLIP steps on both towers after the unet stage, from its text encoder (0: no clip2)
    finetune_steps: int = 0  # the UNet fine-tuned in full, on clip2's text encoder if any (0: no finetune stage)
    finetune_lr: float = 2e-4
    # word-level text states: scenes in colours outside the palette, each with every shape
    # (data/shapes-extra, for the text-conditioned stages); CLIP's token-identity loss (token_loss); the UNet
    # trained with shuffled summary states (shuffle_summary, unet and finetune)
    extra_color_shapes: int = 0
    clip_token_loss: float = 0.0
    shuffle_summary: float = 0.0
    finetune_shuffle_multi: float | None = None  # the finetune stage's shuffle_summary_multi (None: its default)
    # scenes of exactly 2 objects (data/shapes-2obj) added to the finetune stage's data, and so to the
    # distillation's: binding weighs more where the teachers fail
    two_object_shapes: int = 0
    # the teacher's CLIP scorer (clip/) trained on with the text tower frozen (freeze_text), which the bundle
    # swaps in: the word-level CLIP's image tower probes shape below target
    scorer_steps: int = 0
    # emoji styles beside OpenMoji, comma-separated ("noto,twemoji"): each a folder data/emoji-<style> of the
    # same names captioned "<name>, <style> style", less the held-out emoji's groups; they join OpenMoji in
    # every stage that trains on emoji
    emoji_styles: str = ""
    # one more halving after the last round (student_steps -> student_steps / 2), from that student as teacher,
    # into <out>/distill2 (the distill stage's students stay as they are); 0: none
    half_round_steps: int = 0

    def __post_init__(self):
        if self.two_object_shapes and not self.finetune_steps:
            raise ValueError("two_object_shapes feeds the finetune stage (and the distillation of its teacher): "
                             "set finetune_steps > 0 as well, or two_object_shapes=0")
        unknown = [s for s in self.styles() if s not in ("noto", "twemoji")]
        if unknown:
            raise ValueError(f"emoji_styles {unknown} unknown: choose among noto, twemoji (OpenMoji is always in)")
        if self.half_round_steps and self.student_steps < 2:
            raise ValueError(f"half_round_steps halves the {self.student_steps}-step student: set student_steps "
                             ">= 2, or half_round_steps=0")
        if self.styles() and self.emoji == 0:
            raise ValueError("emoji_styles draws the names of the OpenMoji set: set emoji to None or a count")

    def styles(self) -> tuple[str, ...]:
        """The emoji styles beside OpenMoji, in order."""
        return tuple(s.strip() for s in self.emoji_styles.split(",") if s.strip())


PRESETS = {
    # a quick look and the CI test: 16 px, tiny models, every stage; minutes on 2 CPU cores
    "tiny": RecipePreset(size=16, shapes=96, emoji=32, vae_preset="tiny", vae_steps=30, vae_batch=16,
                         clip_preset="tiny", clip_steps=30, clip_batch=32, unet_preset="tiny", unet_steps=40,
                         unet_batch=16, unet_lr=1e-3, teacher_steps=8, student_steps=4, stage1_steps=10,
                         round_steps=10, distill_batch=8, emoji_holdout=8, decoder_steps=10, decoder_shapes=32,
                         vae_shapes=64, vae_hflip=True, vae_ema_decay=0.99, clip2_steps=10, finetune_steps=10,
                         extra_color_shapes=16, clip_token_loss=1.0, shuffle_summary=1.0, two_object_shapes=16,
                         scorer_steps=10, half_round_steps=10),
    # the small models trained long: 64 px, shapes + OpenMoji; about 21 h on 2 CPU cores (VAE 2.9, CLIP 1.0,
    # UNet 11.6, distillation 5.3, at quick's step times). fp32: on CPUs without AVX-512 BF16 (AVX2 only) a
    # bf16 matrix product is ~100x slower than fp32 (bench/results/speed.md), so bf16 is for GPUs and CPUs
    # that have it
    "small": RecipePreset(size=64, shapes=20_000, emoji=None, vae_preset="small64", vae_steps=6000,
                          vae_batch=16, clip_preset="small", clip_steps=3000, clip_batch=128,
                          unet_preset="small", unet_steps=30_000, unet_batch=32, unet_lr=2e-4,
                          teacher_steps=64, student_steps=4, stage1_steps=3000, round_steps=1500,
                          distill_batch=32, mixed_precision="no", emoji_holdout=256),
    # the small models on the same data with the step counts cut to a few sittings of 2 CPU cores, and a
    # one-step student; no emoji are held out, so the VAE's OpenMoji PSNR is on seen emoji
    "quick": RecipePreset(size=64, shapes=20_000, emoji=None, vae_preset="small64", vae_steps=1000,
                          vae_batch=16, clip_preset="small", clip_steps=600, clip_batch=128,
                          unet_preset="small", unet_steps=8000, unet_batch=32, unet_lr=4e-4,
                          teacher_steps=16, student_steps=1, stage1_steps=500, round_steps=250,
                          distill_batch=32, mixed_precision="no"),
    # every stage at full length, planned to fit 8 h of 2 CPU cores: VAE 4000 steps on OpenMoji + 4000 shapes
    # (mirrored, EMA: bench/results/vae.md) + decoder 1500; 7500 scenes in five colours outside the palette beside
    # the shapes and OpenMoji for the text-conditioned stages; both CLIP towers 600 steps with the token-identity
    # loss; the UNet 8000 steps on shuffled summaries, then fine-tuned 20 000 more (annealed linearly, EMA 0.999,
    # still shuffled) with 10 000 two-object scenes added; distillation with guidance 1-5, 2000 + 500 + 1000
    # steps, 16 -> 8 -> 4, annealed to 0; then the teacher's CLIP scorer 5000 steps with the text tower frozen.
    # Planned as 6.8 h from shorter runs' step times (minutes: data 2, vae 28, decoder 8, clip 10.5, unet 83,
    # finetune ~185 at 0.55 s a step, distill ~61, scorer ~30); a whole run on 2 CPU cores (Xeon) measured the
    # stages up to finetune at about 3.5 h and the finetune at 0.74 s a step: about 9 h in all. OpenMoji's names are
    # also drawn in the noto and twemoji styles (data/emoji-noto, data/emoji-twemoji), so each name has three images
    # and a style word; a 2-step student is halved from the 4-step one in 1000 more steps (distill2).
    "ship": RecipePreset(size=64, shapes=20_000, emoji=None, vae_preset="small64", vae_steps=4000,
                         vae_batch=16, clip_preset="small", clip_steps=600, clip_batch=128,
                         unet_preset="small", unet_steps=8000, unet_batch=32, unet_lr=4e-4,
                         teacher_steps=16, student_steps=4, stage1_steps=2000, round_steps=500,
                         distill_batch=32, mixed_precision="no", emoji_holdout=256, decoder_steps=1500,
                         distill_lr_schedule="linear", vae_shapes=4000, vae_hflip=True, vae_ema_decay=0.999,
                         distill_guidance_max=5.0, last_round_steps=1000, finetune_steps=20_000,
                         extra_color_shapes=7500, clip_token_loss=1.0, shuffle_summary=1.0,
                         two_object_shapes=10_000, scorer_steps=5000, emoji_styles="noto,twemoji",
                         half_round_steps=1000),
    # the same recipe, larger, for one GPU or several (accelerate launch)
    "base": RecipePreset(size=64, shapes=200_000, emoji=None, vae_preset="small64", vae_steps=40_000,
                         vae_batch=64, clip_preset="base", clip_steps=30_000, clip_batch=512,
                         unet_preset="base", unet_steps=200_000, unet_batch=256, unet_lr=2e-4,
                         teacher_steps=64, student_steps=4, stage1_steps=20_000, round_steps=10_000,
                         distill_batch=128, mixed_precision="bf16", emoji_holdout=256),
}

# the preset fields that make the data (a change needs a new recipe folder)
DATA_FIELDS = ("size", "shapes", "emoji", "emoji_holdout", "extra_color_shapes", "two_object_shapes",
               "emoji_styles")
# which preset fields each stage trains to; raising one reopens the stage
STEP_FIELDS = {"vae": ("vae_steps", "vae_shapes"), "decoder": ("decoder_steps",),
               "clip": ("clip_steps", "clip_lr_schedule", "clip_token_loss"),
               "unet": ("unet_steps", "unet_lr_schedule", "shuffle_summary"),
               "clip2": ("clip2_steps",), "finetune": ("finetune_steps", "finetune_lr", "finetune_shuffle_multi"),
               "distill": ("teacher_steps", "student_steps", "stage1_steps", "round_steps", "distill_lr_schedule",
                           "distill_guidance_max", "last_round_steps"),
               "distill2": ("half_round_steps",), "scorer": ("scorer_steps",)}


def teacher_dir(recipe_dir: str, config: dict) -> str:
    """The teacher a recipe ends with: ``<recipe>/finetune``, or ``<recipe>/unet`` where its preset has no
    finetune stage (``config``: the preset, as ``recipe.json`` holds it)."""
    return os.path.join(recipe_dir, "finetune" if config.get("finetune_steps") else "unet")
