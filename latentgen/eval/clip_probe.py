"""How well a CLIP ties words to pictures: retrieval, shapes attribute probing, and CLIP score.

- ``retrieval``: text-to-image and image-to-text recall@1/@5 among N held-out candidates.
- ``probe_shapes``: zero-shot attribute probing. For each held-out shapes image, does the model score
  its true caption above each caption with one attribute of one object changed (colour, shape,
  size, position), and above the caption with two objects' colours swapped? A model that treats a
  caption as a bag of words passes the first four kinds but fails ``swap``.
- ``clip_score``: cosine similarity of image and prompt embeddings, x 100, floored at 0
  (Hessel et al. 2021, CLIPScore, Eq. 1 with w = 100, the scale torchmetrics reports).

``attribute_edits`` makes the altered captions; the CLIP trainer reuses it for hard negatives.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

import torch
import torch.nn.functional as F

from latentgen.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, parse_prompt

KINDS = ("color", "shape", "size", "position", "swap")
_VALUES = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}
_KIND_OF = {v: k for k, vs in _VALUES.items() for v in vs}
# Longest first, so that "top left" is one position and not "top" then "left".
_ATTR_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _KIND_OF), key=len, reverse=True)) + r")\b")
_ARTICLE_RE = re.compile(r"\b(an?) (\w)")


def _article(m: re.Match) -> str:
    return ("an " if m.group(2) in "aeiou" else "a ") + m.group(2)


def is_shapes_caption(caption: str) -> bool:
    """Whether ``caption`` is in the shapes grammar (canonical or a paraphrase) with an attribute to edit."""
    try:
        parse_prompt(caption)
    except ValueError:
        return False
    return bool(_ATTR_RE.search(caption.lower()))


def attribute_edits(caption: str) -> dict[str, list[str]]:
    """Every caption that differs from ``caption`` in exactly one attribute word, by kind.

    ``color``/``position``: one object's colour/cell changed to one no object has; ``shape``: one
    object's shape changed; ``size``: one object's size flipped; ``swap``: two objects' colours
    exchanged. Works on the canonical captions and their paraphrases (words are edited in place).
    """
    text = caption.lower()
    spans = [(m.start(), m.end(), m.group(1)) for m in _ATTR_RE.finditer(text)]
    present = defaultdict(set)
    for _, _, word in spans:
        present[_KIND_OF[word]].add(word)

    def replaced(edits: dict[int, str]) -> str:  # span index -> new word
        out, last = [], 0
        for i, (a, b, _) in enumerate(spans):
            out += [text[last:a], edits.get(i, text[a:b])]
            last = b
        return _ARTICLE_RE.sub(_article, "".join(out + [text[last:]]))  # "a orange" would give it away

    edits: dict[str, list[str]] = {k: [] for k in KINDS}
    for i, (_, _, word) in enumerate(spans):
        kind = _KIND_OF[word]
        unique = kind in ("color", "position")  # no two objects share a colour or a cell
        free = [v for v in _VALUES[kind] if v != word and not (unique and v in present[kind])]
        edits[kind] += [replaced({i: v}) for v in free]
    colours = [i for i, (_, _, w) in enumerate(spans) if _KIND_OF[w] == "color"]
    for x in range(len(colours)):
        for y in range(x + 1, len(colours)):
            i, j = colours[x], colours[y]
            edits["swap"].append(replaced({i: spans[j][2], j: spans[i][2]}))
    return edits


def sample_hard_negatives(caption: str, k: int, rng: random.Random) -> list[str]:
    """``k`` altered captions of a shapes caption (none if it is not one), of distinct kinds while
    ``k`` allows (the kinds in a random order, repeated if ``k`` is larger), each edit drawn at random."""
    if k <= 0 or not is_shapes_caption(caption):
        return []
    edits = {kind: v for kind, v in attribute_edits(caption).items() if v}
    if not edits:
        return []
    kinds = []
    while len(kinds) < k:
        kinds += rng.sample(sorted(edits), len(edits))
    return [rng.choice(edits[kind]) for kind in kinds[:k]]


# ---------------------------------------------------------------- embeddings


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    """L2-normalised text embeddings ``(N, D)``, padded to the tokenizer's length as in training."""
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i : i + batch_size])
        ids = tokenizer(chunk, padding="max_length", truncation=True, return_tensors="pt")
        feats = model.get_text_features(input_ids=ids.input_ids.to(_device(model))).pooler_output
        out.append(F.normalize(feats.float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def encode_images(model, processor, images, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings ``(N, D)`` of PIL images (through ``processor``) or a prepared
    ``(N, 3, S, S)`` tensor in [-1, 1]."""
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        if not torch.is_tensor(chunk):
            chunk = processor(images=list(chunk), return_tensors="pt").pixel_values
        feats = model.get_image_features(pixel_values=chunk.to(_device(model))).pooler_output
        out.append(F.normalize(feats.float(), dim=-1))
    return torch.cat(out)


# ---------------------------------------------------------------- metrics


def _recall(sim: torch.Tensor, correct: torch.Tensor, k: int) -> float:
    """Share of rows whose top-``k`` columns of ``sim`` (Q, N) hold a ``correct`` (Q, N) one."""
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (Q, k)
    return correct.gather(1, top).any(1).float().mean().item()


def retrieval(model, tok, processor, images, captions: list[str], ks=(1, 5)) -> dict:
    """Recall@k both ways among the ``N = len(captions)`` pairs given (the benchmark uses 1,000).

    A candidate counts as correct when its caption is the query's own text: identical captions
    (frequent for one-object shapes scenes) cannot be told apart by any text encoder.
    """
    if len(images) != len(captions):
        raise ValueError(
            f"retrieval needs one caption per image: {len(images)} images, {len(captions)} captions"
        )
    model.eval()
    img = encode_images(model, processor, images)  # (N, D)
    txt = encode_texts(model, tok, captions)  # (N, D)
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    label = torch.tensor([ids[c] for c in captions])
    same = label[:, None] == label[None, :]  # (N, N): caption i == caption j
    sim = txt.to(img.device) @ img.t()  # (N texts, N images)
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = _recall(sim, same, k)
        out[f"i2t_r{k}"] = _recall(sim.t(), same, k)
    out["n"] = len(captions)
    return out


def probe_shapes(model, tok, processor, images, captions: list[str]) -> dict:
    """Zero-shot attribute probing on shapes images and their true (canonical) captions.

    For each kind, ``acc[kind]`` is the share of (image, altered caption) pairs where the true caption
    scores higher; ``all_<kind>`` the share of images whose true caption beats every altered one.
    """
    if len(images) != len(captions):
        raise ValueError(
            f"probing needs one caption per image: {len(images)} images, {len(captions)} captions"
        )
    model.eval()
    edits = [attribute_edits(c) for c in captions]
    texts = list(dict.fromkeys(list(captions) + [t for e in edits for ts in e.values() for t in ts]))
    index = {t: i for i, t in enumerate(texts)}
    txt = encode_texts(model, tok, texts)  # (T, D)
    img = encode_images(model, processor, images).to(txt.device)  # (N, D)
    wins, pairs, all_wins, images_with = (defaultdict(int) for _ in range(4))
    for n, (caption, e) in enumerate(zip(captions, edits)):
        true = img[n] @ txt[index[caption]]
        for kind, alts in e.items():
            if not alts:
                continue
            scores = txt[[index[a] for a in alts]] @ img[n]  # (A,)
            beat = (true > scores).sum().item()
            wins[kind] += beat
            pairs[kind] += len(alts)
            all_wins[kind] += int(beat == len(alts))
            images_with[kind] += 1
    out = {kind: wins[kind] / pairs[kind] for kind in KINDS if pairs[kind]}
    out.update({f"all_{kind}": all_wins[kind] / images_with[kind] for kind in KINDS if images_with[kind]})
    out.update({f"n_{kind}": pairs[kind] for kind in KINDS})
    out["n_images"] = len(captions)
    return out


def clip_score(model, processor, tok, images, prompts: list[str]) -> torch.Tensor:
    """CLIPScore ``100 * max(cos(image, prompt), 0)`` per pair, shape ``(N,)`` (Hessel et al. 2021)."""
    if len(images) != len(prompts):
        raise ValueError(
            f"clip_score needs one prompt per image: {len(images)} images, {len(prompts)} prompts"
        )
    model.eval()
    img = encode_images(model, processor, images)
    txt = encode_texts(model, tok, prompts).to(img.device)
    return 100 * (img * txt).sum(-1).clamp(min=0)
