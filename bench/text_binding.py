"""How the text encoder binds a shape word to its colour, for the held-out colour-shape pairs.

    python -m bench.text_binding --model latentgen/weights/default

The UNet's cross-attention reads the text encoder's last hidden states. For every caption
``a {size} {colour} {shape} at {position}`` (2 sizes x 9 positions per pair) this takes the
state at the shape word and compares a pair's state with those of two kinds of seen neighbours
in the same caption frame: the same colour with another shape, and the same shape in another
colour (mean cosine similarity over the 18 frames; the closer neighbour of each kind). Where a
held-out pair's state sits closer to its colour's seen shapes than to its own shape in other
colours, a UNet trained only on seen pairs is pulled towards drawing the colour's seen shape.
Seen pairs give the baseline of the same comparison. The last column is a nearest-centroid
probe: each held-out state classified by the mean state of every shape over the seen pairs
(for the seen baseline, a pair's own states are among those means, which flatters it).

Writes ``bench/results/text_binding.{json,md}`` (``--results`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from bench.common import ROOT, add_text_model_arg, footer, text_model_meta, write_results
from latentgen.data.shapes import COLORS, HELDOUT_PAIRS, POSITIONS, SHAPES, SIZES

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "text_binding")


@torch.no_grad()
def shape_word_states(model: str) -> dict[tuple[str, str], torch.Tensor]:
    """(colour, shape) -> the text encoder's last hidden state at the shape word, (frames, D)."""
    from transformers import AutoTokenizer, CLIPTextModel

    tok = AutoTokenizer.from_pretrained(os.path.join(model, "tokenizer"))
    enc = CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder")).eval()
    out = {}
    for colour in COLORS:
        for shape in SHAPES:
            frames = [(size, pos) for size in SIZES for pos in POSITIONS]
            captions = [f"a {size} {colour} {shape} at {pos}" for size, pos in frames]
            batch = tok(captions, padding="max_length", truncation=True, max_length=tok.model_max_length,
                        return_tensors="pt")
            hidden = enc(input_ids=batch.input_ids).last_hidden_state  # (frames, L, D)
            # the shape word's last piece: the caption's prefix up to it, less the end token
            # (CLIP's BPE splits word by word, so the prefix's pieces start the caption's)
            at = torch.tensor([len(tok(f"a {size} {colour} {shape}").input_ids) - 2 for size, _ in frames])
            out[colour, shape] = hidden[torch.arange(len(captions)), at]  # (frames, D)
    return out


def _sim(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=-1).mean().item()  # frame by frame, then the mean


def binding_table(states: dict) -> list[dict]:
    """A row per held-out pair, then the mean over seen pairs."""
    seen = [p for p in states if p not in HELDOUT_PAIRS]
    centroids = {s: torch.cat([states[c, s2] for c, s2 in seen if s2 == s]).mean(0) for s in SHAPES}
    cent = torch.stack([centroids[s] for s in SHAPES])  # (3, D)

    def row(pair):
        colour, shape = pair
        by_colour = {s: _sim(states[pair], states[colour, s]) for s in SHAPES
                     if s != shape and (colour, s) in seen}
        by_shape = {c: _sim(states[pair], states[c, shape]) for c in COLORS
                    if c != colour and (c, shape) in seen}
        best_s, best_c = max(by_colour, key=by_colour.get), max(by_shape, key=by_shape.get)
        pred = F.cosine_similarity(states[pair][:, None], cent[None], dim=-1).argmax(1)  # (frames,)
        return {"pair": f"{colour} {shape}", "heldout": pair in HELDOUT_PAIRS,
                "same_colour_sim": by_colour[best_s], "same_colour_nearest": f"{colour} {best_s}",
                "same_shape_sim": by_shape[best_c], "same_shape_nearest": f"{best_c} {shape}",
                "colour_wins": by_colour[best_s] > by_shape[best_c],
                "centroid_probe": (pred == SHAPES.index(shape)).float().mean().item()}

    rows = [row(p) for p in sorted(HELDOUT_PAIRS)]
    seen_rows = [row(p) for p in seen]
    rows.append({"pair": f"seen pairs (mean of {len(seen_rows)})", "heldout": False,
                 **{k: sum(r[k] for r in seen_rows) / len(seen_rows)
                    for k in ("same_colour_sim", "same_shape_sim", "colour_wins", "centroid_probe")},
                 "same_colour_nearest": "", "same_shape_nearest": ""})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Text encoder: how the shape word binds to its colour", "",
             (f"Model: `{meta['model']}`. State at the shape word, cosine similarity averaged over "
              f"{len(SIZES) * len(POSITIONS)} caption frames (sizes x positions)."), "",
             ("| pair | closest same colour, other shape | closest same shape, other colour | colour closer "
              "| centroid shape probe |"), "|---|---|---|---:|---:|"]
    for r in rows:
        name = f"**{r['pair']}** (held out)" if r["heldout"] else r["pair"]
        wins = ("yes" if r["colour_wins"] else "no") if r["heldout"] else f"{100 * r['colour_wins']:.0f}% of pairs"
        lines.append(f"| {name} | {r['same_colour_sim']:.3f} {r['same_colour_nearest']} | "
                     f"{r['same_shape_sim']:.3f} {r['same_shape_nearest']} | {wins} | "
                     f"{100 * r['centroid_probe']:.0f}% |")
    lines += footer(meta)
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_text_model_arg(p)
    p.add_argument("--results", default=RESULTS, help="path prefix of the .json and .md results")
    args = p.parse_args(argv)
    meta = text_model_meta("bench.text_binding", args.model, argv, ROOT)
    rows = binding_table(shape_word_states(args.model))
    result = {"meta": meta, "rows": rows}
    write_results(args.results, result, markdown(rows, meta))
    return result


if __name__ == "__main__":
    main()
