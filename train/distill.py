"""Distil a guided text-to-image model into a fast student: 64 steps with guidance -> 4, 2, 1 steps.

    python -m train.distill --model runs/unet --data data/shapes64 --out runs/distill \
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
progress from its last checkpoint. ``--max-steps`` is the default for both
``--stage1-steps`` and ``--steps-per-round``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings

import torch

from latentgen.fsutil import atomic_write_text
from train import common

DONE_FILE = "distill_round.json"
GUIDANCE_MAX = 8.0  # the default --guidance-max (train.recipe presets and train.bundle's cards refer to it)


def parse_args(argv=None):
    p = common.base_parser(__doc__.splitlines()[0], needs_model=True)
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher-steps", type=int, default=64, help="DDIM steps of the teacher (a power of two)")
    g.add_argument("--min-steps", type=int, default=1, help="stop when the student takes this many steps")
    g.add_argument("--stage1-steps", type=int, help="steps of stage 1 (default: --max-steps, or 2000)")
    g.add_argument("--steps-per-round", type=int,
                   help="training steps per halving (default: --max-steps, or 2000)")
    g.add_argument("--last-round-steps", type=int,
                   help="training steps of the last halving, the one to --min-steps (default: --steps-per-round)")
    g.add_argument("--guidance-min", type=float, default=1.0, help="smallest guidance scale learnt")
    g.add_argument("--guidance-max", type=float, default=GUIDANCE_MAX, help="largest guidance scale learnt")
    g.add_argument("--guidance", type=float,
                   help="guidance scale the model cards recommend (default: the teacher's, else 5)")
    g.add_argument("--time-cond-proj-dim", type=int, default=256, help="width of the guidance embedding")
    g.add_argument("--size", type=int, help="image side the data is prepared at (default: the teacher's)")
    g.add_argument("--val-prompts", type=int, default=8, help="captions drawn in each round's sample grid")
    g.add_argument("--freeze-text-kv", action="store_true",
                   help="keep every student's cross-attention key/value projections (how it reads the prompt) "
                        "at the teacher's and train the rest")
    g.add_argument("--lora-rank", type=int, default=0,
                   help="train each student as a LoRA of this rank on its teacher (plus the guidance "
                        "embedding), merged into the exported weights; 0 = train every weight")
    g.add_argument("--two-pass", action="store_true",
                   help="skip stage 1: every student stays a plain UNet sampled with classifier-free guidance "
                        "(two passes a step, negative prompts work) and learns the guided teacher's two steps")
    g.add_argument("--lora-targets", default="to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2",
                   help="comma-separated UNet module names the LoRA adapts")
    return p.parse_args(argv)


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


def check_args(args, num_train_timesteps: int):
    """Clear errors for settings that cannot work, before anything heavy runs."""
    if not _is_pow2(args.teacher_steps) or args.teacher_steps > num_train_timesteps:
        raise SystemExit(f"error: --teacher-steps {args.teacher_steps} must be a power of two up to "
                         f"{num_train_timesteps} (e.g. 64), so each halving lands on the teacher's timesteps")
    if not _is_pow2(args.min_steps) or args.min_steps > args.teacher_steps:
        raise SystemExit(f"error: --min-steps {args.min_steps} must be a power of two no larger than "
                         f"--teacher-steps {args.teacher_steps} (e.g. 4, 2 or 1)")
    if not 0 <= args.guidance_min <= args.guidance_max:
        raise SystemExit(f"error: need 0 <= --guidance-min ({args.guidance_min}) <= --guidance-max "
                         f"({args.guidance_max}); e.g. 1 and 8")
    if args.lora_rank < 0:
        raise SystemExit(f"error: --lora-rank must be >= 0 (0 = train every weight), got {args.lora_rank}")
    if args.lora_rank and args.freeze_text_kv:
        raise SystemExit("error: --freeze-text-kv and --lora-rank both choose what the student trains: give one")
    for name in ("stage1_steps", "steps_per_round", "last_round_steps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {v}")


def load_teacher(model_dir: str):
    """The teacher pipeline and the DDIM scheduler every student is saved with (trailing, alpha_0 = 1)."""
    from latentgen.diffusion import make_scheduler
    from latentgen.pipeline import LatentGenPipeline, check_model_folder

    try:
        pipe = LatentGenPipeline.from_pretrained(check_model_folder(model_dir))
    except (FileNotFoundError, NotADirectoryError) as e:
        raise SystemExit(f"error: --model: {e}") from None
    cfg = dict(pipe.scheduler.config)
    if cfg.get("prediction_type") != "v_prediction":
        raise SystemExit(f"error: the teacher in {model_dir} predicts {cfg.get('prediction_type')!r}; "
                         "progressive distillation needs a v-prediction teacher (latentgen's schedule, "
                         "as train.unet trains)")
    cfg.update(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    scheduler = make_scheduler("ddim", cfg)
    if float(scheduler.alphas_cumprod[-1]) > 1e-6:
        warnings.warn(f"the teacher's schedule does not reach zero terminal SNR (alpha_bar_T = "
                      f"{float(scheduler.alphas_cumprod[-1]):.2g}); few-step students start from pure noise "
                      "and will be off (Lin et al. 2023): train teachers with latentgen's schedule",
                      stacklevel=2)
    return pipe, scheduler


def plan(teacher_steps: int, min_steps: int, skip_stage1: bool) -> list[tuple[str, int, int]]:
    """(folder name, teacher steps, student steps) for stage 1 (unless the teacher is already a
    guidance-conditioned student, or students stay two-pass) and each halving."""
    stages = [] if skip_stage1 else [("stage1", teacher_steps, teacher_steps)]
    n = teacher_steps
    while n > min_steps:
        stages.append((f"round-{n // 2}", n, n // 2))
        n //= 2
    return stages


def make_step_fn(kind: str, cache, scaling: float, alphas_cumprod, student_steps: int, gmin: float,
                 gmax: float, two_pass: bool = False):
    from latentgen.cache import sample_latents
    from latentgen.distill import guided_distillation_loss, progressive_distillation_loss

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
        uncond_b = uncond.to(ctx.device).expand(b, -1, -1) if kind == "guided" or two_pass else None
        if kind == "guided":
            loss = guided_distillation_loss(student, teacher, z0, cond, uncond_b, g, student_steps,
                                            alphas_cumprod, ctx.generator)
        else:
            loss = progressive_distillation_loss(student, teacher, z0, cond, g, student_steps, alphas_cumprod,
                                                 ctx.generator, uncond_b)
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


def write_model_card(folder: str, steps: int, guidance: float, run: dict):
    stage = "guided distillation (Meng et al. 2023, stage 1)" if run["stage"] == "stage1" else \
        f"progressive distillation (Salimans & Ho 2022), {run['teacher_steps']} -> {steps} steps"
    gmin, gmax = run["guidance"]
    if run.get("two_pass"):
        how = [(f"Sample it with DDIM at `num_inference_steps={steps}` (this folder's scheduler) and a guidance "
                f"scale from {gmin} to {gmax}. It is a plain UNet sampled with classifier-free guidance, as "
                "its teacher: two passes a step (one batched call), and `negative_prompt` works."), ""]
    else:
        how = [(f"Sample it with DDIM at `num_inference_steps={steps}` (this folder's scheduler) and a guidance "
                f"scale from {gmin} to {gmax}. The guidance scale is an input of the UNet (the "
                "embedding of `guidance_scale - 1`, as stock diffusers computes it for a UNet with "
                "`time_cond_proj_dim`), so each step is one conditional UNet pass, not two."), "",
               ("**`negative_prompt` is ignored.** The student has no unconditional pass: in stock "
                "`diffusers.StableDiffusionPipeline` (and in `LatentGenPipeline`) a negative prompt has no "
                "effect."), ""]
    lines = [
        "---", "sampler: ddim", f"num_inference_steps: {steps}", f"guidance_scale: {guidance}",
        f"guidance_range: [{gmin}, {gmax}]", f"distillation: {run['stage']}", "---", "",
        f"# latentgen distilled student: {steps} DDIM step{'s' if steps > 1 else ''}", "",
        f"Made by `python -m train.distill` from the model in `{run['teacher']}`: {stage}.", "",
        *how,
        "## Training", "", "```json", json.dumps(run, indent=2), "```", "",
    ]
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def export(folder: str, teacher_pipe, teacher_dir: str, unet, scheduler, steps: int, guidance: float,
           run: dict):
    """A complete model folder: the student UNet, the teacher's VAE and text encoder, DDIM, a model card."""
    from latentgen.models.presets import CONFIG_NAME, copy_config, load_config, save_config
    from latentgen.models.unet import UNetConfig

    build_pipeline(teacher_pipe, unet, scheduler).save_pretrained(folder, safe_serialization=True)
    cfg_path = os.path.join(teacher_dir, "unet")
    if os.path.isfile(os.path.join(cfg_path, CONFIG_NAME)):
        ucfg = dataclasses.replace(load_config(UNetConfig, cfg_path),
                                   time_cond_proj_dim=unet.config.time_cond_proj_dim)
        save_config(ucfg, os.path.join(folder, "unet"))
    for part in ("vae", "text_encoder"):  # the teacher's, unchanged: their preset configs go with them
        copy_config(os.path.join(teacher_dir, part), os.path.join(folder, part))
    if os.path.isdir(os.path.join(teacher_dir, "clip")):
        shutil.copytree(os.path.join(teacher_dir, "clip"), os.path.join(folder, "clip"), dirs_exist_ok=True)
    write_model_card(folder, steps, guidance, run)


def finished_round(folder: str, run: dict) -> dict | None:
    """The record of a finished round in ``folder`` (None if unfinished); an error if its settings differ."""
    path = os.path.join(folder, DONE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    saved, now = record["run"], json.loads(json.dumps(run))
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise SystemExit(f"error: {folder} was finished with other settings ({', '.join(diff)}: "
                         f"{ {k: saved.get(k) for k in diff} } then, { {k: now.get(k) for k in diff} } now); "
                         "rerun with the original settings, or choose a new --out")
    return record


def _losses(folder: str) -> list[float]:
    path = os.path.join(folder, "logs", "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def stage_max_steps(args, ctx: dict, kind: str, steps: int) -> int:
    """Training steps of one stage: --stage1-steps, --steps-per-round, or --last-round-steps for the last."""
    if kind == "progressive" and steps == args.min_steps and args.last_round_steps:
        return args.last_round_steps
    return ctx["max_steps"][kind]


def run_stage(args, name: str, kind: str, teacher_unet, student_unet, teacher_steps: int, steps: int,
              ctx: dict, resume: str | None) -> dict:
    """Train one stage or round with the shared loop and export its model folder."""
    from latentgen.cache import LatentDataset
    from latentgen.training import Trainer

    folder = os.path.join(args.out, name)
    max_steps = stage_max_steps(args, ctx, kind, steps)
    run = {**ctx["run"], "stage": name, "teacher_steps": teacher_steps, "student_steps": steps,
           "max_steps": max_steps}
    record = finished_round(folder, run)
    if record is not None:
        print(f"{name}: finished earlier, reusing {folder}")
        return {**record, "reused": True}
    if resume is None and os.path.isdir(os.path.join(folder, "checkpoints")) and \
            os.listdir(os.path.join(folder, "checkpoints")):
        raise SystemExit(f"error: {folder} holds checkpoints of an unfinished run: pass --resume latest to "
                         "continue it, or delete that folder to start the round again")
    cfg = dataclasses.replace(ctx["cfg"], out=folder, max_steps=max_steps, resume=resume)
    t0 = time.time()
    trainer = Trainer(cfg, student_unet, LatentDataset(ctx["cache"]),
                      make_step_fn(kind, ctx["cache"], ctx["scaling"], ctx["alphas_cumprod"], steps,
                                   args.guidance_min, args.guidance_max, args.two_pass),
                      frozen={"teacher": teacher_unet},
                      validate_fn=make_validate_fn(ctx["pipe"], ctx["scheduler"], ctx["prompts"], steps,
                                                   ctx["guidance"]),
                      run_config=run)
    unet = trainer.fit()
    if not trainer.finished:
        return {"finished": False, "step": trainer.step}
    if args.lora_rank:  # the exported student is a plain UNet: the LoRA folded into its weights
        unet.fuse_lora()
        unet.unload_lora()
    losses = _losses(folder)
    record = {"run": run, "folder": folder, "student_steps": steps, "steps_trained": trainer.step,
              "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
              "seconds": round(time.time() - t0, 1)}
    if trainer.is_main:
        export(folder, ctx["pipe"], args.model, unet, ctx["scheduler"], steps, ctx["guidance"], run)
        atomic_write_text(os.path.join(folder, DONE_FILE), json.dumps(record, indent=2))
    trainer.accelerator.wait_for_everyone()
    return {**record, "reused": False}


def print_summary(records: list[dict], final: str):
    print("\ndistillation summary")
    print(f"{'stage':<12}{'steps':>6}{'trained':>9}{'loss first':>12}{'loss last':>11}{'seconds':>9}")
    for r in records:
        fmt = lambda x: "-" if x is None else f"{x:.4g}"
        print(f"{r['run']['stage']:<12}{r['student_steps']:>6}{r['steps_trained']:>9}"
              f"{fmt(r['loss_first']):>12}{fmt(r['loss_last']):>11}{r['seconds']:>9}"
              + ("  (reused)" if r.get("reused") else ""))
    print(f"final model ({records[-1]['student_steps']} steps): {final}")


def prepare(args) -> dict:
    """The teacher, the cached data and everything the rounds share."""
    from accelerate import PartialState

    from latentgen.cache import load_or_build_cache
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.pipeline import DEFAULT_GUIDANCE, read_model_card_defaults

    pipe, scheduler = load_teacher(args.model)
    check_args(args, scheduler.config.num_train_timesteps)
    if args.two_pass and pipe.unet.config.time_cond_proj_dim is not None:
        raise SystemExit("error: --two-pass needs a plain guided teacher (two passes a step), but the UNet in "
                         f"{args.model} takes a guidance embedding: give the original model, or drop --two-pass")
    guidance = args.guidance if args.guidance is not None else \
        read_model_card_defaults(args.model).get("guidance_scale", DEFAULT_GUIDANCE)
    guidance = min(max(guidance, args.guidance_min), args.guidance_max)
    size = args.size or pipe.default_size()[0]
    data = ImageCaptionDataset(args.data, size=size)
    with PartialState().main_process_first():  # under accelerate launch one process builds the cache
        cache = load_or_build_cache(data, pipe.vae.eval(), pipe.tokenizer, pipe.text_encoder.eval(),
                                    os.path.join(args.out, "cache"), size)
    default_steps = args.max_steps or 2000
    cfg = common.train_config(args, max_steps=default_steps, batch_size=32, lr=1e-4, checkpoint_every=500,
                              validate_every=0, seed=0)
    proj_dim = pipe.unet.config.time_cond_proj_dim or args.time_cond_proj_dim
    return {
        "pipe": pipe, "scheduler": scheduler, "cache": cache, "cfg": cfg, "guidance": guidance,
        "scaling": float(pipe.vae.config.scaling_factor), "alphas_cumprod": scheduler.alphas_cumprod.clone(),
        "prompts": list(dict.fromkeys(it.caption for it in data.items))[:args.val_prompts] or [""],
        "max_steps": {"guided": args.stage1_steps or default_steps,
                      "progressive": args.steps_per_round or default_steps},
        "run": {"trainer": "distill", "teacher": os.path.abspath(args.model),
                "guidance": [args.guidance_min, args.guidance_max], "time_cond_proj_dim": proj_dim,
                "size": size, "examples": len(data), "batch_size": cfg.batch_size, "lr": cfg.lr,
                "seed": cfg.seed,
                # a --lr-schedule restarts in every stage and round (each decays to 0 at its own end);
                # constant runs keep the record they had before the flag, so their rounds are reused
                **({"lr_schedule": cfg.lr_schedule} if cfg.lr_schedule != "constant" else {}),
                **({"freeze_text_kv": True} if args.freeze_text_kv else {}),
                **({"two_pass": True} if args.two_pass else {}),
                **({"lora_rank": args.lora_rank, "lora_targets": args.lora_targets} if args.lora_rank else {})},
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    from accelerate import PartialState
    from diffusers import UNet2DConditionModel

    from latentgen.distill import copy_unet, freeze_text_kv, make_student
    from train.finetune import add_lora

    ctx = prepare(args)
    pipe = ctx["pipe"]
    load = lambda folder: UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"),
                                                               use_safetensors=True)
    records, prev, resume = [], args.model, args.resume
    for name, teacher_steps, steps in plan(args.teacher_steps, args.min_steps,
                                           args.two_pass or pipe.unet.config.time_cond_proj_dim is not None):
        if name == "stage1":  # guided distillation: the student learns the guided teacher
            teacher, kind = pipe.unet, "guided"
            student = make_student(teacher, args.time_cond_proj_dim)
        else:  # progressive: the last student is the teacher, and a copy of it the new student
            teacher, kind = (pipe.unet if prev == args.model else load(prev)), "progressive"
            student = copy_unet(teacher)
        if args.freeze_text_kv:
            freeze_text_kv(student)
        if args.lora_rank:  # a LoRA on the teacher's weights, as LCM-LoRA (Luo et al. 2023); the new
            add_lora(student, args.lora_rank, None, args.lora_targets)  # guidance embedding trains in full
            if student.config.time_cond_proj_dim is not None:
                student.time_embedding.cond_proj.weight.requires_grad_(True)
        res = run_stage(args, name, kind, teacher, student, teacher_steps, steps, ctx, resume)
        if not res.get("finished", True):
            print(f"{name} stopped at step {res['step']}; continue with --resume latest")
            return {"finished": False, "stage": name, "step": res["step"]}
        records.append(res)
        prev = os.path.join(args.out, name)
        if not res["reused"] and resume != "latest":
            resume = None  # a checkpoint path belongs to the round in progress only
    if not records:
        raise SystemExit(f"error: nothing to do: the teacher already takes {args.teacher_steps} steps "
                         f"and --min-steps is {args.min_steps}")
    final = os.path.join(args.out, "final")
    if PartialState().is_main_process:
        export(final, pipe, args.model, load(prev), ctx["scheduler"], records[-1]["student_steps"],
               ctx["guidance"], records[-1]["run"])
        print_summary(records, final)
    return {"finished": True, "final": final, "rounds": records}


if __name__ == "__main__":
    main()
