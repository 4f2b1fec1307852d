"""A fine-tune's fast student in seconds: the fine-tune's weight change added to a student of its base.

    latentgen train distill --model models/mine --from-student latentgen/weights/default-4step --out runs/mine-4step

Task arithmetic (Ilharco et al. 2023): fine-tuning moves the teacher's UNet by tau = theta_ft - theta_base. A
student distilled from theta_base stays close to it in weight space, so it takes the same move, theta_student
+ lambda * tau, and keeps its few-step sampling (as LCM-LoRA's acceleration vector is added to a fine-tuned
model, Luo et al. 2023, Eq. 9, here the other way round): seconds, no training. lambda is
``--transfer-scale``: 1.125 by default, as a student moved by tau alone fell short of its teacher on a new
shape (README, Fine-tune); ``auto`` takes the one of :data:`SCALES` whose student draws the fine-tune's own
captions nearest to their images (:func:`choose_scale`; about 12 s more at 64 px on 2 cores). On the bench's
four default fine-tunes (star and teal, two training seeds each) auto took 1.125 three times and 1.5 once, and
1.0 for a whole-UNet star fine-tune: new words right within 3 points of 1.125's each time, so it stays a
choice. The student's scheduler, step count and guidance come along, and the fine-tune's VAE and text encoder.
``--refine-steps N`` with ``--data`` then trains the moved student so that each of its steps matches the
fine-tuned teacher's guided DDIM over it (:func:`refine`); on a few dozen images that costs the prompts it
knew.
The base is the model the fine-tune's ``finetune.json`` names (a LoRA fine-tune: the model it applies to).
"""

from __future__ import annotations

import os

import torch

from latentgen.train.config import TrainerError

FAR = 0.5  # median relative distance of a student's weights from its base's beyond which it is not one of its
SCALES = (1.0, 1.125, 1.25, 1.5)  # what --transfer-scale auto chooses among
FALLBACK = 1.125  # auto's scale where the fine-tune's images are not found
PAIRS = 40  # auto: at most this many of the fine-tune's image-caption pairs, spread over its folders


def task_vector_sum(student: dict, base: dict, tuned: dict, scale: float = 1.0) -> tuple[dict, dict]:
    """``student + scale * (tuned - base)`` for every weight the three share (Ilharco et al. 2023, Eq. 1);
    the student's own weights (its guidance embedding) are kept. Returns the weights and a report."""
    missing = [k for k in base if k not in student or k not in tuned]
    bad = [k for k in base if k in student and k in tuned and not (base[k].shape == student[k].shape ==
                                                                    tuned[k].shape)]
    if missing or bad:
        raise TrainerError(f"the student's UNet is not of its base's architecture ({len(missing)} weights missing, "
                           f"{len(bad)} of another shape, e.g. {(missing + bad)[0]}): give a student distilled "
                           "from the model the fine-tune started from")
    out, dist, move = {}, [], []
    for k, w in student.items():
        if k not in base:
            out[k] = w
            continue
        b = base[k].float()
        tau = tuned[k].float() - b
        out[k] = (w.float() + scale * tau).to(w.dtype)
        norm = b.norm().clamp_min(1e-8)
        dist.append(float((w.float() - b).norm() / norm))
        if tau.any():  # a LoRA moves only the weights it adapts
            move.append(float(tau.norm() / norm))
    med = sorted(dist)[len(dist) // 2]
    return out, {"weights_moved": len(move), "weights_shared": len(dist), "student_from_base_median": round(med, 4),
                 "fine_tune_move_median": round(sorted(move)[len(move) // 2], 4) if move else 0.0, "scale": scale}


def scales_of(value) -> tuple[float, ...]:
    """``--transfer-scale``: ``auto`` (:data:`SCALES`), or one number above 0 and at most 4."""
    if str(value).strip().lower() == "auto":
        return SCALES
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not 0 < x <= 4:  # nan fails too
        raise TrainerError(f"--transfer-scale must be auto, or a number above 0 and at most 4 (1 adds what the "
                           f"fine-tune changed once), got {value}")
    return (x,)


def fine_tune_pairs(cfg, size: int) -> tuple[list[str], torch.Tensor | None]:
    """Up to :data:`PAIRS` captions and their images, ``(N, 3, size, size)`` in [0, 1], evenly spread over the
    fine-tune's own folders (``--data``, else those its ``finetune.json`` names); ``([], None)`` where none is
    found."""
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.lora import LORA_INFO
    from latentgen.train.base import read_json

    folders = [f for f in (cfg.data or read_json(os.path.join(cfg.model, LORA_INFO)).get("data", []))
               if os.path.isdir(f)]
    try:
        ds = ImageCaptionDataset(folders, size=size) if folders else []
    except (OSError, ValueError):
        return [], None
    if not len(ds):
        return [], None
    items = [ds[i * len(ds) // min(PAIRS, len(ds))] for i in range(min(PAIRS, len(ds)))]
    return [it["caption"] for it in items], torch.stack([(it["pixels"] + 1) / 2 for it in items])


@torch.no_grad()
def choose_scale(pipe, student, weights, captions: list[str], images: torch.Tensor, sampling: dict,
                 scales=SCALES) -> tuple[float, dict]:
    """The scale whose moved student draws ``captions`` nearest to ``images``:
    argmin_lambda mean_i ||x_lambda(c_i, z_i) - x_i||^2, pixels in [0, 1], z_i seeded i so that every lambda starts
    from the same noise. ``weights(lambda)`` gives the moved weights (a state dict); ``pipe`` is the student's
    pipeline."""
    dist = {}
    for lam in scales:
        student.load_state_dict(weights(lam))
        drawn = []
        for start in range(0, len(captions), 8):
            chunk = captions[start:start + 8]
            gens = [torch.Generator("cpu").manual_seed(start + i) for i in range(len(chunk))]
            drawn.append(pipe(chunk, generator=gens, output_type="pt", **sampling).images.cpu().float())
        dist[lam] = float(((torch.cat(drawn) - images) ** 2).mean())  # (N, 3, S, S)
    return min(dist, key=dist.get), dist


def fine_tune_base(model_dir: str) -> str:
    """The model folder whose UNet the fine-tune in ``model_dir`` started from."""
    from latentgen.lora import LORA_INFO
    from latentgen.train.base import lora_base, read_json

    parts = lora_base(model_dir)
    if parts is not None:  # a LoRA: the UNet it applies to is its parts folder's
        return parts
    base = read_json(os.path.join(model_dir, LORA_INFO)).get("base")
    if not base or not os.path.isfile(os.path.join(base, "model_index.json")):
        raise TrainerError(f"--from-student needs the model {model_dir} was fine-tuned from: its {LORA_INFO} "
                           f"(written by latentgen train finetune) names {base or 'none'}, which is not a model "
                           "folder here; distil it by training instead (leave --from-student out)")
    return base


def refine(cfg, pipe, student, scheduler, steps: int) -> tuple:
    """``(student, report)``: ``student`` trained for ``cfg.refine_steps`` on ``cfg.data`` (and the fine-tune's
    ``prior_images``): each of its DDIM steps matches
    ``cfg.refine_substeps`` guided DDIM steps of the teacher ``pipe`` (:func:`latentgen.distill.
    interval_distillation_loss`), at guidance scales drawn from [guidance_min, guidance_max]; a run in
    ``<out>/refine`` (resumable)."""
    from latentgen.cache import LatentDataset, load_or_build_cache
    from latentgen.train.common import image_folders
    from latentgen.train.distill import is_pow2, make_step_fn
    from latentgen.training import Trainer

    if not cfg.data or not is_pow2(cfg.refine_substeps) or cfg.refine_steps < 0:
        raise TrainerError("--refine-steps N needs --data (the fine-tune's images; its prior_images come along) and "
                           f"--refine-substeps a power of two (got {cfg.refine_substeps})")
    size = pipe.default_size()[0]
    prior = os.path.join(cfg.model, "prior_images")  # a fine-tune's own: what it was held to, kept here too
    data = image_folders([*cfg.data, *([prior] if os.path.isdir(prior) else [])], size, empty_captions=True)
    cache = load_or_build_cache(data, pipe.vae.eval(), pipe.tokenizer, pipe.text_encoder.eval(),
                                os.path.join(cfg.out, "cache"), size)
    # the student's own DDIM schedule, on its trailing grid
    step_fn = make_step_fn("interval", cache, float(pipe.vae.config.scaling_factor), scheduler.alphas_cumprod.clone(),
                           steps, cfg.guidance_min, cfg.guidance_max, substeps=cfg.refine_substeps)
    loop = cfg.loop(out=os.path.join(cfg.out, "refine"), max_steps=cfg.refine_steps)
    trainer = Trainer(loop, student.train(), LatentDataset(cache), step_fn, frozen={"teacher": pipe.unet.eval()},
                      run_config=cfg.record(examples=len(data)), may_change=cfg.may_change())
    student = trainer.fit()
    if not trainer.finished:
        raise TrainerError(f"refining stopped at step {trainer.step}: run the same command with --resume latest")
    return student, {"steps": trainer.step, "substeps": cfg.refine_substeps, "examples": len(data)}


def auto_note(chosen: dict | None, scales) -> str:
    """What ``--transfer-scale auto`` did, for the card and the log ('' for a scale given)."""
    if chosen is None:
        return ""
    among = ", ".join(f"{x:g}" for x in scales)
    if not chosen.get("distances"):
        return (f", {FALLBACK:g} as the fine-tune's images were not found to choose among {among} (give them "
                "with --data)")
    dist = ", ".join(f"{lam}: {d:.5f}" for lam, d in chosen["distances"].items())
    return (f", the scale among {among} whose student draws the fine-tune's captions nearest to their "
            f"{chosen['images']} images (mean squared distance by scale: {dist})")


def run_transfer(cfg) -> dict:
    """Write ``<out>/final``: ``cfg.from_student`` moved by the fine-tune ``cfg.model`` made of its base."""
    from diffusers import DDIMScheduler

    from latentgen.export import KNOWN_PROMPTS_FILE, export_model
    from latentgen.modelcard import read_card_defaults
    from latentgen.models.presets import CONFIG_NAME, load_config
    from latentgen.models.unet import UNetConfig
    from latentgen.pipeline import LatentGenPipeline, check_model_folder
    from latentgen.train.base import load_merged
    from latentgen.train.config import command_for
    from latentgen.train.distill import load_unet

    try:
        student_dir = check_model_folder(cfg.from_student)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise TrainerError(f"--from-student: {e}") from None
    scales = scales_of(cfg.transfer_scale)
    pipe, parts = load_merged(cfg.model)  # the fine-tuned UNet (a LoRA merged), its VAE and text encoder
    base_dir = fine_tune_base(cfg.model)
    student = load_unet(student_dir)
    own = {k: v.clone() for k, v in student.state_dict().items()}
    base, tuned = load_unet(base_dir).state_dict(), pipe.unet.state_dict()
    weights, report = task_vector_sum(own, base, tuned, scales[0])
    if report["student_from_base_median"] > FAR:
        raise TrainerError(f"{student_dir}'s UNet is far from {base_dir}'s (median relative distance "
                           f"{report['student_from_base_median']}): it is not a student of the model "
                           f"{cfg.model} was fine-tuned from; give that model's student")
    defaults = read_card_defaults(student_dir)
    steps, guidance = defaults.get("num_inference_steps", 4), defaults.get("guidance_scale", 4.0)
    scheduler = DDIMScheduler.from_pretrained(student_dir, subfolder="scheduler")
    out = LatentGenPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                            unet=student.eval(), scheduler=scheduler)
    out.set_progress_bar_config(disable=True)
    scale, chosen = scales[0], None
    if len(scales) > 1:
        captions, images = fine_tune_pairs(cfg, out.default_size()[0])
        scale, chosen = FALLBACK, {"images": len(captions)}
        if captions:
            sampling = {"sampler": defaults.get("sampler", "ddim"), "num_inference_steps": steps,
                        "guidance_scale": guidance}
            scale, dist = choose_scale(out, student, lambda lam: task_vector_sum(own, base, tuned, lam)[0],
                                       captions, images, sampling, scales)
            chosen["distances"] = {f"{lam:g}": round(d, 6) for lam, d in dist.items()}
        weights, report = task_vector_sum(own, base, tuned, scale)
        report["auto"] = chosen
    student.load_state_dict(weights)
    if cfg.refine_steps:
        student, report["refine"] = refine(cfg, pipe, student, scheduler, steps)
    final = os.path.join(cfg.out, "final")
    record = cfg.record(base=os.path.abspath(base_dir), student=os.path.abspath(student_dir), **report)
    configs = {}
    if os.path.isfile(os.path.join(student_dir, "unet", CONFIG_NAME)):
        configs["unet"] = load_config(UNetConfig, os.path.join(student_dir, "unet"))
    has_prompts = os.path.isfile(os.path.join(cfg.model, KNOWN_PROMPTS_FILE))
    card = {"front": {"sampler": defaults.get("sampler", "ddim"), "num_inference_steps": steps,
                      "guidance_scale": guidance, "distillation": "task vector"},
            "title": f"latentgen fine-tuned student: {steps} steps",
            "body": [(f"The student in `{student_dir}` moved by "
                      + ("" if scale == 1 else f"{scale:g} times ")
                      + f"what the fine-tune in `{cfg.model}` changed in its base `{base_dir}` (task "
                      "arithmetic, Ilharco et al. 2023)" + auto_note(chosen, scales)
                      + (f", then refined for {cfg.refine_steps} steps: each of its steps matches "
                         f"{cfg.refine_substeps} guided DDIM steps of the fine-tune" if cfg.refine_steps else
                         ": no training") + ". It samples as that student does, and `negative_prompt` does what "
                      "it does there.")],
            "command": command_for(cfg), "record": record}
    with torch.no_grad():
        export_model(final, out, configs=configs, sources={"vae": parts, "text_encoder": parts}, clip_from=parts,
                     prompts_from=cfg.model if has_prompts else parts, card=card)
    print(f"student: {student_dir} + {scale:g} x (fine-tune - base){auto_note(chosen, scales)}: "
          f"{report['weights_moved']} of {report['weights_shared']} weights moved (the fine-tune moved them by a "
          f"median {report['fine_tune_move_median']:.2%}; the student sits {report['student_from_base_median']:.2%} "
          f"from its base); saved to {final}")
    return {"finished": True, "final": final, **report}
