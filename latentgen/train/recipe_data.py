"""The recipe's data stage and its folders: shapes scenes, OpenMoji (part held out by group) and its names in the
other emoji styles, the extra colours and the two-object scenes, under ``<out>/data``; shapes subsets as hard links
of the first images."""

from __future__ import annotations

import json
import os
import shutil

from latentgen.train.config import TrainerError
from latentgen.train.recipe_presets import RecipePreset


def data_dirs(out: str, pr: RecipePreset, extra: bool = False, two_objects: bool = False) -> list[str]:
    """The data stage's folders: shapes, (with ``extra``, the text-conditioned stages) the extra colours, OpenMoji
    and the other emoji styles, (with ``two_objects``, the finetune stage and the distillation of its teacher) the
    2-object scenes."""
    dirs = [os.path.join(out, "data", "shapes")]
    if extra and pr.extra_color_shapes:
        dirs.append(os.path.join(out, "data", "shapes-extra"))
    if pr.emoji != 0:
        dirs.append(os.path.join(out, "data", "emoji"))
        dirs += [os.path.join(out, "data", f"emoji-{style}") for style in pr.styles()]
    if two_objects and pr.two_object_shapes:
        dirs.append(os.path.join(out, "data", "shapes-2obj"))
    return dirs


def emoji_heldout(out: str) -> str:
    """The OpenMoji images the data stage held out (``emoji_holdout``), which the VAE stages validate on."""
    return os.path.join(out, "data", "emoji-heldout")


def refuse_heldout_captions(folder: str) -> None:
    """Stop before training on a folder (say one left from a run with ``--include-heldout``) whose captions
    name a held-out pair."""
    from latentgen.data.shapes import names_heldout_pair

    with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
        bad = [row["text"] for row in map(json.loads, f) if names_heldout_pair(row["text"])]
    if bad:
        raise TrainerError(f"{folder} has {len(bad)} caption(s) naming a held-out pair (e.g. {bad[0]!r}), which "
                           f"this recipe leaves out: delete the folder so the data stage writes it again without "
                           f"them, or pass --include-heldout to train on them")


def _write_shapes(out: str, pr: RecipePreset, seed: int, include_heldout: bool) -> None:
    """The shapes scenes, the extra colours and the 2-object scenes (each its own seed), each written once."""
    from latentgen.data.shapes import write_extra_colors_folder, write_shapes_folder

    folders = {
        "shapes": (pr.shapes, lambda tmp: write_shapes_folder(
            tmp, n=pr.shapes, size=pr.size, seed=seed, include_heldout=include_heldout, paraphrase_prob=0.3)),
        "shapes-extra": (pr.extra_color_shapes, lambda tmp: write_extra_colors_folder(
            tmp, n=pr.extra_color_shapes, size=pr.size, seed=seed)),
        "shapes-2obj": (pr.two_object_shapes, lambda tmp: write_shapes_folder(
            tmp, n=pr.two_object_shapes, size=pr.size, seed=seed + 2, include_heldout=include_heldout,
            paraphrase_prob=0.3, n_objects=2)),
    }
    for name, (n, write) in folders.items():
        folder = os.path.join(out, "data", name)
        if (n or name == "shapes") and not os.path.isfile(os.path.join(folder, "metadata.jsonl")):
            write(folder + ".tmp")
            os.replace(folder + ".tmp", folder)


def _write_emoji(train: str, held: str, pr: RecipePreset, seed: int, include_heldout: bool) -> None:
    """OpenMoji at ``train``; with ``emoji_holdout``, every emoji first (``-all``), then split by group into
    ``train`` and ``held``."""
    from latentgen.data.emoji import split_emoji_folder, write_emoji_folder

    if os.path.isfile(os.path.join(train, "metadata.jsonl")):
        return
    every = train + "-all" if pr.emoji_holdout else train
    if not os.path.isfile(os.path.join(every, "metadata.jsonl")):
        write_emoji_folder(every + ".tmp", size=pr.size, limit=pr.emoji, include_heldout=include_heldout)
        os.replace(every + ".tmp", every)
    if pr.emoji_holdout:  # the held-out folder first: the training folder existing means the split is whole
        split_emoji_folder(every, train + ".tmp", held, pr.emoji_holdout, seed=seed)
        os.replace(train + ".tmp", train)


def _write_style(openmoji: str, folder: str, style: str, size: int, include_heldout: bool) -> None:
    """The names of the OpenMoji training folder ``openmoji`` drawn in ``style`` at ``folder``, captioned with the
    style word: every emoji of the style first (``-all``), then those OpenMoji trains on (hard links)."""
    from latentgen.data.emoji import write_emoji_folder

    if os.path.isfile(os.path.join(folder, "metadata.jsonl")):
        return
    every = folder + "-all"
    if not os.path.isfile(os.path.join(every, "metadata.jsonl")):
        write_emoji_folder(every + ".tmp", size=size, include_heldout=include_heldout, style=style)
        os.replace(every + ".tmp", every)
    with open(os.path.join(openmoji, "metadata.jsonl"), encoding="utf-8") as f:
        keep = {json.loads(line)["emoji"] for line in f if line.strip()}
    with open(os.path.join(every, "metadata.jsonl"), encoding="utf-8") as f:
        _link_rows(every, folder, [line for line in f if line.strip() and json.loads(line)["emoji"] in keep])


def stage_data(out: str, pr: RecipePreset, seed: int, include_heldout: bool) -> dict:
    """Write the recipe's data (what exists is kept) and refuse folders naming a held-out pair unless
    ``include_heldout``; the result lists the folders and says whether the held-out pairs were left out."""
    _write_shapes(out, pr, seed, include_heldout)
    _, *emoji = data_dirs(out, pr)
    # "excluded": from the shapes scenes and OpenMoji both; the model cards say which
    result = {"folders": data_dirs(out, pr, extra=True, two_objects=True),
              "heldout_pairs": "included" if include_heldout else "excluded"}
    if not emoji:
        return result
    held = emoji_heldout(out)
    _write_emoji(emoji[0], held, pr, seed, include_heldout)
    for style, folder in zip(pr.styles(), emoji[1:]):
        _write_style(emoji[0], folder, style, pr.size, include_heldout)
    if not include_heldout:
        two = [os.path.join(out, "data", "shapes-2obj")] if pr.two_object_shapes else []
        for folder in (os.path.join(out, "data", "shapes"), *emoji, *([held] if pr.emoji_holdout else []), *two):
            refuse_heldout_captions(folder)
    if pr.emoji_holdout:
        with open(os.path.join(held, "metadata.jsonl"), encoding="utf-8") as f:
            result.update(emoji_heldout=held, n_emoji_heldout=sum(1 for _ in f))
    return result


def link_or_copy(src: str, dst: str):
    """A hard link of the file ``src`` at ``dst`` (a copy where links fail: another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _link_rows(src: str, dst: str, rows: list[str]) -> None:
    """The folder ``dst`` of the metadata lines ``rows`` of the folder ``src`` and their images (hard links, a copy
    if links fail), written whole or not at all."""
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for line in rows:
        name = json.loads(line)["file_name"]
        link_or_copy(os.path.join(src, name), os.path.join(tmp, name))
    with open(os.path.join(tmp, "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(rows)
    os.replace(tmp, dst)


def _head_folder(src: str, dst: str, n: int) -> str:
    """``dst``: the first ``n`` images of the folder ``src``."""
    if not os.path.isfile(os.path.join(dst, "metadata.jsonl")):
        with open(os.path.join(src, "metadata.jsonl"), encoding="utf-8") as f:
            _link_rows(src, dst, [line for _, line in zip(range(n), f)])
    return dst


def shapes_subset(out: str, n: int) -> str:
    """``data/shapes-N``: the first ``n`` shapes images, one folder for every stage that asks for ``n``."""
    return _head_folder(os.path.join(out, "data", "shapes"), os.path.join(out, "data", f"shapes-{n}"), n)


def share_cache(src: str, dst: str):
    """Hard-link the teacher's latent cache (its unet or finetune run's) into the distillation's: same data, same
    frozen models, same fingerprint, so the distillation does not encode every image again (a copy if links fail)."""
    if not os.path.isdir(src):
        return
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith(".safetensors") and not os.path.exists(os.path.join(dst, name)):
            link_or_copy(os.path.join(src, name), os.path.join(dst, name))
