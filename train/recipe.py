"""From an empty folder to a finished teacher and 4-step student, stage by stage, resumable.

    python -m train.recipe --out runs/recipe --preset tiny     # a few minutes on 2 CPU cores
    python -m train.recipe --out runs/recipe --preset small    # the bundled model (hours on 2 CPU cores)
    accelerate launch -m train.recipe --out runs/recipe --preset base   # GPU(s)

Stages: data (shapes and OpenMoji, the held-out pairs excluded from both) -> vae -> decoder (the VAE's
decoder trained on alone, its encoder and latents kept; presets with ``decoder_steps`` only) -> clip ->
unet -> clip2 (presets with ``clip2_steps``: CLIP's two towers trained on from the UNet's text encoder) ->
finetune (presets with ``finetune_steps``: the UNet fine-tuned in full, on clip2's text encoder where there is one)
-> distill (guided, then progressive halving to 4 steps). Presets with ``extra_color_shapes`` add scenes in colours
outside the palette (``data/shapes-extra``) to the text-conditioned stages; ``clip_token_loss`` and
``shuffle_summary`` pass ``--token-loss`` to CLIP and ``--shuffle-summary`` to the unet and finetune stages.
Each stage runs its own trainer (``train/*.py``) with ``--resume latest``; a stage whose result is complete is skipped, so a
killed recipe (or one stopped for the night) continues where it was with the same command.
Time spent per stage is added up across sittings in ``<out>/recipe.json`` and printed at the end:
wall-clock seconds, and the process's CPU seconds (user + system, all threads), which do not count the
time another job on the machine took.
A preset whose step counts were raised since a stage finished reopens that stage (it resumes
from its last checkpoint and trains on to the new count); the stages after it, trained on the
old result, are moved aside to ``<stage>.before-<time>`` and run again.
The teacher ends in ``<out>/finetune`` (``<out>/unet`` without a finetune stage) and the student in
``<out>/distill/final``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields

from latentgen.fsutil import atomic_write_text
from train.distill import GUIDANCE_MAX

STAGES = ("data", "vae", "decoder", "clip", "unet", "clip2", "finetune", "distill", "scorer")


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
    vae_hflip: bool = False  # the vae stage also trains on every image mirrored (train.vae --hflip)
    vae_ema_decay: float = 0.0  # EMA of the vae stage's weights, which it exports (0: none)
    clip_lr_schedule: str = "constant"
    unet_lr_schedule: str = "constant"
    distill_lr_schedule: str = "constant"  # restarts in every stage and round
    distill_guidance_max: float = GUIDANCE_MAX  # the largest guidance scale the student learns (--guidance-max)
    last_round_steps: int = 0  # steps of the last round (0: round_steps, as every other round)
    # v5's order (README, "Held-out pairs and the text encoder"): the UNet learns colour from a short-trained text
    # encoder, which binds the shape word to the colour; CLIP then trains on and the UNet is fine-tuned on it
    clip2_steps: int = 0  # CLIP steps on both towers after the unet stage, from its text encoder (0: no clip2)
    finetune_steps: int = 0  # the UNet fine-tuned in full, on clip2's text encoder if any (0: no finetune stage)
    finetune_lr: float = 2e-4
    # word-level text states: scenes in colours outside the palette,
    # each with every shape (data/shapes-extra, for the text-conditioned stages); CLIP's token-identity loss
    # (train.clip --token-loss); the UNet trained with shuffled summary states (--shuffle-summary, unet and finetune)
    extra_color_shapes: int = 0
    clip_token_loss: float = 0.0
    shuffle_summary: float = 0.0
    finetune_shuffle_multi: float | None = None  # the finetune stage's --shuffle-summary-multi (None: not passed)
    # scenes of exactly 2 objects (data/shapes-2obj) added to the finetune stage's data, and so to the
    # distillation's: binding weighs more where the teachers fail
    two_object_shapes: int = 0
    # the teacher's CLIP scorer (clip/) trained on with the text tower frozen (train.clip --freeze-text), which
    # train.bundle swaps in: the word-level CLIP's image tower probes shape below target
    scorer_steps: int = 0

    def __post_init__(self):
        if self.two_object_shapes and not self.finetune_steps:
            raise ValueError("two_object_shapes feeds the finetune stage (and the distillation of its teacher): "
                             "set finetune_steps > 0 as well, or two_object_shapes=0")


PRESETS = {
    # a quick look and the CI test: 16 px, tiny models, minutes
    "tiny": RecipePreset(size=16, shapes=96, emoji=32, vae_preset="tiny", vae_steps=30, vae_batch=16,
                         clip_preset="tiny", clip_steps=30, clip_batch=32, unet_preset="tiny", unet_steps=40,
                         unet_batch=16, unet_lr=1e-3, teacher_steps=8, student_steps=4, stage1_steps=10,
                         round_steps=10, distill_batch=8, emoji_holdout=8, decoder_steps=10, decoder_shapes=32,
                         vae_shapes=64, vae_hflip=True, vae_ema_decay=0.99, clip2_steps=10, finetune_steps=10,
                         extra_color_shapes=16, clip_token_loss=1.0, shuffle_summary=1.0, two_object_shapes=16,
                         scorer_steps=10),
    # the bundled model's models trained longer: 64 px, shapes + OpenMoji; about 21 h on 2 CPU cores
    # (VAE 2.9, CLIP 1.0, UNet 11.6, distillation 5.3, at the quick run's step times). fp32: on CPUs without
    # AVX-512 BF16 (this project's AMD EPYC machines: AVX2 only) a bf16 matrix product is ~100x
    # slower than fp32 (bench/results/speed.md), so bf16 is for GPUs and CPUs that have it
    "small": RecipePreset(size=64, shapes=20_000, emoji=None, vae_preset="small64", vae_steps=6000,
                          vae_batch=16, clip_preset="small", clip_steps=3000, clip_batch=128,
                          unet_preset="small", unet_steps=30_000, unet_batch=32, unet_lr=2e-4,
                          teacher_steps=64, student_steps=4, stage1_steps=3000, round_steps=1500,
                          distill_batch=32, mixed_precision="no", emoji_holdout=256),
    # the bundled model as trained so far: the `small` models on the same data, with the step
    # counts cut to fit a few sittings of 2 CPU cores (a stopgap until `small` has been run whole);
    # it holds no emoji out (it was trained before the recipe could), so its OpenMoji PSNR is on seen emoji
    "quick": RecipePreset(size=64, shapes=20_000, emoji=None, vae_preset="small64", vae_steps=1000,
                          vae_batch=16, clip_preset="small", clip_steps=600, clip_batch=128,
                          unet_preset="small", unet_steps=8000, unet_batch=32, unet_lr=4e-4,
                          teacher_steps=16, student_steps=1, stage1_steps=500, round_steps=250,
                          distill_batch=32, mixed_precision="no"),
    # the shipped preset, one planned run within 8 h of 2 CPU cores: VAE 4000 steps on OpenMoji + 4000 shapes
    # (mirrored, EMA: bench/results/vae.md) + decoder 1500; 7500 scenes in five colours outside the palette beside
    # the shapes and OpenMoji for the text-conditioned stages; both CLIP towers 600 steps with the token-identity
    # loss; the UNet 8000 steps on shuffled summaries, then fine-tuned 20 000 more (annealed linearly, EMA 0.999,
    # still shuffled) with 10 000 two-object scenes added; distillation as student v7's: guidance 1-5, 2000 + 500 +
    # 1000 steps, 16 -> 8 -> 4, annealed to 0; then the teacher's CLIP scorer 5000 steps with the text tower frozen.
    # About 6.8 h at the measured step times (data 2, vae 28, decoder 8, clip 10.5, unet 83, finetune ~185 at
    # 0.55 s a step, distill ~61, scorer ~30).
    # Bundled model v8 is this path, run as the preset with finetune_steps=2000 and no two-object scenes (runs/ship33:
    # held-out 100%, 1 object 100%, 2 objects 74.2%, n 120) whose teacher was fine-tuned on in four more annealed
    # segments, 2000 + 4000 without the two-object scenes and 4000 + 8000 with them (20 000 steps in all: held-out
    # 100%, 1 object 100%, 2 objects 93.3% n 120 / 97.0% n 300), then distilled with these settings, and its scorer
    # trained 2000 + 3000 steps (shape probing 85.4 -> 96.4%; the preset's scorer stage is one 5000-step run). The preset's
    # single 20 000-step fine-tune with the two-object scenes throughout is planned from that chain and not yet run
    # as one.
    "ship": RecipePreset(size=64, shapes=20_000, emoji=None, vae_preset="small64", vae_steps=4000,
                         vae_batch=16, clip_preset="small", clip_steps=600, clip_batch=128,
                         unet_preset="small", unet_steps=8000, unet_batch=32, unet_lr=4e-4,
                         teacher_steps=16, student_steps=4, stage1_steps=2000, round_steps=500,
                         distill_batch=32, mixed_precision="no", emoji_holdout=256, decoder_steps=1500,
                         distill_lr_schedule="linear", vae_shapes=4000, vae_hflip=True, vae_ema_decay=0.999,
                         distill_guidance_max=5.0, last_round_steps=1000, finetune_steps=20_000,
                         extra_color_shapes=7500, clip_token_loss=1.0, shuffle_summary=1.0,
                         two_object_shapes=10_000, scorer_steps=5000),
    # the same recipe, larger, for one GPU or several (accelerate launch)
    "base": RecipePreset(size=64, shapes=200_000, emoji=None, vae_preset="small64", vae_steps=40_000,
                         vae_batch=64, clip_preset="base", clip_steps=30_000, clip_batch=512,
                         unet_preset="base", unet_steps=200_000, unet_batch=256, unet_lr=2e-4,
                         teacher_steps=64, student_steps=4, stage1_steps=20_000, round_steps=10_000,
                         distill_batch=128, mixed_precision="bf16", emoji_holdout=256),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="recipe folder (data, every stage's run, the final models)")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    p.add_argument("--include-heldout", action="store_true",
                   help="also train on the held-out pairs (purple square, orange triangle, green circle): the shapes "
                        "scenes that draw them and OpenMoji's green circle and purple square emoji")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------- stages
def _data_dirs(out: str, pr: RecipePreset, extra: bool = False, two_objects: bool = False) -> list[str]:
    """The data stage's folders: shapes, (with ``extra``, the text-conditioned stages) the extra colours, OpenMoji,
    (with ``two_objects``, the finetune stage and the distillation of its teacher) the 2-object scenes."""
    dirs = [os.path.join(out, "data", "shapes")]
    if extra and pr.extra_color_shapes:
        dirs.append(os.path.join(out, "data", "shapes-extra"))
    if pr.emoji != 0:
        dirs.append(os.path.join(out, "data", "emoji"))
    if two_objects and pr.two_object_shapes:
        dirs.append(os.path.join(out, "data", "shapes-2obj"))
    return dirs


def _refuse_heldout_captions(folder: str) -> None:
    """Stop before training on a folder (written by an older recipe) whose captions name a held-out pair."""
    from latentgen.data.shapes import names_heldout_pair

    with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
        bad = [row["text"] for row in map(json.loads, f) if names_heldout_pair(row["text"])]
    if bad:
        raise SystemExit(f"{folder} has {len(bad)} caption(s) naming a held-out pair (e.g. {bad[0]!r}), which this "
                         f"recipe leaves out: delete the folder so the data stage writes it again without them, "
                         f"or pass --include-heldout to train on them")


def stage_data(out, pr, args):
    from latentgen.data.emoji import split_emoji_folder, write_emoji_folder
    from latentgen.data.shapes import write_extra_colors_folder, write_shapes_folder

    shapes, *emoji = _data_dirs(out, pr)
    if not os.path.isfile(os.path.join(shapes, "metadata.jsonl")):
        write_shapes_folder(shapes + ".tmp", n=pr.shapes, size=pr.size, seed=args.seed,
                            include_heldout=args.include_heldout, paraphrase_prob=0.3)
        os.replace(shapes + ".tmp", shapes)
    if pr.extra_color_shapes:
        extra = os.path.join(out, "data", "shapes-extra")
        if not os.path.isfile(os.path.join(extra, "metadata.jsonl")):
            write_extra_colors_folder(extra + ".tmp", n=pr.extra_color_shapes, size=pr.size, seed=args.seed)
            os.replace(extra + ".tmp", extra)
    two = os.path.join(out, "data", "shapes-2obj")  # its own seed (the recipe seed + 2)
    if pr.two_object_shapes and not os.path.isfile(os.path.join(two, "metadata.jsonl")):
        write_shapes_folder(two + ".tmp", n=pr.two_object_shapes, size=pr.size, seed=args.seed + 2,
                            include_heldout=args.include_heldout, paraphrase_prob=0.3, n_objects=2)
        os.replace(two + ".tmp", two)
    # "excluded": from the shapes scenes and OpenMoji both (recipes before 2026-12-05 wrote no such key and kept
    # OpenMoji's green circle and purple square emoji); model cards say which
    result = {"folders": _data_dirs(out, pr, extra=True, two_objects=True),
              "heldout_pairs": "included" if args.include_heldout else "excluded"}
    if not emoji:
        return result
    train, held = emoji[0], emoji[0] + "-heldout"
    if not os.path.isfile(os.path.join(train, "metadata.jsonl")):
        every = train + "-all" if pr.emoji_holdout else train
        if not os.path.isfile(os.path.join(every, "metadata.jsonl")):
            write_emoji_folder(every + ".tmp", size=pr.size, limit=pr.emoji, include_heldout=args.include_heldout)
            os.replace(every + ".tmp", every)
        if pr.emoji_holdout:  # the held-out folder first: data/emoji existing means the split is whole
            split_emoji_folder(every, train + ".tmp", held, pr.emoji_holdout, seed=args.seed)
            os.replace(train + ".tmp", train)
    if not args.include_heldout:
        for folder in (shapes, train, *([held] if pr.emoji_holdout else []), *([two] if pr.two_object_shapes else [])):
            _refuse_heldout_captions(folder)
    if pr.emoji_holdout:
        with open(os.path.join(held, "metadata.jsonl"), encoding="utf-8") as f:
            result.update(emoji_heldout=held, n_emoji_heldout=sum(1 for _ in f))
    return result


def _common(out_dir, data, steps, batch, seed, mp, no_progress, preset=None):
    argv = ["--out", out_dir, "--max-steps", str(steps), "--batch-size", str(batch), "--seed", str(seed),
            "--resume", "latest", "--mixed-precision", mp]
    for d in data:
        argv += ["--data", d]
    if preset:
        argv += ["--preset", preset]
    if no_progress:
        argv.append("--no-progress")
    return argv


def stage_vae(out, pr, args):
    """The codec on the OpenMoji images and ``vae_shapes`` shapes ones (0: all); validated on the held-out
    OpenMoji where the preset keeps some."""
    from train import vae

    data = _data_dirs(out, pr)
    if pr.vae_shapes:  # emoji are the hard images: a shapes subset keeps them a large share of the batches
        data[0] = _shapes_subset(out, pr.vae_shapes)
    argv = _common(os.path.join(out, "vae"), data, pr.vae_steps, pr.vae_batch, args.seed, "no", args.no_progress,
                   pr.vae_preset)
    if pr.vae_hflip:
        argv.append("--hflip")
    if pr.vae_ema_decay:
        argv += ["--ema-decay", str(pr.vae_ema_decay)]
    if len(data) > 1 and pr.emoji_holdout:  # the data stage wrote it
        argv += ["--val-data", os.path.join(out, "data", "emoji-heldout")]
    return vae.main(argv)


def _link_or_copy(src: str, dst: str):
    """A hard link of the file ``src`` at ``dst`` (a copy where links fail: another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _head_folder(src: str, dst: str, n: int) -> str:
    """``dst``: the first ``n`` images of the folder ``src`` (hard links, a copy if links fail)."""
    if os.path.isfile(os.path.join(dst, "metadata.jsonl")):
        return dst
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(src, "metadata.jsonl"), encoding="utf-8") as f:
        rows = [line for _, line in zip(range(n), f)]
    for line in rows:
        name = json.loads(line)["file_name"]
        _link_or_copy(os.path.join(src, name), os.path.join(tmp, name))
    with open(os.path.join(tmp, "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(rows)
    os.replace(tmp, dst)
    return dst


def _shapes_subset(out: str, n: int) -> str:
    """``data/shapes-N``: the first ``n`` shapes images, one folder for every stage that asks for ``n``."""
    return _head_folder(os.path.join(out, "data", "shapes"), os.path.join(out, "data", f"shapes-{n}"), n)


def _codec(out: str, pr: RecipePreset) -> str:
    """The VAE run the UNet stage trains on (and exports with the teacher): the decoder stage's where
    the preset has one."""
    return os.path.join(out, "decoder" if pr.decoder_steps else "vae")


def stage_decoder(out, pr, args):
    """Decoder-only training of the vae stage's codec (train.vae --decoder-only) on all the OpenMoji images
    and ``decoder_shapes`` shapes ones; validated on the held-out OpenMoji where the preset keeps some."""
    if not pr.decoder_steps:
        return {"skipped": True}
    from train import vae

    _, *emoji = _data_dirs(out, pr)
    data = [*emoji, _shapes_subset(out, pr.decoder_shapes)]
    argv = _common(os.path.join(out, "decoder"), data, pr.decoder_steps, pr.vae_batch, args.seed, "no",
                   args.no_progress)
    argv += ["--model", os.path.join(out, "vae"), "--decoder-only", "--ema-decay", "0.999",
             "--lr-schedule", "linear"]
    if emoji and pr.emoji_holdout:  # the data stage wrote it
        argv += ["--val-data", os.path.join(out, "data", "emoji-heldout")]
    return vae.main(argv)


def stage_clip(out, pr, args):
    from train import clip

    argv = _common(os.path.join(out, "clip"), _data_dirs(out, pr, extra=True), pr.clip_steps, pr.clip_batch,
                   args.seed, pr.mixed_precision, args.no_progress, pr.clip_preset)
    return clip.main(argv + ["--lr-schedule", pr.clip_lr_schedule] + _token_loss(pr))


def _token_loss(pr: RecipePreset) -> list[str]:
    return ["--token-loss", str(pr.clip_token_loss)] if pr.clip_token_loss else []


def _shuffle(pr: RecipePreset) -> list[str]:
    return ["--shuffle-summary", str(pr.shuffle_summary)] if pr.shuffle_summary else []


def stage_unet(out, pr, args):
    from train import unet

    argv = _common(os.path.join(out, "unet"), _data_dirs(out, pr, extra=True), pr.unet_steps, pr.unet_batch,
                   args.seed, pr.mixed_precision, args.no_progress, pr.unet_preset)
    argv += ["--vae", _codec(out, pr), "--text-encoder", os.path.join(out, "clip"),
             "--size", str(pr.size), "--lr", str(pr.unet_lr), "--lr-schedule", pr.unet_lr_schedule]
    return unet.main(argv + _shuffle(pr))


def _warmup(steps: int) -> int:
    return min(100, steps // 10)


def stage_clip2(out, pr, args):
    """Both CLIP towers trained on from the unet stage's text encoder (v5's step 3)."""
    if not pr.clip2_steps:
        return {"skipped": True}
    from train import clip

    argv = _common(os.path.join(out, "clip2"), _data_dirs(out, pr, extra=True), pr.clip2_steps, pr.clip_batch,
                   args.seed, pr.mixed_precision, args.no_progress)
    return clip.main(argv + ["--model", os.path.join(out, "unet"), "--lr", "5e-4",
                             "--warmup-steps", str(_warmup(pr.clip2_steps))] + _token_loss(pr))


def stage_finetune(out, pr, args):
    """The unet stage's UNet fine-tuned in full (on clip2's text encoder where the preset has a clip2 stage, v5's
    step 4; else on its own) with the learning rate annealed and EMA: the teacher."""
    if not pr.finetune_steps:
        return {"skipped": True}
    from train import finetune

    argv = _common(os.path.join(out, "finetune"), _data_dirs(out, pr, extra=True, two_objects=True), pr.finetune_steps,
                   pr.unet_batch, args.seed, pr.mixed_precision, args.no_progress)
    argv += ["--model", os.path.join(out, "unet"), "--lora-rank", "0",
             "--lr", str(pr.finetune_lr), "--warmup-steps", str(_warmup(pr.finetune_steps)),
             "--lr-schedule", "linear", "--ema-decay", "0.999",
             "--tune-decoder", "off", "--prior", "off"]  # the model's own data: nothing new to decode or preserve
    if pr.clip2_steps:
        argv += ["--text-encoder", os.path.join(out, "clip2")]
    multi = ([] if not pr.shuffle_summary or pr.finetune_shuffle_multi is None
             else ["--shuffle-summary-multi", str(pr.finetune_shuffle_multi)])
    return finetune.main(argv + _shuffle(pr) + multi)


def teacher_dir(out: str, config: dict) -> str:
    """The recipe's teacher: the finetune stage's model where the preset (``recipe.json``'s config) has one."""
    return os.path.join(out, "finetune" if config.get("finetune_steps") else "unet")


def _share_cache(src: str, dst: str):
    """Hard-link the teacher's latent cache (its unet or finetune run's) into the distillation's: same data, same
    frozen models, same fingerprint, so the distillation does not encode every image again (a copy if links fail)."""
    if not os.path.isdir(src):
        return
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith(".safetensors") and not os.path.exists(os.path.join(dst, name)):
            _link_or_copy(os.path.join(src, name), os.path.join(dst, name))


def stage_distill(out, pr, args):
    from train import distill

    teacher = teacher_dir(out, asdict(pr))
    _share_cache(os.path.join(teacher, "cache"), os.path.join(out, "distill", "cache"))

    data = _data_dirs(out, pr, extra=True, two_objects=bool(pr.finetune_steps))  # the teacher's data: its cache
    argv = _common(os.path.join(out, "distill"), data, pr.round_steps, pr.distill_batch,
                   args.seed, pr.mixed_precision, args.no_progress)
    argv += ["--model", teacher, "--teacher-steps", str(pr.teacher_steps),
             "--min-steps", str(pr.student_steps), "--stage1-steps", str(pr.stage1_steps),
             "--steps-per-round", str(pr.round_steps), "--lr-schedule", pr.distill_lr_schedule,
             "--guidance-max", str(pr.distill_guidance_max)]
    if pr.last_round_steps:
        argv += ["--last-round-steps", str(pr.last_round_steps)]
    return distill.main(argv)


def stage_scorer(out, pr, args):
    """The teacher's CLIP scorer (its clip/) trained on with the text tower frozen: the image tower and the
    projections learn, the UNet's text encoder stays bit for bit (train.bundle swaps the scorer in)."""
    if not pr.scorer_steps:
        return {"skipped": True}
    from train import clip

    argv = _common(os.path.join(out, "scorer"), _data_dirs(out, pr, extra=True), pr.scorer_steps, pr.clip_batch,
                   args.seed, pr.mixed_precision, args.no_progress)
    return clip.main(argv + ["--model", teacher_dir(out, asdict(pr)), "--freeze-text", "--lr", "5e-4",
                             "--warmup-steps", str(_warmup(pr.scorer_steps)), "--lr-schedule", "linear"])


RUNNERS = {"data": stage_data, "vae": stage_vae, "decoder": stage_decoder, "clip": stage_clip, "unet": stage_unet,
           "clip2": stage_clip2, "finetune": stage_finetune, "distill": stage_distill, "scorer": stage_scorer}


# ---------------------------------------------------------------- driver
def _load_state(path: str, preset: str) -> dict:
    if os.path.isfile(path):
        with open(path) as f:
            state = json.load(f)
        if state.get("preset") != preset:
            raise SystemExit(f"error: {os.path.dirname(path)} holds a {state.get('preset')!r} recipe; "
                             f"rerun with --preset {state.get('preset')} or choose a new --out")
        return state
    return {"preset": preset, "done": {}, "seconds": {}}


# the preset fields that make the data (a change needs a new recipe folder)
DATA_FIELDS = ("size", "shapes", "emoji", "emoji_holdout", "extra_color_shapes", "two_object_shapes")
# which preset fields each stage trains to; raising one reopens the stage
STEP_FIELDS = {"vae": ("vae_steps", "vae_shapes"), "decoder": ("decoder_steps",),
               "clip": ("clip_steps", "clip_lr_schedule", "clip_token_loss"),
               "unet": ("unet_steps", "unet_lr_schedule", "shuffle_summary"),
               "clip2": ("clip2_steps",), "finetune": ("finetune_steps", "finetune_lr", "finetune_shuffle_multi"),
               "distill": ("teacher_steps", "student_steps", "stage1_steps", "round_steps", "distill_lr_schedule",
                           "distill_guidance_max", "last_round_steps"),
               "scorer": ("scorer_steps",)}


def reopen_stages(out: str, state: dict, pr: RecipePreset) -> list[str]:
    """Reopen the first done stage whose step fields changed since it ran, and every stage after it.

    The changed stage resumes from its checkpoints (its folder stays); later stages were trained on
    its old result, so their folders are moved aside and they start over. Returns the reopened stages.
    """
    if not state.get("config"):
        return []
    # a field missing from an older folder had its default then
    old = {f.name: state["config"].get(f.name, f.default) for f in fields(RecipePreset)}
    if "data" in state["done"]:
        said = ", ".join(f"{f} {old[f]} then, {getattr(pr, f)} now" for f in DATA_FIELDS
                         if old[f] != getattr(pr, f))
        if said:
            raise SystemExit(f"error: {out} was made from other data ({said}); every stage trained on it, "
                             "so choose a new --out for this preset")
    first = next((s for s in STAGES if s in state["done"]
                  and any(old[f] != getattr(pr, f) for f in STEP_FIELDS.get(s, ()))), None)
    if first is None:
        return []
    # the scorer reads the teacher, not the students: a reopened distill stage leaves it be
    later = [s for s in STAGES[STAGES.index(first) + 1:] if not (first == "distill" and s == "scorer")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for stage in later:
        folder = os.path.join(out, stage)
        if os.path.isdir(folder):
            os.replace(folder, f"{folder}.before-{stamp}")
        state["seconds"].pop(stage, None)
        state.get("cpu_seconds", {}).pop(stage, None)
    reopened = [s for s in (first, *later) if s in state["done"]]
    for stage in (first, *later):
        state["done"].pop(stage, None)
    changed = {f: (old[f], getattr(pr, f)) for f in STEP_FIELDS[first] if old[f] != getattr(pr, f)}
    print(f"[recipe] {first}: preset changed {changed}; reopening {', '.join(reopened)}")
    return reopened


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, every thread (what the stage cost the machine)."""
    t = os.times()
    return t.user + t.system


def _save_state(path: str, state: dict):
    """Write ``recipe.json`` whole or not at all (atomically, fsynced)."""
    atomic_write_text(path, json.dumps(state, indent=2))


def main(argv=None) -> dict:
    args = parse_args(argv)
    pr = PRESETS[args.preset]
    os.makedirs(args.out, exist_ok=True)
    state_path = os.path.join(args.out, "recipe.json")
    state = _load_state(state_path, args.preset)
    reopen_stages(args.out, state, pr)
    state["config"] = asdict(pr)
    for stage in STAGES:
        if stage in state["done"]:
            print(f"[recipe] {stage}: done ({state['seconds'].get(stage, 0) / 60:.1f} min)")
        else:
            print(f"[recipe] {stage}: running")
            t0, c0 = time.time(), _cpu_seconds()
            try:
                result = RUNNERS[stage](args.out, pr, args) or {}
            finally:
                state["seconds"][stage] = state["seconds"].get(stage, 0) + time.time() - t0
                cpu = state.setdefault("cpu_seconds", {})
                cpu[stage] = cpu.get(stage, 0) + _cpu_seconds() - c0
                _save_state(state_path, state)
            if result.get("finished") is False:
                print(f"[recipe] {stage} stopped at step {result.get('step')}; rerun the same command to go on")
                return state
            state["done"][stage] = json.loads(json.dumps(result, default=str))
            _save_state(state_path, state)
        if stage == args.until:
            break
    cpu = state.get("cpu_seconds", {})
    print("[recipe] summary: wall-clock minutes, CPU minutes (all threads)")
    for stage in STAGES:
        if stage in state["seconds"]:
            print(f"  {stage:8s} {state['seconds'][stage] / 60:8.1f} min {cpu.get(stage, 0) / 60:8.1f} cpu-min")
    print(f"  {'total':8s} {sum(state['seconds'].values()) / 60:8.1f} min {sum(cpu.values()) / 60:8.1f} cpu-min")
    print(f"  teacher: {teacher_dir(args.out, state['config'])}\n  student: {os.path.join(args.out, 'distill', 'final')}")
    return state


if __name__ == "__main__":
    main()
