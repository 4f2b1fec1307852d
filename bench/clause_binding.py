"""Do the text encoder's word states know which object they belong to?

    python -m bench.clause_binding --model latentgen/weights/default

Two-object prompts (``a {size} {colour} {shape} at {position} and a {size} {colour} {shape} at
{position}``, the eval's canonical form) go through the text encoder; a linear probe (multinomial
logistic regression, fitted on one set of prompts and scored on another) reads, from the last hidden
state at a word, the colour of that word's own object. For words of the first object only its colour
came before, so the probe tests whether context survives in the state at all; for words of the second
object both colours came before, so it tests binding: a state that keeps the colours seen but not
which goes with it scores about half (and names the other object's colour the rest of the time).
A UNet reading position from the position word and colour from the colour word needs that binding to
put each colour at its place; the eval's ``swapped`` counts what happens without it.

Writes ``bench/results/clause_binding.{json,md}`` (``--results`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import os
import random

import torch
import torch.nn.functional as F

from bench.common import ROOT, add_text_model_arg, footer, text_model_meta, write_results
from latentgen.data.shapes import COLORS, HELDOUT_PAIRS, POSITIONS, SHAPES, SIZES

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "clause_binding")
WORDS = ("shape", "position")  # the words probed in each object's clause
COLOURS = list(COLORS)


def two_object_prompts(n: int, seed: int) -> list[tuple[str, list[dict]]]:
    """``n`` prompts of two objects (distinct colours and positions, no held-out pair), seeded."""
    rng = random.Random(f"clause-binding:{seed}")
    out = []
    while len(out) < n:
        objs = [{"size": rng.choice(SIZES), "colour": c, "shape": rng.choice(SHAPES), "position": p}
                for c, p in zip(rng.sample(COLOURS, 2), rng.sample(POSITIONS, 2))]
        if any((o["colour"], o["shape"]) in HELDOUT_PAIRS for o in objs):
            continue
        clauses = [f"a {o['size']} {o['colour']} {o['shape']} at {o['position']}" for o in objs]
        out.append((" and ".join(clauses), objs))
    return out


@torch.no_grad()
def word_states(model: str, prompts: list[tuple[str, list[dict]]]) -> dict[tuple[int, str], torch.Tensor]:
    """(object 0 or 1, word) -> the last hidden state at that word's last piece, (N, D)."""
    from transformers import AutoTokenizer, CLIPTextModel

    tok = AutoTokenizer.from_pretrained(os.path.join(model, "tokenizer"))
    enc = CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder")).eval()
    longest = max(len(ids) for ids in tok([p for p, _ in prompts]).input_ids)
    if longest > tok.model_max_length:
        raise SystemExit(f"error: the prompts run to {longest} tokens but {model}'s tokenizer reads "
                         f"{tok.model_max_length}: give a text encoder that reads whole two-object prompts")
    batch = tok([p for p, _ in prompts], padding="max_length", max_length=tok.model_max_length,
                return_tensors="pt")
    hidden = enc(input_ids=batch.input_ids).last_hidden_state  # (N, L, D)
    rows = torch.arange(len(prompts))
    out = {}
    for k in (0, 1):
        for word in WORDS:
            # the caption's prefix up to the word, less its end token: CLIP's BPE splits word by word
            at = []
            for _, objs in prompts:
                head = " and ".join(f"a {o['size']} {o['colour']} {o['shape']} at {o['position']}" for o in objs[:k])
                o = objs[k]
                clause = f"a {o['size']} {o['colour']} {o['shape']}" + (f" at {o['position']}" if word == "position" else "")
                at.append(len(tok(f"{head} and {clause}" if head else clause).input_ids) - 2)
            out[k, word] = hidden[rows, torch.tensor(at)]  # (N, D)
    return out


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300,
              weight_decay: float = 1e-3) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS), seeded."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def probe_table(train: dict, test: dict, train_objs: list, test_objs: list) -> list[dict]:
    """A row per (object, word): the probe's accuracy on the test prompts for the object's own colour,
    and how often it names the other object's colour instead."""
    rows = []
    for (k, word), x in train.items():
        mean, std = x.mean(0), x.std(0) + 1e-6
        y = torch.tensor([COLOURS.index(objs[k]["colour"]) for objs in train_objs])
        probe = fit_probe((x - mean) / std, y, len(COLOURS))
        with torch.no_grad():
            pred = probe((test[k, word] - mean) / std).argmax(1)  # (N,)
        own = torch.tensor([COLOURS.index(objs[k]["colour"]) for objs in test_objs])
        other = torch.tensor([COLOURS.index(objs[1 - k]["colour"]) for objs in test_objs])
        rows.append({"object": k + 1, "word": word, "own_colour": (pred == own).float().mean().item(),
                     "other_colour": (pred == other).float().mean().item()})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Text encoder: does a word's state know its object's colour?", "",
             (f"Model: `{meta['model']}`. Linear probe on the last hidden state at a word, fitted on "
              f"{meta['n_train']} two-object prompts and scored on {meta['n_test']} others; chance 1/{len(COLOURS)}. "
              "For the second object both colours come before its words: a state that keeps them unbound "
              "scores about 50% own colour, 50% other."), "",
             "| object | word | probe: own colour | probe: the other object's colour |", "|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['object']} | {r['word']} | {100 * r['own_colour']:.1f}% | {100 * r['other_colour']:.1f}% |")
    lines += footer(meta)
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_text_model_arg(p)
    p.add_argument("--n-train", type=int, default=2000, help="prompts the probe is fitted on")
    p.add_argument("--n-test", type=int, default=1000, help="other prompts it is scored on")
    p.add_argument("--results", default=RESULTS, help="path prefix of the .json and .md results")
    args = p.parse_args(argv)
    if args.n_train < 10 or args.n_test < 1:
        raise SystemExit("error: --n-train must be at least 10 and --n-test at least 1")
    meta = text_model_meta("bench.clause_binding", args.model, argv, ROOT,
                           n_train=args.n_train, n_test=args.n_test)
    train_p, test_p = two_object_prompts(args.n_train, seed=0), two_object_prompts(args.n_test, seed=1)
    rows = probe_table(word_states(args.model, train_p), word_states(args.model, test_p),
                       [o for _, o in train_p], [o for _, o in test_p])
    result = {"meta": meta, "rows": rows}
    write_results(args.results, result, markdown(rows, meta))
    return result


if __name__ == "__main__":
    main()
