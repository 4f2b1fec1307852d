"""Emoji fidelity: does a model's image of an emoji name look like that emoji?

For ``n`` names sampled (seeded) from the emoji a model trains on -- a style's whole set as ``latentgen
data emoji --style`` writes it (the held-out pairs' emoji left out), less the names of ``exclude`` (e.g.
a recipe's ``data/emoji-heldout``) -- the model draws each name once, prompted with the caption the data
gives it, and each image is ranked against *every* render of the style by two distances the model
does not train:

* ``pixel``: Euclidean distance between the images at 32 x 32 RGB (the renders are on white);
* ``feature``: one minus the cosine of EfficientNet-Lite0's pooled ImageNet features
  (``latentgen.eval.efficientnet``).

The rank of the prompted emoji is 1 + the number of renders of other names nearer than the nearest
render of its own. Each distance reports ``top1``, ``top5`` and ``top20`` (the share of names ranked
that high or higher) and ``median_rank``; ``frechet_distance`` (``latentgen.eval.fid``) is between the
images and the renders of their names. With ``heldout`` (an image folder of emoji the model never
trained on, e.g. a recipe's ``data/emoji-heldout``), the names, prompts and images ranked against are
the folder's own (its captions are the prompts): composition of known words, not recall.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from latentgen.data.emoji import emoji_caption, iter_emoji, open_source
from latentgen.data.folder import require_usable, scan_folder
from latentgen.data.images import load_rgb, resize_center_crop
from latentgen.eval.adherence import generate_images, sampler_label
from latentgen.eval.fid import frechet_distance, image_features
from latentgen.eval.grid import image_grid
from latentgen.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS

PIXEL_SIDE = 32
TOPS = (1, 5, 20)
SHEET_NAMES = 12


@dataclass
class Renders:
    """The images each drawn one is ranked against: per image its emoji's name and its prompt."""

    names: list[str]
    prompts: list[str]
    images: list[Image.Image]
    where: str  # what they are, for messages and reports
    _features: np.ndarray | None = field(default=None, repr=False)

    def features(self, device: str = "cpu", batch_size: int = 32) -> np.ndarray:
        """EfficientNet-Lite0 features of the images, computed once.  # (M, 1280)"""
        if self._features is None:
            self._features = image_features(self.images, batch_size, device)
        return self._features


def caption_name(caption: str) -> str:
    """``"rocket, noto style"`` -> ``"rocket"``: the emoji's name in a caption of any style."""
    return re.sub(r", [a-z]+ style$", "", caption)


def style_renders(style: str, size: int, where: str | None = None, style_word: bool = False) -> Renders:
    """Every emoji of ``style`` at ``size`` as ``latentgen data emoji`` draws it, with the data's captions."""
    source = open_source(style, where)
    rows = list(iter_emoji(size, source=source))
    return Renders([name for _, name, _ in rows], [emoji_caption(name, style, style_word) for _, name, _ in rows],
                   [img for _, _, img in rows], f"the {style} set ({source.where})")


def folder_renders(folder: str, size: int) -> Renders:
    """The images of an image folder, resized to ``size``; each caption is its prompt, its name without the
    style words."""
    items = require_usable(scan_folder(folder), folder).items
    images = [resize_center_crop(load_rgb(it.path), size) for it in items]
    captions = [it.caption for it in items]
    return Renders([caption_name(c) for c in captions], captions, images, f"the folder {folder}")


def folder_names(folder: str) -> set[str]:
    """The emoji names of an image folder's captions (without style words)."""
    return {caption_name(it.caption) for it in require_usable(scan_folder(folder), folder).items}


def sample_targets(renders: Renders, n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[int]:
    """Indices of ``n`` renders of distinct names not in ``exclude``, drawn in a seeded order."""
    first: dict[str, int] = {}
    for i, name in enumerate(renders.names):
        if name not in exclude:
            first.setdefault(name, i)
    if not isinstance(n, int) or not 1 <= n <= len(first):
        raise ValueError(f"--n {n}: {renders.where} has {len(first)} names to draw from"
                         f"{' (less the excluded)' if exclude else ''}: give --n from 1 to {len(first)}")
    return random.Random(f"latentgen-emoji-eval:{seed}").sample(sorted(first.values()), n)


# ---------------------------------------------------------------- distances and ranks
def pixel_vectors(images: list[Image.Image], side: int = PIXEL_SIDE) -> np.ndarray:
    """Each image as RGB at ``side`` x ``side`` (box filter), flattened, in [0, 1].  # (N, side * side * 3)"""
    small = [np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BOX), np.float32) for im in images]
    return np.stack(small).reshape(len(images), -1) / 255.0


def pixel_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``a`` (n, D) and ``b`` (M, D).  # (n, M)"""
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One minus the cosine between the rows of ``a`` (n, D) and ``b`` (M, D).  # (n, M)"""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - a @ b.T


def ranks(dist: np.ndarray, names: list[str], targets: list[int]) -> np.ndarray:
    """Per row ``i`` of ``dist`` (n, M): 1 + the renders of other names strictly nearer than the nearest
    render named ``names[targets[i]]`` (ties go to the prompted emoji).  # (n,) int"""
    named = np.asarray(names, dtype=object)
    out = np.empty(len(targets), dtype=np.int64)
    for i, t in enumerate(targets):
        own = named == named[t]
        out[i] = 1 + int((dist[i, ~own] < dist[i, own].min()).sum())
    return out


def rank_summary(r: np.ndarray) -> dict:
    """``top1`` / ``top5`` / ``top20`` shares, the median and mean rank."""
    return {**{f"top{k}": float((r <= k).mean()) for k in TOPS},
            "median_rank": float(np.median(r)), "mean_rank": float(r.mean())}


def score(images: list[Image.Image], renders: Renders, targets: list[int], device: str = "cpu",
          batch_size: int = 32) -> dict:
    """The metrics of ``images`` (image ``i`` drawn for ``renders.prompts[targets[i]]``) against ``renders``."""
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images for {len(targets)} names")
    pix = pixel_distances(pixel_vectors(images), pixel_vectors(renders.images))  # (n, M)
    drawn = image_features(images, batch_size, device)  # (n, 1280)
    every = renders.features(device, batch_size)  # (M, 1280)
    by = {"pixel": ranks(pix, renders.names, targets),
          "feature": ranks(cosine_distances(drawn, every), renders.names, targets)}
    fd = frechet_distance(drawn, every[targets]) if len(targets) > 1 else None
    return {"n": len(targets), "pool": len(renders.images), "pixel": rank_summary(by["pixel"]),
            "feature": rank_summary(by["feature"]), "frechet_distance": fd,
            "names": [{"name": renders.names[t], "prompt": renders.prompts[t], "pixel_rank": int(by["pixel"][i]),
                       "feature_rank": int(by["feature"][i])} for i, t in enumerate(targets)]}


def sample_sheet(images: list[Image.Image], renders: Renders, targets: list[int], report: dict,
                 k: int = SHEET_NAMES) -> Image.Image:
    """The first ``k`` names: each prompt's render above the model's image (with its two ranks)."""
    k = min(k, len(targets))
    rows = report["names"][:k]
    captions = [r["name"] for r in rows] + [f"drawn: pixel #{r['pixel_rank']}, feature #{r['feature_rank']}"
                                            for r in rows]
    return image_grid([renders.images[t] for t in targets[:k]] + list(images[:k]), captions, cols=k, scale=2)


# ---------------------------------------------------------------- the benchmark
def evaluate_emoji(pipe, style: str = "openmoji", n: int = 100, seed: int = 0, steps: int | None = None,
                   guidance: float | None = None, sampler: str | None = None, batch_size: int = 8,
                   where: str | None = None, style_word: bool = False, heldout: str | None = None,
                   exclude: str | None = None, device: str = "cpu", progress: bool = False,
                   renders: Renders | None = None) -> tuple[dict, Image.Image]:
    """Draw ``n`` emoji names with ``pipe`` and rank each image; ``(report, sample sheet)``.

    ``style``, ``where`` and ``style_word`` pick the renders and prompts as ``latentgen data emoji`` does;
    ``heldout`` ranks against an image folder's own images instead; ``exclude`` (an image folder) keeps
    its names from being drawn. Image ``i`` uses seed ``seed + i``; ``steps`` / ``guidance`` None are
    the pipeline's defaults, ``sampler`` None the model's scheduler. ``renders`` given (``style_renders``'
    at the model's size) are used as they are: a caller scoring many models renders once.
    """
    size = pipe.default_size()[1]
    if renders is None:
        renders = folder_renders(heldout, size) if heldout else style_renders(style, size, where, style_word)
    skip = folder_names(exclude) if exclude and not heldout else set()
    targets = sample_targets(renders, n, seed, skip)
    steps = DEFAULT_STEPS if steps is None else steps
    guidance = DEFAULT_GUIDANCE if guidance is None else guidance
    images, seconds = generate_images(pipe, [renders.prompts[t] for t in targets], [seed + i for i in range(n)],
                                      steps, guidance, sampler, batch_size, progress, "emoji eval (batches)")
    report = score(images, renders, targets, device)
    report["settings"] = {"style": None if heldout else style, "heldout": heldout, "exclude": exclude,
                          "excluded_names": len(skip), "style_word": style_word, "seed": seed, "steps": steps,
                          "guidance": guidance, "sampler": sampler_label(pipe, sampler), "image_size": size,
                          "pixel_side": PIXEL_SIDE, "renders": renders.where}
    report["seconds_per_image"] = seconds / n
    return report, sample_sheet(images, renders, targets, report)
