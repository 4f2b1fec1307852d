"""The *noto* case of ``bench.finetune``: a real style the model never saw, learnt from a folder of emoji.

The bundled model trains on OpenMoji's bare names; Noto Color Emoji (Debian ``fonts-noto-color-emoji``) is
a style it never saw. ``--style-images`` Noto emoji (one per emoji group, so no skin-tone twin crosses
over), captioned as ``latentgen data emoji --style noto`` captions them (``rocket, noto style``), are the
fine-tuning folder. Before and after, the model draws three prompt sets of ``--n`` names each (image ``i``
seeded ``seed + i``):

* ``trained``: names of the folder, ``"<name>, noto style"``: recall of what it was shown;
* ``new``: names the base model knows (OpenMoji; the names ``bench.emoji --recipe-heldout 256`` holds out
  are left out of both sets unless ``--no-heldout-names``) that are *not* in the folder, ``"<name>, noto style"``: the style carried to names it was not shown in it;
* ``bare``: the ``new`` names bare, as the base model was trained: what the fine-tune cost the original
  style (ranked among OpenMoji's renders).

Each set is ranked with ``latentgen.eval.emoji.score`` (the prompted emoji among every render of its
style, by pixels and EfficientNet-Lite0 features; Fréchet distance to the renders of its names), and
``style_share`` is the share of images whose features are nearer the Noto render of their name than the
OpenMoji render of the same name (0.5 is a coin; the base model's images are nearer OpenMoji's).
"""

from __future__ import annotations

import os
import random

import numpy as np

from latentgen.data.captions import METADATA_FILE
from latentgen.data.emoji import emoji_caption, emoji_group, iter_emoji, open_source
from latentgen.eval.emoji import Renders, cosine_distances, folder_names, score
from latentgen.eval.fid import image_features
from latentgen.eval.grid import image_grid

STYLE = "noto"
SHEET_NAMES = 8


def style_sets(size: int, n_train: int, n_test: int, seed: int, exclude: set[str], where: str | None = None) -> dict:
    """Noto and OpenMoji renders of the names both draw (less ``exclude``), and seeded, disjoint groups:
    ``train`` (folder) and ``test`` indices, one emoji per group (its first in OpenMoji's order)."""
    openmoji = {name: img for _, name, img in iter_emoji(size)}
    noto_rows = list(iter_emoji(size, source=open_source(STYLE, where)))
    noto = Renders([n for _, n, _ in noto_rows], [emoji_caption(n, STYLE) for _, n, _ in noto_rows],
                   [im for _, _, im in noto_rows], "the noto set")
    first: dict[str, int] = {}
    for i, (seq, name, _) in enumerate(noto_rows):
        if name in openmoji and name not in exclude:
            first.setdefault(emoji_group(seq), i)
    if len(first) < n_train + n_test:
        raise SystemExit(f"error: {len(first)} emoji groups for --style-images {n_train} + --n {n_test}: give fewer")
    picks = random.Random(f"bench-finetune-style:{seed}").sample(sorted(first.values()), n_train + n_test)
    om = Renders(list(openmoji), list(openmoji), list(openmoji.values()), "the openmoji set")
    return {"noto": noto, "openmoji": openmoji, "om": om, "train": picks[:n_train], "test": picks[n_train:]}


def write_style_folder(sets: dict, out: str) -> str:
    """The fine-tuning folder: the ``train`` Noto renders and their captions (``metadata.jsonl``)."""
    import json

    if os.path.isfile(os.path.join(out, METADATA_FILE)):
        return out
    os.makedirs(out, exist_ok=True)
    noto = sets["noto"]
    with open(os.path.join(out, METADATA_FILE + ".tmp"), "w", encoding="utf-8") as meta:
        for k, i in enumerate(sets["train"]):
            noto.images[i].save(os.path.join(out, f"{k:05d}.png"))
            meta.write(json.dumps({"file_name": f"{k:05d}.png", "text": noto.prompts[i]}, ensure_ascii=False) + "\n")
    os.replace(os.path.join(out, METADATA_FILE + ".tmp"), os.path.join(out, METADATA_FILE))
    return out


def style_share(images, sets: dict, targets: list[int], device: str) -> float:
    """Share of images nearer (features, cosine) the Noto render of their name than its OpenMoji render."""
    noto = sets["noto"]
    drawn = image_features(images, 32, device)  # (n, 1280)
    own = noto.features(device)[targets]  # (n, 1280)
    other = image_features([sets["openmoji"][noto.names[t]] for t in targets], 32, device)  # (n, 1280)
    d_own = np.diag(cosine_distances(drawn, own))
    d_other = np.diag(cosine_distances(drawn, other))
    return float((d_own < d_other).mean())


def evaluate_style(pipe, sets: dict, n: int, seed: int, s: dict, device: str) -> tuple[dict, dict]:
    """The three prompt sets' figures, and their images (for the sheet)."""
    from bench.finetune import generate

    noto = sets["noto"]
    trained, new = sets["train"][:n], sets["test"][:n]
    om = sets["om"]
    om_index = {name: i for i, name in enumerate(om.names)}
    images = {"trained": generate(pipe, [noto.prompts[t] for t in trained], seed, s),
              "new": generate(pipe, [noto.prompts[t] for t in new], seed, s),
              "bare": generate(pipe, [noto.names[t] for t in new], seed, s)}
    report = {}
    for key, targets in (("trained", trained), ("new", new)):
        r = score(images[key], noto, targets, device)
        report[key] = {**r, "style_share": style_share(images[key], sets, targets, device)}
    report["bare"] = score(images["bare"], om, [om_index[noto.names[t]] for t in new], device)
    return report, images


def cached_before(pipe, sets: dict, args, s: dict) -> tuple[dict, dict]:
    """The base model's figures and images, kept in the work folder per model, names, n and seed."""
    import hashlib
    import json

    from PIL import Image

    key = json.dumps([os.path.abspath(args.model), sets["train"], sets["test"], args.n, args.seed, s])
    folder = os.path.join(args.work, f"before_noto_{hashlib.sha1(key.encode()).hexdigest()[:10]}")
    path = os.path.join(folder, "report.json")
    if os.path.isfile(path):
        with open(path) as f:
            report = json.load(f)
        return report, {k: [Image.open(os.path.join(folder, f"{k}-{i:03d}.png")).convert("RGB")
                            for i in range(args.n)] for k in ("trained", "new", "bare")}
    report, images = evaluate_style(pipe, sets, args.n, args.seed, s, args.device)
    os.makedirs(folder, exist_ok=True)
    for k, ims in images.items():
        for i, im in enumerate(ims):
            im.save(os.path.join(folder, f"{k}-{i:03d}.png"))
    with open(path + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(path + ".tmp", path)
    return report, images


def style_case(args, s: dict) -> dict:
    from bench import finetune as bf
    from bench.emoji import recipe_heldout

    pipe = bf.load(args)
    size = pipe.default_size()[0]
    exclude = folder_names(recipe_heldout(size, 256)) if args.heldout_names else set()
    sets = style_sets(size, args.style_images, args.n, args.seed, exclude, args.style_source)
    data = write_style_folder(sets, os.path.join(args.work, f"noto_data_{size}px_{args.style_images}_seed{args.seed}"))
    before, shown_before = cached_before(pipe, sets, args, s)
    out = bf.run_dir("noto", args)
    spent = bf.finetune(data, out, args)
    after, shown_after = evaluate_style(bf.load(args, out), sets, args.n, args.seed, s, args.device)
    noto, k = sets["noto"], min(SHEET_NAMES, args.n)
    rows = [("noto", [noto.images[t] for t in sets["test"][:k]]), ("before", shown_before["new"][:k]),
            ("after", shown_after["new"][:k]), ("openmoji", [sets["openmoji"][noto.names[t]]
                                                            for t in sets["test"][:k]]),
            ("bare after", shown_after["bare"][:k])]
    captions = [f"{row}: {noto.names[t]}" for row, _ in rows for t in sets["test"][:k]]
    sheet = image_grid([im for _, ims in rows for im in ims], captions, cols=k, scale=max(1, 96 // size))
    sheet.save(args.results + "_noto.png")
    return {"images": args.style_images, "image_size": size, "n": args.n, "run": out, "data": data,
            "finetune": spent, "sheet": os.path.basename(args.results) + "_noto.png",
            "before": _lean(before), "after": _lean(after)}


def _lean(report: dict) -> dict:
    """The report without its per-name rows (kept: the ranks of the first names, for the sheet)."""
    return {k: {kk: vv for kk, vv in v.items() if kk != "names"} | {"names": v["names"][:SHEET_NAMES]}
            for k, v in report.items()}


def style_markdown(e: dict) -> list[str]:
    def fd(v):
        return "-" if v is None else f"{v:.1f}"

    title = (f"## noto: a real style it never saw ({e['images']} Noto Color Emoji at {e['image_size']} px, "
             f"captioned `<name>, noto style`; {e['n']} names per prompt set)")
    head = ("| model | prompt set | names | style share | pixels top-1 | top-5 | top-20 | features top-1 | top-5 "
            "| top-20 | Fréchet distance |")
    lines = [title, "", head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    sets = (("trained", "`<name>, noto style`, names of the folder"),
            ("new", "`<name>, noto style`, names not in the folder"),
            ("bare", "`<name>` bare, the same names (ranked among OpenMoji)"))
    for when in ("before", "after"):
        for key, label in sets:
            r = e[when][key]
            share = f"{r['style_share']:.2f}" if "style_share" in r else "-"
            cells = [f"{100 * r[d][f'top{t}']:.0f}%" for d in ("pixel", "feature") for t in (1, 5, 20)]
            lines.append(f"| {when} | {label} | {r['n']} | {share} | " + " | ".join(cells)
                         + f" | {fd(r['frechet_distance'])} |")
    note = ("Style share: images nearer (EfficientNet-Lite0 features) the Noto render of their name than its "
            "OpenMoji render. Ranks: the prompted emoji among every render of the style "
            f"({e['after']['new']['pool']} Noto renders). Sample sheet (rows: Noto render, before, after, "
            f"OpenMoji render, the bare name after): `{e['sheet']}`")
    return [*lines, "", note, ""]
