"""Distil a guided text-to-image model into a fast student: 64 steps with guidance -> 4, 2, 1 steps.

    latentgen train distill --model runs/unet --data data/shapes64 --out runs/distill \\
        --teacher-steps 64 --min-steps 1 --stage1-steps 4000 --steps-per-round 4000
    accelerate launch -m train.distill ...   (the same flags, on several processes)

Stage 1, guided distillation (Meng et al. 2023): a student that takes the guidance scale g
as an input learns the guided teacher's prediction in one pass, for g in
[--guidance-min, --guidance-max], at the timesteps of the --teacher-steps grid. Stage 2,
progressive distillation (Salimans & Ho 2022): each round trains a copy of the last student
so that one of its DDIM steps matches two of the last student's, and halves the steps,
down to --min-steps. With --two-pass there is no stage 1: every student stays a plain UNet that
is sampled with classifier-free guidance (two passes a step) and learns the guided teacher's two
DDIM steps with its own guided prediction. The equations live in ``latentgen/distill.py``; the
data is the teacher's training data as cached latents and prompt embeddings (``latentgen/cache.py``).

Folders: ``<out>/stage1``, ``<out>/round-32``, ..., ``<out>/round-<min>``, each a complete
model folder (DDIM scheduler, model card with its step count) plus the loop's checkpoints
and logs, and ``<out>/final``, the model folder of the smallest step count. A finished
round is reused when the command is run again; ``--resume latest`` continues the round in
progress from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass

import torch

from latentgen.fsutil import atomic_write_text
from latentgen.lora import add_lora
from latentgen.train.common import image_folders
from latentgen.train.config import RunConfig, TrainerError, command_for, main_for, opt
from latentgen.train.distill_rounds import DONE_FILE, finished_round, logged_losses, plan, print_summary

GUIDANCE_MAX = 8.0  # the default --guidance-max (the recipe's presets and the bundle's cards refer to it)
LORA_TARGETS = "to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2"


def is_pow2(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class DistillConfig(RunConfig):
    TRAINER = "distill"
    REQUIRED = ("model",)
    # what a resumed round may change beyond the loop's bookkeeping: the card's guidance, the sample grid,
    # the other rounds' lengths, and this round's length (as --max-steps may grow on resume)
    MAY_CHANGE = ("guidance", "val_prompts", "min_steps", "stage1_steps", "steps_per_round", "last_round_steps",
                  "stage_max_steps")
    # what a finished round is reused only with: its length and learning-rate schedule
    REUSE_MUST_MATCH = ("lr_schedule", "stage_max_steps")

    max_steps: int = opt(2000, "default training steps of stage 1 and of every round")
    batch_size: int = 32
    teacher_steps: int = opt(64, "DDIM steps of the teacher (a power of two)")
    min_steps: int = opt(1, "stop when the student takes this many steps")
    stage1_steps: int | None = opt(None, "steps of stage 1 (default: --max-steps)")
    steps_per_round: int | None = opt(None, "training steps per halving (default: --max-steps)")
    last_round_steps: int | None = opt(None, "training steps of the last halving, the one to --min-steps "
                                       "(default: --steps-per-round)")
    guidance_min: float = opt(1.0, "smallest guidance scale learnt")
    guidance_max: float = opt(GUIDANCE_MAX, "largest guidance scale learnt")
    guidance: float | None = opt(None, "guidance scale the model cards recommend (default: the teacher's, else 5)")
    time_cond_proj_dim: int = opt(256, "width of the guidance embedding")
    size: int | None = opt(None, "image side the data is prepared at (default: the teacher's)")
    val_prompts: int = opt(8, "captions drawn in each round's sample grid")
    freeze_text_kv: bool = opt(False, "keep every student's cross-attention key/value projections (how it reads "
                               "the prompt) at the teacher's and train the rest")
    lora_rank: int = opt(0, "train each student as a LoRA of this rank on its teacher (plus the guidance "
                         "embedding), merged into the exported weights; 0 = train every weight")
    two_pass: bool = opt(False, "skip stage 1: every student stays a plain UNet sampled with classifier-free "
                         "guidance (two passes a step, negative prompts work) and learns the guided teacher's "
                         "two steps")
    lora_targets: str = opt(LORA_TARGETS, "comma-separated UNet module names the LoRA adapts")
    draw_data: int = opt(0, "without --data: draw N shapes scenes and the OpenMoji emoji (as `latentgen data "
                         "shapes` and `latentgen data emoji` write them: the bundled model's kinds of image) "
                         "into <out>/data and distil on those")
    from_student: str | None = opt(None, "no training: add what the fine-tune --model changed in its base to "
                                   "this student of that base (seconds; latentgen.train.distill_transfer)")
    transfer_scale: str = opt("1.125", "with --from-student: add this multiple of that change (0 < x <= 4), or auto")
    refine_steps: int = opt(0, "with --from-student and --data: then train it this many steps on --model's guided "
                            "DDIM over each of its steps, --refine-substeps teacher steps each")
    refine_substeps: int = opt(4, "teacher DDIM steps per student step when refining (a power of two)")

    def __post_init__(self):
        super().__post_init__()
        if not self.data and self.draw_data < 1 and not self.from_student:
            raise ValueError("distillation needs the teacher's kind of images: give --data DIR, or --draw-data N "
                             "to draw N shapes scenes and the OpenMoji emoji (for the bundled model)")
        if not is_pow2(self.teacher_steps):
            raise ValueError(f"--teacher-steps {self.teacher_steps} must be a power of two (e.g. 64), so each "
                             "halving lands on the teacher's timesteps")
        if not is_pow2(self.min_steps) or self.min_steps > self.teacher_steps:
            raise ValueError(f"--min-steps {self.min_steps} must be a power of two no larger than "
                             f"--teacher-steps {self.teacher_steps} (e.g. 4, 2 or 1)")
        if not 0 <= self.guidance_min <= self.guidance_max:
            raise ValueError(f"need 0 <= --guidance-min ({self.guidance_min}) <= --guidance-max "
                             f"({self.guidance_max}); e.g. 1 and 8")
        if self.lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0 (0 = train every weight), got {self.lora_rank}")
        if self.lora_rank and self.freeze_text_kv:
            raise ValueError("--freeze-text-kv and --lora-rank both choose what the student trains: give one")
        for name in ("stage1_steps", "steps_per_round", "last_round_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")

    def stage_max_steps(self, kind: str, steps: int) -> int:
        """Training steps of one stage: --stage1-steps, --steps-per-round, or --last-round-steps for the last."""
        if kind == "progressive" and steps == self.min_steps and self.last_round_steps:
            return self.last_round_steps
        return (self.stage1_steps if kind == "guided" else self.steps_per_round) or self.max_steps

    def reuse_may_change(self) -> tuple[str, ...]:
        """The record's keys a finished round may differ in and still be reused."""
        return tuple(k for k in self.may_change() if k not in self.REUSE_MUST_MATCH)


Config = DistillConfig


def load_teacher(model_dir: str):
    """The teacher pipeline (a LoRA fine-tune merged into its base), the folder its parts come from, and the
    DDIM scheduler every student is saved with (trailing, alpha_0 = 1)."""
    from latentgen.diffusion import make_scheduler
    from latentgen.train.base import load_merged

    pipe, parts = load_merged(model_dir)
    cfg = dict(pipe.scheduler.config)
    if cfg.get("prediction_type") != "v_prediction":
        raise TrainerError(f"the teacher in {model_dir} predicts {cfg.get('prediction_type')!r}; "
                           "progressive distillation needs a v-prediction teacher (latentgen's schedule, "
                           "as `latentgen train unet` trains)")
    cfg.update(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    scheduler = make_scheduler("ddim", cfg)
    if float(scheduler.alphas_cumprod[-1]) > 1e-6:
        warnings.warn(f"the teacher's schedule does not reach zero terminal SNR (alpha_bar_T = "
                      f"{float(scheduler.alphas_cumprod[-1]):.2g}); few-step students start from pure noise "
                      "and will be off (Lin et al. 2023): train teachers with latentgen's schedule",
                      stacklevel=2)
    return pipe, parts, scheduler


def draw_folders(root: str, n: int, size: int) -> tuple[str, ...]:
    """``root/shapes`` (``n`` scenes) and ``root/emoji`` (every OpenMoji emoji), the held-out pairs left out of
    both, drawn once (a resumed run finds them)."""
    from latentgen.data.captions import METADATA_FILE
    from latentgen.data.emoji import write_emoji_folder
    from latentgen.data.shapes import write_shapes_folder

    shapes, emoji = os.path.join(root, "shapes"), os.path.join(root, "emoji")
    if not os.path.isfile(os.path.join(shapes, METADATA_FILE)):
        write_shapes_folder(shapes, n=n, size=size, seed=0)
    if not os.path.isfile(os.path.join(emoji, METADATA_FILE)):
        write_emoji_folder(emoji, size=size)
    return shapes, emoji


def make_step_fn(kind: str, cache, scaling: float, alphas_cumprod, student_steps: int, gmin: float,
                 gmax: float, two_pass: bool = False, substeps: int = 4):  # kind: guided, progressive, interval
    import latentgen.distill as losses
    from latentgen.cache import sample_latents

    embeddings = cache["embeddings"]  # (K, L, D), on the CPU, gathered per batch
    uncond = embeddings[int(cache["uncond_id"])]  # (L, D)

    def step_fn(student, batch, ctx):
        z0 = sample_latents(batch, scaling, ctx.generator)  # (B, C, h, w)
        b = z0.shape[0]
        cond = embeddings[batch["caption_id"].cpu()].to(ctx.device)  # (B, L, D)
        u = torch.rand(b, generator=ctx.generator, device=ctx.generator.device).cpu()
        g = gmin + (gmax - gmin) * u  # (B,) guidance scales
        teacher = ctx.frozen["teacher"]
        # the empty prompt, for every model sampled with classifier-free guidance  # (B, L, D)
        uncond_b = uncond.to(ctx.device).expand(b, -1, -1) if kind != "progressive" or two_pass else None
        if kind == "guided":
            loss = losses.guided_distillation_loss(student, teacher, z0, cond, uncond_b, g, student_steps,
                                                   alphas_cumprod, ctx.generator)
        elif kind == "interval":
            loss = losses.interval_distillation_loss(student, teacher, z0, cond, uncond_b, g, student_steps,
                                                     substeps, alphas_cumprod, ctx.generator)
        else:
            loss = losses.progressive_distillation_loss(student, teacher, z0, cond, g, student_steps,
                                                        alphas_cumprod, ctx.generator, uncond_b)
        return {"loss": loss}

    return step_fn


def build_pipeline(teacher_pipe, unet, scheduler):
    from latentgen.pipeline import LatentGenPipeline

    return LatentGenPipeline(vae=teacher_pipe.vae, text_encoder=teacher_pipe.text_encoder,
                             tokenizer=teacher_pipe.tokenizer, unet=unet, scheduler=scheduler)


def make_validate_fn(teacher_pipe, scheduler, prompts: list[str], steps: int, guidance: float):
    def validate(trainer, unet, step):
        from latentgen.eval.grid import image_grid

        pipe = build_pipeline(teacher_pipe, unet, scheduler).to(unet.device)  # VAE, text encoder follow
        pipe.set_progress_bar_config(disable=True)
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator("cpu").manual_seed(0)).images
        trainer.log_images(f"samples-{steps}steps", image_grid(images, prompts))
        return {}

    return validate


def model_card(cfg: DistillConfig, stage: str, steps: int, guidance: float, record: dict) -> dict:
    """The card of a student (:func:`latentgen.modelcard.write_card`'s arguments, less the command): its
    sampling settings, how it was made, and what guidance and ``negative_prompt`` do with it."""
    what = "guided distillation (Meng et al. 2023, stage 1)" if stage == "stage1" else \
        f"progressive distillation (Salimans & Ho 2022), {record['stage_teacher_steps']} -> {steps} steps"
    gmin, gmax = cfg.guidance_min, cfg.guidance_max
    sample = (f"Sample it with DDIM at `num_inference_steps={steps}` (this folder's scheduler) and a guidance "
              f"scale from {gmin} to {gmax}.")
    if cfg.two_pass:
        how = [(f"{sample} It is a plain UNet sampled with classifier-free guidance, as its teacher: two passes "
                "a step (one batched call), and `negative_prompt` works.")]
    else:
        how = [(f"{sample} The guidance scale is an input of the UNet (the embedding of `guidance_scale - 1`, "
                "as stock diffusers computes it for a UNet with `time_cond_proj_dim`), so each step is one "
                "conditional UNet pass, not two."), "",
               ("**`negative_prompt` is ignored.** The student has no unconditional pass: in stock "
                "`diffusers.StableDiffusionPipeline` (and in `LatentGenPipeline`) a negative prompt has no "
                "effect.")]
    return {"front": {"sampler": "ddim", "num_inference_steps": steps, "guidance_scale": guidance,
                      "guidance_range": [gmin, gmax], "distillation": stage},
            "title": f"latentgen distilled student: {steps} DDIM step{'s' if steps > 1 else ''}",
            "body": [f"Distilled from the model in `{cfg.model}` (`{stage}/` of the run below): {what}.", "",
                     *how],
            "record": record}


def export(folder: str, cfg: DistillConfig, ctx: dict, unet, steps: int, record: dict) -> None:
    """A complete model folder: the student UNet, the teacher's VAE and text encoder (and clip/), DDIM, a card."""
    from latentgen.export import export_model
    from latentgen.models.presets import CONFIG_NAME, load_config
    from latentgen.models.unet import UNetConfig

    configs, parts = {}, ctx["parts"]  # the teacher's folder, or the base of a LoRA fine-tune
    if os.path.isfile(os.path.join(parts, "unet", CONFIG_NAME)):  # the teacher's preset, with the guidance input
        configs["unet"] = dataclasses.replace(load_config(UNetConfig, os.path.join(parts, "unet")),
                                              time_cond_proj_dim=unet.config.time_cond_proj_dim)
    card = model_card(cfg, record["stage"], steps, ctx["guidance"], record)
    export_model(folder, build_pipeline(ctx["pipe"], unet, ctx["scheduler"]), configs=configs,
                 sources={"vae": parts, "text_encoder": parts}, clip_from=parts, prompts_from=parts,
                 card={**card, "command": command_for(cfg)})


def run_stage(cfg: DistillConfig, ctx: dict, name: str, kind: str, teacher_unet, student_unet,
              teacher_steps: int, steps: int, resume: str | None) -> dict:
    """Train one stage or round with the shared loop and export its model folder."""
    from latentgen.cache import LatentDataset
    from latentgen.training import Trainer

    folder = os.path.join(cfg.out, name)
    max_steps = cfg.stage_max_steps(kind, steps)
    record = cfg.record(**ctx["derived"], stage=name, stage_teacher_steps=teacher_steps, student_steps=steps,
                        stage_max_steps=max_steps)
    done = finished_round(folder, record, cfg.reuse_may_change())
    if done is not None:
        print(f"{name}: finished earlier, reusing {folder}")
        return {**done, "reused": True}
    ckpts = os.path.join(folder, "checkpoints")
    if resume is None and os.path.isdir(ckpts) and os.listdir(ckpts):
        raise TrainerError(f"{folder} holds checkpoints of an unfinished run: pass --resume latest to "
                           "continue it, or delete that folder to start the round again")
    t0 = time.time()
    trainer = Trainer(cfg.loop(out=folder, max_steps=max_steps, resume=resume), student_unet,
                      LatentDataset(ctx["cache"]),
                      make_step_fn(kind, ctx["cache"], ctx["scaling"], ctx["alphas_cumprod"], steps,
                                   cfg.guidance_min, cfg.guidance_max, cfg.two_pass),
                      frozen={"teacher": teacher_unet},
                      validate_fn=make_validate_fn(ctx["pipe"], ctx["scheduler"], ctx["prompts"], steps,
                                                   ctx["guidance"]),
                      run_config=record, may_change=cfg.may_change())
    unet = trainer.fit()
    if not trainer.finished:
        return {"finished": False, "step": trainer.step}
    if cfg.lora_rank:  # the exported student is a plain UNet: the LoRA folded into its weights
        unet.fuse_lora()
        unet.unload_lora()
    logged = logged_losses(folder)
    done = {"run": record, "folder": folder, "student_steps": steps, "steps_trained": trainer.step,
            "loss_first": logged[0] if logged else None, "loss_last": logged[-1] if logged else None,
            "seconds": round(time.time() - t0, 1)}
    if trainer.is_main:
        export(folder, cfg, ctx, unet, steps, record)
        atomic_write_text(os.path.join(folder, DONE_FILE), json.dumps(done, indent=2))
    trainer.accelerator.wait_for_everyone()
    return {**done, "reused": False}


def prepare(cfg: DistillConfig) -> dict:
    """The teacher, the cached data and everything the rounds share."""
    from accelerate import PartialState

    from latentgen.cache import load_or_build_cache
    from latentgen.modelcard import read_card_defaults
    from latentgen.pipeline import DEFAULT_GUIDANCE

    pipe, parts, scheduler = load_teacher(cfg.model)
    timesteps = scheduler.config.num_train_timesteps
    if cfg.teacher_steps > timesteps:
        raise TrainerError(f"--teacher-steps {cfg.teacher_steps} must be a power of two up to {timesteps}, the "
                           "teacher's training timesteps (e.g. 64)")
    if cfg.two_pass and pipe.unet.config.time_cond_proj_dim is not None:
        raise TrainerError("--two-pass needs a plain guided teacher (two passes a step), but the UNet in "
                           f"{cfg.model} takes a guidance embedding: give the original model, or drop --two-pass")
    guidance = cfg.guidance if cfg.guidance is not None else \
        (read_card_defaults(cfg.model) or read_card_defaults(parts)).get("guidance_scale", DEFAULT_GUIDANCE)
    guidance = min(max(guidance, cfg.guidance_min), cfg.guidance_max)
    size = cfg.size or pipe.default_size()[0]
    with PartialState().main_process_first():
        folders = cfg.data or draw_folders(os.path.join(cfg.out, "data"), cfg.draw_data, size)
    data = image_folders(folders, size)
    with PartialState().main_process_first():  # under accelerate launch one process builds the cache
        cache = load_or_build_cache(data, pipe.vae.eval(), pipe.tokenizer, pipe.text_encoder.eval(),
                                    os.path.join(cfg.out, "cache"), size)
    return {
        "pipe": pipe, "parts": parts, "scheduler": scheduler, "cache": cache, "guidance": guidance,
        "scaling": float(pipe.vae.config.scaling_factor), "alphas_cumprod": scheduler.alphas_cumprod.clone(),
        "prompts": list(dict.fromkeys(it.caption for it in data.items))[:cfg.val_prompts] or [""],
        # what the run used where the config leaves it to the teacher, and the data's size
        "derived": {"guidance": guidance, "size": size, "examples": len(data),
                    "time_cond_proj_dim": pipe.unet.config.time_cond_proj_dim or cfg.time_cond_proj_dim},
    }


def load_unet(folder: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), use_safetensors=True)


def make_pair(cfg: DistillConfig, pipe, name: str, prev: str):
    """``(kind, teacher UNet, student UNet)`` of one stage: stage 1's student learns the guided teacher; each
    round's teacher is the last student and its student a copy of it."""
    from latentgen.distill import copy_unet, freeze_text_kv, make_student

    if name == "stage1":
        kind, teacher = "guided", pipe.unet
        student = make_student(teacher, cfg.time_cond_proj_dim)
    else:
        kind, teacher = "progressive", pipe.unet if prev == cfg.model else load_unet(prev)
        student = copy_unet(teacher)
    if cfg.freeze_text_kv:
        freeze_text_kv(student)
    if cfg.lora_rank:  # a LoRA on the teacher's weights, as LCM-LoRA (Luo et al. 2023); the new
        add_lora(student, cfg.lora_rank, None, cfg.lora_targets)  # guidance embedding trains in full
        if student.config.time_cond_proj_dim is not None:
            student.time_embedding.cond_proj.weight.requires_grad_(True)
    return kind, teacher, student


def run(cfg: DistillConfig) -> dict:
    from accelerate import PartialState

    if cfg.from_student:
        from latentgen.train.distill_transfer import run_transfer
        return run_transfer(cfg)
    ctx = prepare(cfg)
    records, prev, resume = [], cfg.model, cfg.resume
    skip_stage1 = cfg.two_pass or ctx["pipe"].unet.config.time_cond_proj_dim is not None
    for name, teacher_steps, steps in plan(cfg.teacher_steps, cfg.min_steps, skip_stage1):
        kind, teacher, student = make_pair(cfg, ctx["pipe"], name, prev)
        res = run_stage(cfg, ctx, name, kind, teacher, student, teacher_steps, steps, resume)
        if not res.get("finished", True):
            print(f"{name} stopped at step {res['step']}; continue with --resume latest")
            return {"finished": False, "stage": name, "step": res["step"]}
        records.append(res)
        prev = os.path.join(cfg.out, name)
        if not res["reused"] and resume != "latest":
            resume = None  # a checkpoint path belongs to the round in progress only
    if not records:
        raise TrainerError(f"nothing to do: the teacher already takes {cfg.teacher_steps} steps "
                           f"and --min-steps is {cfg.min_steps}")
    final = os.path.join(cfg.out, "final")
    if PartialState().is_main_process:
        export(final, cfg, ctx, load_unet(prev), records[-1]["student_steps"], records[-1]["run"])
        print_summary(records, final)
    return {"finished": True, "final": final, "rounds": records}


def main(argv=None) -> dict:
    return main_for(run, DistillConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
