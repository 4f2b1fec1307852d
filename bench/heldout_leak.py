"""Whether a model learned a held-out colour-shape pair from an OpenMoji glyph named by it.

    python -m bench.heldout_leak --model latentgen/weights/default --student latentgen/weights/default-4step

OpenMoji names two of the shapes set's held-out pairs: U+1F7E2 *green circle* and U+1F7EA *purple
square* (a disc and a rounded square, each with OpenMoji's black outline): a model trained on them
(`latentgen data emoji --include-heldout`) has seen those two pairs, once each, as emoji. For each
prompt this draws ``--n`` images at the model card's settings (seeds 0..n-1) and counts

* ``checker``: images the shapes checker passes (colour and shape of the one object, nothing else drawn);
* ``named_colour``: images whose saturated pixels' median hue falls in the named colour's hue range
  (``HUES``: OpenMoji's fills and the shapes set's colours both land in their own names' ranges);
* ``outlined``: images whose near-black pixels (every channel below 64) cover more than 2%: OpenMoji's
  outline. The shapes set has no black and no outlines, so a shapes-trained model draws none;
* ``psnr_to_glyph``: the mean PSNR (dB) of the images against the glyph itself, where there is one.

The prompts: the two leaked emoji names; two seen emoji names of the same form as controls (*orange
circle*, *purple circle*); *orange triangle*, the held-out pair OpenMoji has no glyph for; and the
same three held-out pairs in the shapes captions' own form (``a large ... at center``).

Writes ``bench/results/heldout_leak.{json,md,png}`` (``--results`` to write elsewhere); the PNG shows
each glyph and the first 7 images of every prompt.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from bench.common import machine, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "heldout_leak")
GLYPHS = {"green circle": "\U0001F7E2", "purple square": "\U0001F7EA", "orange circle": "\U0001F7E0",
          "purple circle": "\U0001F7E3"}
PROMPTS = ("green circle", "purple square", "orange circle", "purple circle", "orange triangle",
           "a large green circle at center", "a large purple square at center", "a large orange triangle at center")
DARK, OUTLINED = 64, 0.02
HUES = (("red", 15), ("orange", 45), ("yellow", 70), ("green", 170), ("blue", 260), ("purple", 345), ("red", 361))


def dark_fraction(img) -> float:
    """The share of pixels darker than ``DARK`` in every channel."""
    return float((np.asarray(img.convert("RGB")) < DARK).all(-1).mean())


def main_colour(img) -> str | None:
    """The colour name of the median hue of the image's saturated, bright pixels (None: none such)."""
    hsv = np.asarray(img.convert("RGB").convert("HSV"), np.float64)
    keep = (hsv[..., 1] > 90) & (hsv[..., 2] > 90)
    if keep.sum() < 10:
        return None
    hue = float(np.median(hsv[..., 0][keep])) * 360 / 255
    return next(name for name, top in HUES if hue < top)


def psnr(a, b) -> float:
    d = np.asarray(a.convert("RGB"), np.float64) - np.asarray(b.convert("RGB"), np.float64)
    return float(10 * np.log10(255.0 ** 2 / max((d ** 2).mean(), 1e-10)))


def probe(model: str, n: int, sheet: list | None = None) -> dict:
    """Per prompt: ``checker``, ``named_colour``, ``outlined`` (counts of ``n``), ``dark`` (mean share), ``psnr_to_glyph``.

    ``sheet``, a list, gets ``(image, caption)`` for the glyph (if any) and the first 7 images of each prompt."""
    from PIL import Image

    from latentgen import LatentGenPipeline
    from latentgen.data.emoji import render_emoji
    from latentgen.eval.shapes import check_image
    from latentgen.pipeline import read_model_card_defaults

    pipe = LatentGenPipeline.from_pretrained(model)
    card = read_model_card_defaults(model)
    settings = {k: card[k] for k in ("num_inference_steps", "guidance_scale", "sampler") if k in card}
    rows = {}
    for prompt in PROMPTS:
        images = [pipe(prompt, generator=torch.Generator("cpu").manual_seed(s), **settings).images[0]
                  for s in range(n)]
        glyph = render_emoji(GLYPHS[prompt], size=images[0].width) if prompt in GLYPHS else None
        darks = [dark_fraction(im) for im in images]
        if sheet is not None:
            sheet.append((glyph, f"OpenMoji: {prompt}") if glyph else (Image.new("RGB", images[0].size, "white"),
                                                                       "(no glyph)"))
            sheet += [(im, f"{os.path.basename(model.rstrip('/'))}: {prompt}") for im in images[:7]]
        colour = next(w for w in prompt.split() if w in dict(HUES))
        rows[prompt] = {"checker": sum(check_image(im, prompt).correct for im in images),
                        "named_colour": sum(main_colour(im) == colour for im in images),
                        "outlined": sum(d > OUTLINED for d in darks), "dark": float(np.mean(darks)),
                        "psnr_to_glyph": None if glyph is None else float(np.mean([psnr(im, glyph) for im in images]))}
    return {"model": model, "settings": settings, "rows": rows}


def markdown(results: list[dict], n: int, argv: list[str]) -> str:
    lines = [f"# Held-out pairs and OpenMoji's glyphs (n = {n} images a prompt, each model at its card's settings)", "",
             "| model | prompt | checker passes | in the named colour | outlined (OpenMoji style) | mean near-black share "
             "| PSNR to the glyph |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        for prompt, row in r["rows"].items():
            glyph = "" if row["psnr_to_glyph"] is None else f"{row['psnr_to_glyph']:.2f} dB"
            lines.append(f"| `{r['model']}` | {prompt} | {row['checker']}/{n} | {row['named_colour']}/{n} | {row['outlined']}/{n} | "
                         f"{row['dark']:.3f} | {glyph} |")
    lines += ["", f"machine: {machine()}; command: `python -m bench.heldout_leak {' '.join(argv)}`", ""]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="latentgen/weights/default")
    p.add_argument("--student", default=None, help="a second model folder (the 4-step student), probed the same way")
    p.add_argument("--n", type=int, default=16, help="images per prompt")
    p.add_argument("--results", default=RESULTS, help="prefix of the .json and .md written")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sheet: list = []
    results = [probe(m, args.n, sheet) for m in (args.model, args.student) if m]
    from latentgen.eval.grid import image_grid

    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    image_grid([im for im, _ in sheet], [c for _, c in sheet], cols=8, scale=2).save(args.results + ".png")
    write_results(args.results, {"n": args.n, "machine": machine(), "results": results},
                  markdown(results, args.n, sys.argv[1:] if argv is None else list(argv)))
    return results


if __name__ == "__main__":
    main()
