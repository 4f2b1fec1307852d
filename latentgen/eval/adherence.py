"""Shapes prompt adherence: does a text-to-image pipeline draw what a shapes prompt says?

Prompts are canonical captions (``latentgen.data.shapes``) of random scenes; each is
drawn once (seeded) and judged by the analytic checker ``check_image``. Groups:

* ``1_object``, ``2_objects``, ``3_objects``: scenes without the held-out colour-shape
  pairs (what the models are trained on), ``n`` prompts each; ``all`` pools them.
* ``heldout``: 1-object prompts naming a held-out pair (purple square, orange triangle,
  green circle), never seen in training: compositional generalisation.
* ``heldout_2_objects``: 2-object prompts, one object a held-out pair.

Each group reports ``full_prompt_accuracy`` (every object right in colour, shape, size
and position, and nothing else drawn), per-attribute accuracy over objects,
``object`` (objects right in every attribute), ``no_stray_colors`` (images with no blob
of a colour the prompt does not name) and ``nothing_else`` (no stray colour and no
second blob of a named colour). Groups of several objects also report ``swapped``: per
attribute (shape, size, position), the share of images in which an object came out with
another named object's value instead of its own -- attribute binding gone wrong.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import torch

from latentgen.data.shapes import ATTRIBUTES, HELDOUT_PAIRS, ShapeObject, canonical_caption, sample_scene
from latentgen.eval.shapes import attribute_accuracy, check_image
from latentgen.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS

# group name -> (objects per prompt, held-out pair required)
GROUPS: dict[str, tuple[int, bool]] = {
    "1_object": (1, False),
    "2_objects": (2, False),
    "3_objects": (3, False),
    "heldout": (1, True),
    "heldout_2_objects": (2, True),
}
POOLED = ("1_object", "2_objects", "3_objects")  # make up "all"


def shapes_eval_set(n: int, seed: int, n_objects: int | None = None,
                    heldout: bool = False) -> list[tuple[str, list[ShapeObject]]]:
    """``n`` (prompt, objects) pairs: canonical captions of random scenes (same arguments, same set).

    ``n_objects`` fixes the objects per scene (1 to 3; None draws it uniformly). Without
    ``heldout`` no object is a held-out colour-shape pair; with it, exactly one object is.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (got {n!r})")
    rng = random.Random(f"latentgen-shapes-eval:{seed}:{n_objects}:{heldout}")
    out = []
    for _ in range(n):
        objects = sample_scene(rng, include_heldout=False, n_objects=n_objects, require_heldout=heldout)
        out.append((canonical_caption(objects, rng), objects))
    return out


def _group_report(results) -> dict:
    acc = attribute_accuracy(results)
    return {
        "n": len(results),
        "full_prompt_accuracy": acc["prompt"],
        **{a: acc[a] for a in ATTRIBUTES},
        "object": acc["object"],
        "no_stray_colors": sum(not r.stray_colors for r in results) / len(results),
        "nothing_else": acc["nothing_else"],
    }


SWAPPABLE = ("shape", "size", "position")


def binding_swaps(results) -> dict:
    """Per attribute, the share of images where an object was drawn with another object's value of it.

    Object ``i`` (found by its colour) swapped ``a`` when its drawn ``a`` is wrong and equals the
    ``a`` that the prompt gives some other object: *a red circle at left and a blue square at right*
    drawn with red at right is a position swap. Attribute-binding failures (T2I-CompBench's
    "attribute binding", Huang et al. 2023) show here rather than as plain errors.
    """
    out = {}
    for a in SWAPPABLE:
        hits = 0
        for r in results:
            named = [getattr(o.expected, a) for o in r.objects]
            hits += any(o.found is not None and getattr(o, a) is False
                        and getattr(o.found, a) in named[:i] + named[i + 1:] for i, o in enumerate(r.objects))
        out[a] = hits / len(results)
    return out


def heldout_breakdown(results) -> dict:
    """Per held-out colour-shape pair: how often its object came out right, its shape right, and
    which shapes were drawn in its place (a model that falls back on the colour's seen shapes
    shows it here)."""
    out = {}
    for r in results:
        for o in r.objects:
            pair = (o.expected.color, o.expected.shape)
            if pair not in HELDOUT_PAIRS:
                continue
            d = out.setdefault(" ".join(pair), {"n": 0, "object": 0, "shape": 0, "drawn": {}})
            d["n"] += 1
            d["object"] += o.ok
            d["shape"] += bool(o.shape)
            drawn = o.found.shape if o.found is not None and o.found.shape else "nothing"
            d["drawn"][drawn] = d["drawn"].get(drawn, 0) + 1
    for d in out.values():
        d["object"], d["shape"] = d["object"] / d["n"], d["shape"] / d["n"]
    return dict(sorted(out.items()))


def resolve_groups(groups: Sequence[str] | None) -> list[str]:
    """The groups to run, in the order given; ``"all"`` adds the 1-, 2- and 3-object groups not already
    named; None is every group. Unknown names are a ValueError."""
    groups = list(GROUPS) if groups is None else list(dict.fromkeys(groups))
    if "all" in groups:
        groups = [g for g in groups if g != "all"] + [g for g in POOLED if g not in groups]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(f"unknown shapes eval group(s) {unknown or '(none given)'}; "
                         f"choose from all, {', '.join(GROUPS)}")
    return groups


def sampler_label(pipe, sampler: str | None) -> str | None:
    """The sampler's name: ``sampler``, else the name of the pipeline's scheduler."""
    if sampler is not None or getattr(pipe, "scheduler", None) is None:
        return sampler
    from latentgen.diffusion import sampler_name

    return sampler_name(pipe.scheduler)


def _generate(pipe, prompts: list[str], seeds: list[int], steps, guidance, sampler, batch_size: int,
              progress: bool, desc: str) -> list:
    from tqdm.auto import tqdm

    kwargs = {"num_inference_steps": steps, "guidance_scale": guidance, "sampler": sampler}
    images = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[chunk]]
        images += pipe(prompt=prompts[chunk], generator=generators, output_type="pil", **kwargs).images
    return images


def generate_images(pipe, prompts: list[str], seeds: list[int], steps, guidance, sampler, batch_size: int,
                    progress: bool = False, desc: str = "shapes eval (batches)") -> tuple[list, float]:
    """``(images, seconds)``: prompt ``i`` drawn with ``torch.Generator("cpu").manual_seed(seeds[i])``, in
    batches of ``batch_size`` (so the images do not depend on it); the pipeline's own progress bars are
    off meanwhile, ``progress`` shows one over batches. ``seconds`` is the generation's wall time."""
    saved_bar = getattr(pipe, "_progress_bar_config", None)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # a bar per pipeline call would flood the terminal
    try:
        t0 = time.perf_counter()
        images = _generate(pipe, prompts, seeds, steps, guidance, sampler, batch_size, progress, desc)
        seconds = time.perf_counter() - t0
    finally:
        if hasattr(pipe, "set_progress_bar_config"):
            pipe._progress_bar_config = saved_bar if saved_bar is not None else {}
    if len(images) != len(prompts):
        raise ValueError(f"the pipeline returned {len(images)} images for {len(prompts)} prompts")
    return images, seconds


def evaluate_shapes(pipe, n: int = 100, steps: int | None = None, sampler: str | None = None,
                    guidance: float | None = None, seed: int = 0, batch_size: int = 8,
                    groups: Sequence[str] | None = None, progress: bool = False) -> dict:
    """Draw ``n`` prompts per group with ``pipe`` and check every image; a JSON-ready report.

    ``pipe`` is a ``LatentGenPipeline`` (or anything called the same way); ``steps`` and
    ``guidance`` left None are the pipeline's defaults (``DEFAULT_STEPS``,
    ``DEFAULT_GUIDANCE``), ``sampler`` None is the model's saved scheduler. Image ``i`` (in
    the order of ``groups``) uses ``torch.Generator("cpu").manual_seed(seed + i)``, so
    results do not depend on ``batch_size``. ``groups`` picks a subset of
    :data:`GROUPS` (``"all"`` means the 1-, 2- and 3-object groups); ``all`` is reported
    whenever those three are all run. ``progress`` shows a bar over batches (on stderr).
    ``seconds_per_image`` times generation only (not the checker), batches included.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
    names = resolve_groups(groups)
    steps = DEFAULT_STEPS if steps is None else steps
    guidance = DEFAULT_GUIDANCE if guidance is None else guidance
    sets = {g: shapes_eval_set(n, seed, *GROUPS[g]) for g in names}
    prompts = [p for g in names for p, _ in sets[g]]
    seeds = [seed + i for i in range(len(prompts))]

    images, seconds = generate_images(pipe, prompts, seeds, steps, guidance, sampler, batch_size, progress)

    results, i = {}, 0
    for g in names:
        results[g] = [check_image(images[i + k], objects) for k, (_, objects) in enumerate(sets[g])]
        i += len(sets[g])
    report = {}
    if all(g in results for g in POOLED):
        report["all"] = _group_report([r for g in POOLED for r in results[g]])
    report.update({g: _group_report(results[g]) for g in names})
    for g in names:
        if GROUPS[g][1]:
            report[g]["by_pair"] = heldout_breakdown(results[g])
        if GROUPS[g][0] != 1:
            report[g]["swapped"] = binding_swaps(results[g])
    report["settings"] = {
        "n_per_group": n, "steps": steps, "guidance": guidance, "sampler": sampler_label(pipe, sampler),
        "seed": seed, "batch_size": batch_size, "image_size": list(images[0].size), "n_images": len(images),
    }
    report["seconds_per_image"] = seconds / len(images)
    return report
