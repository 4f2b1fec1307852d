"""From an empty folder to a finished teacher and 4-step student, stage by stage, resumable.

    latentgen train recipe --out runs/recipe --preset tiny     # a few minutes on 2 CPU cores
    latentgen train recipe --out runs/recipe --preset ship     # the full recipe (hours on 2 CPU cores)
    accelerate launch -m latentgen.train.recipe --out runs/recipe --preset base   # GPU(s)

    from latentgen.train import recipe
    recipe.run(recipe.RecipeConfig(out="runs/recipe", preset="tiny"))

Stages: data (shapes and OpenMoji, the held-out pairs excluded from both) -> vae -> decoder (the VAE's
decoder trained on alone, its encoder and latents kept; presets with ``decoder_steps`` only) -> clip ->
unet -> clip2 (presets with ``clip2_steps``: CLIP's two towers trained on from the UNet's text encoder) ->
finetune (presets with ``finetune_steps``: the UNet fine-tuned in full, on clip2's text encoder where there is one)
-> distill (guided, then progressive halving to 4 steps) -> distill2 (presets with ``half_round_steps``: one
more halving, to a 2-step student) -> scorer (presets with ``scorer_steps``: the teacher's CLIP trained on with
its text tower frozen). Presets with ``extra_color_shapes`` add scenes in colours outside the
palette (``data/shapes-extra``) to the text-conditioned stages; ``clip_token_loss`` and ``shuffle_summary`` set
CLIP's ``token_loss`` and the unet and finetune stages' ``shuffle_summary``
(:mod:`latentgen.train.recipe_presets`).

Each stage builds its trainer's config and calls its ``run(cfg)`` with ``resume="latest"``; a stage whose
result is complete is skipped, so a killed recipe (or one stopped for the night) continues where it was with
the same command. Time spent per stage is added up across sittings in ``<out>/recipe.json`` and printed at the
end: wall-clock seconds (``seconds``); active seconds (``active_seconds``: the wall clock less the time the
process was stopped or starved by another job, :class:`ActiveClock`), which the bundle's card gives as each
stage's minutes; and the process's CPU seconds (``cpu_seconds``, user + system, all threads). A preset
whose step counts were raised since a stage finished reopens that stage (it resumes from its last checkpoint and trains on to the new count); the stages after it, trained
on the old result, are moved aside to ``<stage>.before-<time>`` and run again.
The teacher ends in ``<out>/finetune`` (``<out>/unet`` without a finetune stage), the student in
``<out>/distill/final`` and the half-step one in ``<out>/distill2/final``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from latentgen.fsutil import atomic_write_text
from latentgen.train.config import TrainerError, main_for, opt
from latentgen.train.recipe_data import data_dirs, emoji_heldout, shapes_subset, share_cache, stage_data
from latentgen.train.recipe_presets import (
    DATA_FIELDS,
    PRESETS,
    STAGES,
    STEP_FIELDS,
    RecipePreset,
    teacher_dir,
)


@dataclass(frozen=True)
class RecipeConfig:
    """Which preset to train into which folder. Not a training run itself: each stage's trainer gets its
    own config (:mod:`latentgen.train.vae`, ``clip``, ``unet``, ``finetune``, ``distill``)."""

    TRAINER: ClassVar[str] = "recipe"
    REQUIRED: ClassVar[tuple[str, ...]] = ("out",)

    out: str = field(metadata={"help": "recipe folder (data, every stage's run, the final models)",
                               "metavar": "DIR"})
    preset: str = opt("tiny", "what to train and for how long", choices=tuple(PRESETS))
    seed: int = opt(0, "seed of the data and of every stage", group=None)
    until: str | None = opt(None, "stop after this stage", choices=STAGES)
    include_heldout: bool = opt(False, "also train on the held-out pairs (purple square, orange triangle, green "
                                "circle): the shapes scenes that draw them and OpenMoji's green circle and purple "
                                "square emoji")
    progress: bool = opt(True, "no progress bars", flag="--no-progress", group=None)

    def __post_init__(self):
        if not self.out:
            raise ValueError("recipe needs --out (the recipe folder)")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is unknown: choose one of {', '.join(PRESETS)}")
        if self.until is not None and self.until not in STAGES:
            raise ValueError(f"--until {self.until!r} is no stage: choose one of {', '.join(STAGES)}")


Config = RecipeConfig


# ---------------------------------------------------------------- stages
def _loop(cfg: RecipeConfig, stage: str, data, steps: int, batch: int, mixed_precision: str) -> dict:
    """The fields every stage's trainer config shares: its run folder, data and length, resumed."""
    return {"out": os.path.join(cfg.out, stage), "data": tuple(data), "max_steps": steps, "batch_size": batch,
            "seed": cfg.seed, "resume": "latest", "mixed_precision": mixed_precision, "progress": cfg.progress}


def _warmup(steps: int) -> int:
    return min(100, steps // 10)


def _val_data(cfg: RecipeConfig, pr: RecipePreset) -> tuple[str, ...]:
    """The held-out OpenMoji the VAE stages validate on, where the data stage wrote them."""
    return (emoji_heldout(cfg.out),) if pr.emoji != 0 and pr.emoji_holdout else ()


def _codec(out: str, pr: RecipePreset) -> str:
    """The VAE run the UNet stage trains on (and exports with the teacher): the decoder stage's where
    the preset has one."""
    return os.path.join(out, "decoder" if pr.decoder_steps else "vae")


def stage_vae(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    """The codec on the OpenMoji images and ``vae_shapes`` shapes ones (0: all); validated on the held-out
    OpenMoji where the preset keeps some."""
    from latentgen.train import vae

    data = data_dirs(cfg.out, pr)
    if pr.vae_shapes:  # emoji are the hard images: a shapes subset keeps them a large share of the batches
        data[0] = shapes_subset(cfg.out, pr.vae_shapes)
    return vae.run(vae.Config(**_loop(cfg, "vae", data, pr.vae_steps, pr.vae_batch, "no"), preset=pr.vae_preset,
                              hflip=pr.vae_hflip, ema_decay=pr.vae_ema_decay or None, val_data=_val_data(cfg, pr)))


def stage_decoder(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    """Decoder-only training of the vae stage's codec on all the OpenMoji images and ``decoder_shapes``
    shapes ones; validated on the held-out OpenMoji where the preset keeps some."""
    if not pr.decoder_steps:
        return {"skipped": True}
    from latentgen.train import vae

    _, *emoji = data_dirs(cfg.out, pr)
    data = [*emoji, shapes_subset(cfg.out, pr.decoder_shapes)]
    return vae.run(vae.Config(**_loop(cfg, "decoder", data, pr.decoder_steps, pr.vae_batch, "no"),
                              model=os.path.join(cfg.out, "vae"), decoder_only=True, ema_decay=0.999,
                              lr_schedule="linear", val_data=_val_data(cfg, pr)))


def stage_clip(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    from latentgen.train import clip

    data = data_dirs(cfg.out, pr, extra=True)
    return clip.run(clip.Config(**_loop(cfg, "clip", data, pr.clip_steps, pr.clip_batch, pr.mixed_precision),
                                preset=pr.clip_preset, lr_schedule=pr.clip_lr_schedule, token_loss=pr.clip_token_loss))


def stage_unet(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    from latentgen.train import unet

    data = data_dirs(cfg.out, pr, extra=True)
    return unet.run(unet.Config(**_loop(cfg, "unet", data, pr.unet_steps, pr.unet_batch, pr.mixed_precision),
                                preset=pr.unet_preset, vae=_codec(cfg.out, pr),
                                text_encoder=os.path.join(cfg.out, "clip"), size=pr.size, lr=pr.unet_lr,
                                lr_schedule=pr.unet_lr_schedule, shuffle_summary=pr.shuffle_summary))


def stage_clip2(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    """Both CLIP towers trained on from the unet stage's text encoder."""
    if not pr.clip2_steps:
        return {"skipped": True}
    from latentgen.train import clip

    data = data_dirs(cfg.out, pr, extra=True)
    return clip.run(clip.Config(**_loop(cfg, "clip2", data, pr.clip2_steps, pr.clip_batch, pr.mixed_precision),
                                model=os.path.join(cfg.out, "unet"), lr=5e-4, warmup_steps=_warmup(pr.clip2_steps),
                                token_loss=pr.clip_token_loss))


def stage_finetune(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    """The unet stage's UNet fine-tuned in full (on clip2's text encoder where the preset has a clip2 stage,
    else on its own) with the learning rate annealed and EMA: the teacher."""
    if not pr.finetune_steps:
        return {"skipped": True}
    from latentgen.train import finetune

    data = data_dirs(cfg.out, pr, extra=True, two_objects=True)
    loop = _loop(cfg, "finetune", data, pr.finetune_steps, pr.unet_batch, pr.mixed_precision)
    return finetune.run(finetune.Config(
        **loop, model=os.path.join(cfg.out, "unet"), lora_rank=0, lr=pr.finetune_lr,
        warmup_steps=_warmup(pr.finetune_steps), lr_schedule="linear", ema_decay=0.999,
        tune_decoder="off", prior="off",  # the model's own data: nothing new to decode or preserve
        caption_dropout=0.1,  # as the unet stage: the unconditional prediction guidance needs trains on
        text_encoder=os.path.join(cfg.out, "clip2") if pr.clip2_steps else None,
        shuffle_summary=pr.shuffle_summary,
        shuffle_summary_multi=pr.finetune_shuffle_multi if pr.shuffle_summary else None))


def stage_distill(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    """Guided distillation of the teacher, then progressive halving to ``student_steps`` steps."""
    from latentgen.train import distill

    teacher = teacher_dir(cfg.out, asdict(pr))
    share_cache(os.path.join(teacher, "cache"), os.path.join(cfg.out, "distill", "cache"))
    data = data_dirs(cfg.out, pr, extra=True, two_objects=bool(pr.finetune_steps))  # the teacher's data: its cache
    loop = _loop(cfg, "distill", data, pr.round_steps, pr.distill_batch, pr.mixed_precision)
    return distill.run(distill.Config(
        **loop, model=teacher, teacher_steps=pr.teacher_steps, min_steps=pr.student_steps,
        stage1_steps=pr.stage1_steps, steps_per_round=pr.round_steps, lr_schedule=pr.distill_lr_schedule,
        guidance_max=pr.distill_guidance_max, last_round_steps=pr.last_round_steps or None))


def stage_distill2(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    """One more halving: the distill stage's last student is the teacher of one taking half its steps."""
    if not pr.half_round_steps:
        return {"skipped": True}
    from latentgen.train import distill

    share_cache(os.path.join(cfg.out, "distill", "cache"), os.path.join(cfg.out, "distill2", "cache"))
    data = data_dirs(cfg.out, pr, extra=True, two_objects=bool(pr.finetune_steps))  # the same data: its cache
    loop = _loop(cfg, "distill2", data, pr.half_round_steps, pr.distill_batch, pr.mixed_precision)
    return distill.run(distill.Config(
        **loop, model=os.path.join(cfg.out, "distill", f"round-{pr.student_steps}"), teacher_steps=pr.student_steps,
        min_steps=pr.student_steps // 2, steps_per_round=pr.half_round_steps, lr_schedule=pr.distill_lr_schedule,
        guidance_max=pr.distill_guidance_max))


def stage_scorer(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    """The teacher's CLIP scorer (its clip/) trained on with the text tower frozen: the image tower and the
    projections learn, the UNet's text encoder stays bit for bit (the bundle swaps the scorer in)."""
    if not pr.scorer_steps:
        return {"skipped": True}
    from latentgen.train import clip

    data = data_dirs(cfg.out, pr, extra=True)
    loop = _loop(cfg, "scorer", data, pr.scorer_steps, pr.clip_batch, pr.mixed_precision)
    return clip.run(clip.Config(**loop, model=teacher_dir(cfg.out, asdict(pr)), freeze_text=True, lr=5e-4,
                                warmup_steps=_warmup(pr.scorer_steps), lr_schedule="linear"))


def _stage_data(cfg: RecipeConfig, pr: RecipePreset) -> dict:
    return stage_data(cfg.out, pr, cfg.seed, cfg.include_heldout)


RUNNERS = {"data": _stage_data, "vae": stage_vae, "decoder": stage_decoder, "clip": stage_clip, "unet": stage_unet,
           "clip2": stage_clip2, "finetune": stage_finetune, "distill": stage_distill,
           "distill2": stage_distill2, "scorer": stage_scorer}


# ---------------------------------------------------------------- recipe.json
def _load_state(path: str, preset: str) -> dict:
    if os.path.isfile(path):
        with open(path) as f:
            state = json.load(f)
        if state.get("preset") != preset:
            raise TrainerError(f"{os.path.dirname(path)} holds a {state.get('preset')!r} recipe; "
                               f"rerun with --preset {state.get('preset')} or choose a new --out")
        return state
    return {"preset": preset, "done": {}, "seconds": {}}


def _save_state(path: str, state: dict):
    """Write ``recipe.json`` whole or not at all (atomically, fsynced)."""
    atomic_write_text(path, json.dumps(state, indent=2))


def reopen_stages(out: str, state: dict, pr: RecipePreset) -> list[str]:
    """Reopen the first done stage whose step fields changed since it ran, and every stage after it.

    The changed stage resumes from its checkpoints (its folder stays); later stages were trained on
    its old result, so their folders are moved aside and they start over. Returns the reopened stages.
    """
    if not state.get("config"):
        return []
    # a field that recipe.json lacks (a folder made before the field existed) had its default then
    old = {f.name: state["config"].get(f.name, f.default) for f in fields(RecipePreset)}
    if "data" in state["done"]:
        said = ", ".join(f"{f} {old[f]} then, {getattr(pr, f)} now" for f in DATA_FIELDS
                         if old[f] != getattr(pr, f))
        if said:
            raise TrainerError(f"{out} was made from other data ({said}); every stage trained on it, "
                               "so choose a new --out for this preset")
    first = next((s for s in STAGES if s in state["done"]
                  and any(old[f] != getattr(pr, f) for f in STEP_FIELDS.get(s, ()))), None)
    if first is None:
        return []
    # the scorer reads the teacher, not the students: a reopened distill stage leaves it be
    later = [s for s in STAGES[STAGES.index(first) + 1:] if not (first.startswith("distill") and s == "scorer")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for stage in later:
        folder = os.path.join(out, stage)
        if os.path.isdir(folder):
            os.replace(folder, f"{folder}.before-{stamp}")
        for key in ("seconds", "active_seconds", "cpu_seconds"):
            state.get(key, {}).pop(stage, None)
    reopened = [s for s in (first, *later) if s in state["done"]]
    for stage in (first, *later):
        state["done"].pop(stage, None)
    changed = {f: (old[f], getattr(pr, f)) for f in STEP_FIELDS[first] if old[f] != getattr(pr, f)}
    print(f"[recipe] {first}: preset changed {changed}; reopening {', '.join(reopened)}")
    return reopened


# ---------------------------------------------------------------- driver
def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, every thread (what the stage cost the machine)."""
    t = os.times()
    return t.user + t.system


class ActiveClock:
    """Wall seconds while this process ran: a thread wakes every ``tick`` seconds and counts the wakes that
    came within ``late`` seconds; a process stopped (``kill -STOP``, a suspended laptop) or starved by
    another job misses them, so that time is not counted. Use as ``with ActiveClock() as clock: ...``."""

    def __init__(self, tick: float = 1.0, late: float = 5.0):
        self.tick, self.late, self.seconds = tick, late, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)

    def _count(self):
        while not self._stop.wait(self.tick):
            self._wake()

    def _wake(self):
        now = time.monotonic()
        if now - self._last <= self.late:
            self.seconds += now - self._last
        self._last = now

    def __enter__(self):
        self._last = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._wake()  # the part since the last tick


def _run_stage(stage: str, cfg: RecipeConfig, pr: RecipePreset, state: dict, state_path: str) -> bool:
    """Run one stage, adding its wall, active (:class:`ActiveClock`) and CPU seconds to ``state`` (saved even
    when it fails); False when the stage stopped before its end (a later run goes on)."""
    print(f"[recipe] {stage}: running")
    t0, c0 = time.time(), _cpu_seconds()
    clock = ActiveClock()
    try:
        with clock:
            result = RUNNERS[stage](cfg, pr) or {}
    finally:
        # a stage begun before active seconds were kept has none: its earlier sittings are unknown
        known = stage not in state["seconds"] or stage in state.get("active_seconds", {})
        for key, spent in (("seconds", time.time() - t0), ("active_seconds", clock.seconds if known else None),
                           ("cpu_seconds", _cpu_seconds() - c0)):
            if spent is not None:
                state.setdefault(key, {})[stage] = state.get(key, {}).get(stage, 0) + spent
        _save_state(state_path, state)
    if result.get("finished") is False:
        print(f"[recipe] {stage} stopped at step {result.get('step')}; rerun the same command to go on")
        return False
    state["done"][stage] = json.loads(json.dumps(result, default=str))
    _save_state(state_path, state)
    return True


def _print_summary(out: str, state: dict):
    cpu, active = state.get("cpu_seconds", {}), state.get("active_seconds", {})
    print("[recipe] summary: wall-clock minutes, active minutes (not stopped or starved), CPU minutes")
    for stage in STAGES:
        if stage in state["seconds"]:
            print(f"  {stage:8s} {state['seconds'][stage] / 60:8.1f} min {active.get(stage, 0) / 60:8.1f} active "
                  f"{cpu.get(stage, 0) / 60:8.1f} cpu-min")
    print(f"  {'total':8s} {sum(state['seconds'].values()) / 60:8.1f} min {sum(active.values()) / 60:8.1f} active "
          f"{sum(cpu.values()) / 60:8.1f} cpu-min")
    print(f"  teacher: {teacher_dir(out, state['config'])}\n  student: {os.path.join(out, 'distill', 'final')}")
    if state["config"].get("half_round_steps"):
        print(f"  half-step student: {os.path.join(out, 'distill2', 'final')}")


def run(cfg: RecipeConfig) -> dict:
    """Run the stages of ``cfg.preset`` in ``cfg.out`` that are not done; returns ``recipe.json``'s state."""
    pr = PRESETS[cfg.preset]
    os.makedirs(cfg.out, exist_ok=True)
    state_path = os.path.join(cfg.out, "recipe.json")
    state = _load_state(state_path, cfg.preset)
    reopen_stages(cfg.out, state, pr)
    state["config"] = asdict(pr)
    for stage in STAGES:
        if stage in state["done"]:
            print(f"[recipe] {stage}: done ({state['seconds'].get(stage, 0) / 60:.1f} min)")
        elif not _run_stage(stage, cfg, pr, state, state_path):
            return state
        if stage == cfg.until:
            break
    _print_summary(cfg.out, state)
    return state


def main(argv=None) -> dict:
    return main_for(run, RecipeConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
