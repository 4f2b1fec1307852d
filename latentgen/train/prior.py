"""What a fine-tune trains on besides the user's folder: prior preservation (Ruiz et al. 2023, Sec. 3.3).

The caption words new to the tokenizer are named (:func:`warn_new_words`). The base model draws images
(:func:`draw_prior`) for the prompts it was trained on (a model folder's ``prompts.txt``, written by the
trainers that export a model, or a file given) alternating with the folder's captions that lost their new
words (:func:`prior_prompts`, :func:`prior_source`), and for a DreamBooth class prompt; those images train
beside the folder so the model keeps what it drew. A DreamBooth instance prompt captions every
image of the folder (:class:`CaptionOverride`).
"""

from __future__ import annotations

import os
import warnings

import torch

NEW_WORD_WARNING_SHARE = 0.2  # of the folder's distinct caption words: more new ones than this is a warning


def read_prompts(path: str) -> list[str]:
    """The non-empty lines of a text file of prompts; a clear error when there are none."""
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts: give a text file with one prompt per line")
    return prompts


def known_prompts(model_dir: str, given: str | None = None) -> tuple[list[str], str] | None:
    """The prompts prior preservation holds a fine-tune of ``model_dir`` to, and where they came from:
    the file ``given``, else the model folder's ``prompts.txt``; None when neither is there."""
    from latentgen.export import KNOWN_PROMPTS_FILE

    path = given or os.path.join(model_dir, KNOWN_PROMPTS_FILE)
    if given is None and not os.path.isfile(path):
        return None
    return read_prompts(path), path


def warn_new_words(tokenizer, captions: list[str],
                   threshold: float = NEW_WORD_WARNING_SHARE) -> tuple[float, list[str]]:
    """Say which caption words are new to the tokenizer and what the fine-tune does about them; warn when
    many are. Returns (their share of the distinct words, the new words)."""
    from latentgen.models.clip import unseen_word_report

    report = unseen_word_report(tokenizer, captions)
    share = len(report.split) / max(report.n_words, 1)
    if report.split:
        shown = ", ".join(f"{w} ({'|'.join(p)})" for w, p in list(report.split.items())[:12])
        print(f"new words: {shown}. The text encoder reads them through these pieces; the UNet learns what "
              "they draw from your images, and the prior images are drawn from your captions without them.")
    if share >= threshold:
        warnings.warn(
            f"{report.summary()} The base text encoder has no meaning for these words: continue CLIP "
            "pretraining on this folder first (latentgen train clip --model BASE --data DIR --out DIR, then "
            "--text-encoder DIR) or fine-tune with --train-text-encoder.", stacklevel=2)
    return share, list(report.split)


def prior_prompts(captions: list[str], new_words: list[str], known: list[str] | None = None) -> list[str]:
    """The prompts of the prior images, in the order they are drawn.

    The folder's captions with their new words left out (DreamBooth's class prompts, Ruiz et al. 2023,
    Sec. 3.3, made from every caption), each followed by it joined to the next with "and" (scenes of two
    things, which a folder of single things would otherwise teach the model to forget); only captions that
    lost a word count: a caption kept whole is what the folder teaches (a known word drawn anew, say "star"),
    and holding the model to its old drawing of it would undo that. With ``known`` (the prompts the base
    model was trained on) the two alternate, the shorter list cycled; without new words, ``known`` alone.
    Without ``known`` or new words: the captions themselves.
    """
    drop = {w.lower() for w in new_words}
    kept = [" ".join(w for w in c.split() if w.lower().strip(",.;:!?") not in drop) for c in captions]
    lost = [k for k, c in zip(kept, captions) if k != " ".join(c.split())]  # captions that lost a word
    derived = _with_pairs(lost)
    if known:
        if not derived:
            return list(known)
        n = max(len(known), len(derived))
        return [p for i in range(n) for p in (known[i % len(known)], derived[i % len(derived)])]
    return derived if lost else _with_pairs(captions)


def _with_pairs(prompts: list[str]) -> list[str]:
    """Each distinct prompt, then it joined to the next with "and"."""
    singles = list(dict.fromkeys(p for p in prompts if p))
    if len(singles) < 2:
        return singles
    pairs = [f"{a} and {b}" for a, b in zip(singles, singles[1:] + singles[:1])]
    return [p for pair in zip(singles, pairs) for p in pair]


def prior_source(model: str, given: str | None, captions: list[str], new_words: list[str]) -> list[str]:
    """The prompts of the prior images (:func:`latentgen.train.prior.prior_prompts`): the prompts the base
    model was trained on (``given``: ``--prior-prompts``, else its folder's ``prompts.txt``) alternating with the
    folder's captions that lost their new words."""
    from latentgen.train.config import TrainerError

    if given and not os.path.isfile(given):
        raise TrainerError(f"--prior-prompts {given}: no such file; give a text file with one prompt "
                           "per line, or leave the flag out")
    try:
        known = known_prompts(model, given)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TrainerError(f"prior prompts: {e}") from e
    prompts = prior_prompts(captions, new_words, known[0] if known else None) or [""]  # "": unconditional
    parts = [f"{len(known[0])} prompts it was trained on ({known[1]})"] if known else []
    parts += ["your captions without their new words"] if new_words else [] if known else ["your captions"]
    note = "" if known else " (its folder has no prompts.txt of the prompts it was trained on)"
    if prompts == [""]:
        print("prior images: the base model's drawings with no prompt (every word of your captions is new and "
              "its folder has no prompts.txt; --prior-prompts FILE gives it prompts to hold to)")
        return prompts
    print(f"prior images: the base model's drawings of {' and of '.join(parts)}{note}, e.g. {prompts[0]!r}")
    return prompts


def draw_prior(pipe, prompts: list[str], n: int, out_dir: str, size: int, seed: int, steps: int,
               guidance: float, batch_size: int = 8) -> str:
    """``n`` images the base model draws for ``prompts`` (cycled), with their captions, as an image folder in
    ``out_dir`` (a resumed run reuses what is there). Image ``i`` is seeded ``seed + i``; ``batch_size`` are
    drawn at once."""
    os.makedirs(out_dir, exist_ok=True)

    def path(i: int) -> str:
        return os.path.join(out_dir, f"prior-{i:04d}.png")

    todo = [i for i in range(n) if not os.path.isfile(path(i))]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch = [prompts[i % len(prompts)] for i in chunk]
        images = pipe(batch, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                      generator=[torch.Generator("cpu").manual_seed(seed + i) for i in chunk]).images
        for i, prompt, image in zip(chunk, batch, images):
            with open(path(i)[:-4] + ".txt", "w") as f:  # the caption first: a PNG is the mark of a done image
                f.write(prompt)
            image.save(path(i) + ".tmp", format="PNG")
            os.replace(path(i) + ".tmp", path(i))  # whole, or not there
    return out_dir


class CaptionOverride(torch.utils.data.Dataset):
    """A folder data set whose captions are replaced by one prompt (the DreamBooth instance prompt)."""

    def __init__(self, dataset, prompt: str):
        self.dataset, self.prompt = dataset, prompt
        self.items = [type(it)(it.path, prompt, it.extra) for it in dataset.items]

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {**self.dataset[i], "caption": self.prompt}
