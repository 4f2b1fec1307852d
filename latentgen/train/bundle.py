"""Bundle a finished recipe into the package: ``latentgen/weights/default`` and ``default-4step`` (and
``default-2step`` where the recipe halved its student once more).

    latentgen train recipe --out runs/quick --preset quick
    latentgen eval shapes --model runs/quick/unet > runs/quick/eval_teacher.json      # optional figures
    latentgen train bundle --recipe runs/quick --out latentgen/weights \\
        --eval-teacher runs/quick/eval_teacher.json --eval-student runs/quick/eval_student.json

Each bundled folder is a complete diffusers-layout model folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; the teacher also keeps ``clip/``, the
full CLIP model, for scoring). Weights are stored as fp16 safetensors to keep the package small,
with the configs saying float32, so that diffusers and transformers load them in fp32 (stock
pipelines fail on mixed dtypes). The model card (``README.md``, :mod:`latentgen.train.bundle_card`)
opens with the recommended settings as YAML front matter, which the CLI and the app read, then gives
the data and its licences, the vocabulary, the held-out pairs, the recipe, the training time and the
figures. A NOTICE file beside the folders carries the emoji sets' attributions
(:mod:`latentgen.data.notice`: OpenMoji, which the models were trained on, Noto Color Emoji and Twemoji).

``--clip`` and ``--vae`` swap in parts improved after the recipe without touching what the UNet
learned from: a CLIP continued with ``latentgen train clip --freeze-text`` (its text tower must equal
the teacher's text encoder, tensor for tensor) and a VAE from ``latentgen train vae --decoder-only``
(its encoder and scaling factor must equal the teacher's). Anything else is refused: the UNet would
then be conditioned on, or denoise, something it was never trained on.

A teacher or student made after the recipe (``--teacher``/``--student``: say a UNet fine-tuned with
``latentgen train finetune --lora-rank 0 --text-encoder CLIP`` on a longer-trained text encoder, and its
distillation) names the runs that made it with ``--teacher-runs`` (listed on both cards: the student
descends from the teacher) and ``--student-runs`` (the student's card), in the order they ran.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from latentgen.fsutil import atomic_write_json, atomic_write_text, replace_dir
from latentgen.train.bundle_card import (
    codec_figures,
    extra_data_note,
    guidance_note,
    model_card,
    run_note,
    shapes_figures,
    vocabulary,
)
from latentgen.train.config import TrainerError, main_for, opt
from latentgen.train.recipe_presets import teacher_dir


@dataclass(frozen=True)
class BundleConfig:
    """What to bundle and how: a recipe folder, the parts that replace its own, the cards' settings.
    Not a training run, so none of the loop's knobs."""

    TRAINER: ClassVar[str] = "bundle"
    REQUIRED: ClassVar[tuple[str, ...]] = ("recipe",)

    recipe: str = field(metadata={"help": "a finished `latentgen train recipe` --out folder", "metavar": "DIR"})
    out: str = opt(os.path.join("latentgen", "weights"), "where default/ and default-4step/ (and default-2step/) go", metavar="DIR")
    teacher: str | None = opt(None, "teacher model folder (default: the recipe's teacher: <recipe>/finetune, or "
                              "<recipe>/unet where the preset has no finetune stage)", metavar="DIR")
    student: str | None = opt(None, "4-step student folder (default: <recipe>/distill/round-4)", metavar="DIR")
    half_student: str | None = opt(None, "a student of half the steps, bundled beside it as default-<n>step "
                                   "(default: the recipe's distill2 student where it made one; off: none)",
                                   metavar="DIR")
    sampler: str = opt("dpm++2m", "the teacher's recommended sampler")
    steps: int = opt(25, "the teacher's recommended steps", metavar="N")
    guidance: float | None = opt(None, "recommended guidance (default: the teacher's card)", metavar="X")
    eval_teacher: str | None = opt(None, "`latentgen eval shapes` output for the teacher", metavar="JSON")
    eval_student: str | None = opt(None, "`latentgen eval shapes` output for the student", metavar="JSON")
    eval_half_student: str | None = opt(None, "`latentgen eval shapes` output for the half-step student",
                                        metavar="JSON")
    eval_codec: str | None = opt(None, "bench/results/codec.json (python -m bench.run_all's codec section, run on "
                                 "the bundled teacher): VAE PSNR and CLIP probing for the cards", metavar="JSON")
    clip: str | None = opt(None, "a `latentgen train clip --freeze-text` run of the teacher's CLIP: its clip/ "
                           "replaces the scorer (the text encoder must be unchanged; default: the recipe's scorer "
                           "stage where it ran)", metavar="DIR")
    vae: str | None = opt(None, "a `latentgen train vae --decoder-only` run of the teacher's VAE: its vae/ "
                          "replaces the VAE of both models (the encoder must be unchanged)", metavar="DIR")
    teacher_runs: tuple[str, ...] = opt((), "runs after the recipe that made --teacher, in order (listed on both "
                                        "cards)", nargs="+", metavar="DIR")
    student_runs: tuple[str, ...] = opt((), "runs after the recipe that made --student, in order (listed on its "
                                        "card)", nargs="+", metavar="DIR")
    extra_data: tuple[str, ...] = opt((), "data folders that the later runs trained on beyond the recipe's "
                                      "(listed on both cards)", nargs="+", metavar="DIR")
    fp32: bool = opt(False, "store fp32 weights (twice the size)")

    def __post_init__(self):
        if not self.recipe:
            raise ValueError("bundle needs --recipe (a finished `latentgen train recipe` --out folder)")
        for name in ("teacher_runs", "student_runs", "extra_data"):  # a list or one folder, given from Python
            value = getattr(self, name)
            if isinstance(value, (str, list)):
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


Config = BundleConfig


def tensors(folder: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in ``folder`` whose name starts with ``prefix`` (prefix removed)."""
    from safetensors.torch import load_file

    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        out.update({k[len(prefix):]: v for k, v in load_file(path).items() if k.startswith(prefix)})
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], dtype: torch.dtype) -> bool:
    """Equal tensor for tensor once stored in ``dtype`` (a part continued from the fp16 bundle is fp16-exact)."""
    return a.keys() == b.keys() and all(torch.equal(a[k].to(dtype), b[k].to(dtype)) for k in a)


def check_replacement(kind: str, teacher: str, folder: str, dtype: torch.dtype = torch.float16) -> str:
    """The part folder to bundle from ``folder`` (a run), after checking that the UNet's inputs are unchanged
    as stored in ``dtype``."""
    if kind == "clip":
        from latentgen.models.clip import clip_folder

        part = clip_folder(folder)
        # a text_encoder/ holds the text transformer's tensors, with or without the "text_model." prefix
        text = {k.removeprefix("text_model."): v for k, v in tensors(os.path.join(teacher, "text_encoder")).items()}
        if not text or not _same(text, tensors(part, "text_model."), dtype):
            raise TrainerError(f"{part}: its text tower differs from {teacher}/text_encoder, which the UNet was "
                               "trained on; continue the teacher's CLIP with `train.clip --freeze-text`")
        return part
    from diffusers import AutoencoderKL

    from latentgen.models.vae import vae_folder

    part = vae_folder(folder)
    old, new = (tensors(d) for d in (os.path.join(teacher, "vae"), part))
    keep = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    scale = (AutoencoderKL.load_config(os.path.join(teacher, "vae"))["scaling_factor"],
             AutoencoderKL.load_config(part)["scaling_factor"])
    if not keep or not _same({k: old[k] for k in keep}, {k: new.get(k, torch.empty(0)) for k in keep}, dtype) \
            or scale[0] != scale[1]:
        raise TrainerError(f"{part}: its encoder or scaling factor differs from {teacher}/vae, whose latents the "
                           "UNet was trained on; fine-tune the teacher's VAE with `train.vae --decoder-only`")
    return part


def store_fp16(folder: str) -> None:
    """Rewrite every safetensors file under ``folder`` with fp16 floating tensors; configs say float32."""
    from safetensors.torch import load_file, save_file

    for path in glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True):
        state = load_file(path)
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        if any(torch.isinf(v).any() for v in half.values() if v.is_floating_point()):
            raise TrainerError(f"{path}: a weight overflows fp16; bundle with --fp32")
        save_file(half, path, metadata={"format": "pt"})
    for cfg_path in glob.glob(os.path.join(folder, "*", "config.json")):
        with open(cfg_path) as f:
            cfg = json.load(f)
        if "architectures" in cfg:  # a transformers config: without this it loads in the stored fp16
            cfg["dtype"] = "float32"
            cfg.pop("torch_dtype", None)
            for sub in ("text_config", "vision_config"):
                if isinstance(cfg.get(sub), dict):
                    cfg[sub]["dtype"] = "float32"
            atomic_write_text(cfg_path, json.dumps(cfg, indent=2))


def drop_source_paths(folder: str) -> None:
    """Remove diffusers' ``_name_or_path`` (the folder a part was loaded from on the training machine)
    from the configs of a model's parts: a shipped model should not carry someone's paths."""
    for cfg_path in glob.glob(os.path.join(folder, "*", "config.json")):
        with open(cfg_path) as f:
            cfg = json.load(f)
        if "_class_name" in cfg and cfg.pop("_name_or_path", None) is not None:
            atomic_write_json(cfg_path, cfg, sort_keys=True)


def load_recipe(folder: str) -> dict:
    path = os.path.join(folder, "recipe.json")
    if not os.path.isfile(path):
        raise TrainerError(f"--recipe {folder} has no recipe.json: give a `latentgen train recipe` --out folder")
    with open(path) as f:
        return json.load(f)


def check_models(**folders: str) -> None:
    """Each of ``folders`` (flag name -> folder) is a complete model folder, or a clear error naming the flag."""
    from latentgen.pipeline import check_model_folder

    for flag, folder in folders.items():
        try:
            check_model_folder(folder)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise TrainerError(f"--{flag}: {e}") from None


def swapped_parts(cfg: BundleConfig, recipe: dict, teacher: str, dtype: torch.dtype) -> dict:
    """``{"clip" | "vae": (part folder, note for the later runs or None)}``: the parts that replace the
    teacher's, each checked to keep the UNet's inputs (the recipe's own scorer stage is one, without a note:
    its minutes are the recipe's)."""
    scorer = recipe.get("done", {}).get("scorer")
    recipe_scorer = cfg.clip is None and isinstance(scorer, dict) and not scorer.get("skipped")
    clip_run = os.path.join(cfg.recipe, "scorer") if recipe_scorer else cfg.clip
    return {kind: (check_replacement(kind, teacher, d, dtype), None if kind == "clip" and recipe_scorer
                   else run_note(d))
            for kind, d in (("clip", clip_run), ("vae", cfg.vae)) if d}


def copy_parts(src: str, tmp: str, extra: tuple[str, ...], swaps: dict, fp32: bool) -> list[str]:
    """Write to ``tmp`` the model parts of ``src`` (and ``extra``) with the ``swaps`` that concern it, without
    source paths, in fp16 unless ``fp32``; the later-run notes of the swapped parts."""
    from latentgen.export import copy_model

    copy_model(src, tmp, extra)
    mine = {part: swap for part, swap in swaps.items() if part in extra + ("vae",)}  # vae/: both models
    for part, (folder, _) in mine.items():
        shutil.rmtree(os.path.join(tmp, part))
        shutil.copytree(folder, os.path.join(tmp, part), ignore=shutil.ignore_patterns("*.bin", "*.pt"))
    drop_source_paths(tmp)
    if not fp32:
        store_fp16(tmp)
    return [note for _, note in mine.values() if note]


def half_student(cfg: BundleConfig, recipe: dict) -> str | None:
    """The half-step student to bundle: ``--half-student``, else the recipe's distill2 student where it made one
    (None with ``off``, or none made)."""
    if cfg.half_student == "off":
        return None
    if cfg.half_student:
        return cfg.half_student
    done = recipe.get("done", {}).get("distill2")
    if not isinstance(done, dict) or done.get("skipped") or not done.get("final"):
        return None
    return os.path.join(cfg.recipe, "distill2", f"round-{recipe['config']['student_steps'] // 2}")


def student_settings(folder: str, steps: int, guidance: float) -> dict:
    """A student's card settings: DDIM at its own card's steps (``steps`` where it has none) and guidance."""
    from latentgen.modelcard import read_card_defaults

    card = read_card_defaults(folder)
    return {"sampler": "ddim", "num_inference_steps": card.get("num_inference_steps", steps),
            "guidance_scale": card.get("guidance_scale", guidance)}


def run(cfg: BundleConfig) -> dict:
    from latentgen.data.notice import notice_text
    from latentgen.modelcard import read_card_defaults
    from latentgen.pipeline import DEFAULT_GUIDANCE

    recipe = load_recipe(cfg.recipe)
    teacher = cfg.teacher or teacher_dir(cfg.recipe, recipe.get("config", {}))
    student = cfg.student or os.path.join(cfg.recipe, "distill", "round-4")
    half = half_student(cfg, recipe)
    check_models(teacher=teacher, student=student, **({"half_student": half} if half else {}))
    guidance = cfg.guidance if cfg.guidance is not None else \
        read_card_defaults(teacher).get("guidance_scale", DEFAULT_GUIDANCE)
    swaps = swapped_parts(cfg, recipe, teacher, torch.float32 if cfg.fp32 else torch.float16)
    teacher_runs = [run_note(d) for d in cfg.teacher_runs]
    extra_data = [extra_data_note(d) for d in cfg.extra_data]
    runs = {"default": teacher_runs, "default-4step": teacher_runs + [run_note(d) for d in cfg.student_runs]}
    jobs = {
        "default": (teacher, ("clip",), "teacher", cfg.eval_teacher,
                    {"sampler": cfg.sampler, "num_inference_steps": cfg.steps, "guidance_scale": guidance}),
        "default-4step": (student, (), "student", cfg.eval_student, student_settings(student, 4, guidance)),
    }
    if half:
        settings = student_settings(half, 2, guidance)
        name = f"default-{settings['num_inference_steps']}step"
        runs[name] = runs["default-4step"]
        jobs[name] = (half, (), "student", cfg.eval_half_student, settings)
    os.makedirs(cfg.out, exist_ok=True)
    written = {}
    for name, (src, extra, kind, figures, settings) in jobs.items():
        dst = os.path.join(cfg.out, name)
        tmp = dst + ".tmp"
        notes = copy_parts(src, tmp, extra, swaps, cfg.fp32)
        shown = shapes_figures(figures) + (guidance_note(src) if kind == "student" else []) \
            + codec_figures(cfg.eval_codec, "clip" in extra)
        atomic_write_text(os.path.join(tmp, "README.md"),
                          model_card(kind, settings, recipe, vocabulary(tmp), shown, runs[name] + notes, extra_data))
        replace_dir(tmp, dst)  # whole or not at all
        written[name] = dst
    styles = bool(recipe.get("config", {}).get("emoji_styles"))
    atomic_write_text(os.path.join(cfg.out, "NOTICE"), notice_text(trained_styles=styles))
    size = sum(os.path.getsize(p) for d in written.values()
               for p in glob.glob(os.path.join(d, "**", "*"), recursive=True) if os.path.isfile(p))
    print(f"bundled {', '.join(written.values())}: {size / 1e6:.1f} MB in all")
    return {"folders": written, "bytes": size}


def main(argv=None) -> dict:
    return main_for(run, BundleConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
