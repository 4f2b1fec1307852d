"""What a fine-tune trains on besides the user's folder: prior preservation (Ruiz et al. 2023, Sec. 3.3).

The caption words new to the tokenizer are named (:func:`warn_new_words`); the base model draws images for
the folder's captions without them (:func:`prior_prompts`, :func:`draw_prior`) and for a DreamBooth class
prompt, and those images train beside the folder so the model keeps what it drew. A DreamBooth instance
prompt captions every image of the folder (:class:`CaptionOverride`).
"""

from __future__ import annotations

import os
import warnings

import torch

NEW_WORD_WARNING_SHARE = 0.2  # of the folder's distinct caption words: more new ones than this is a warning


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


def prior_prompts(captions: list[str], new_words: list[str]) -> list[str]:
    """The folder's captions with its new words left out (DreamBooth's class prompts, Ruiz et al. 2023,
    Sec. 3.3, made from every caption), each followed by it joined to the next with "and": scenes of two
    things, which a folder of single things would otherwise teach the model to forget."""
    drop = {w.lower() for w in new_words}
    kept = [" ".join(w for w in c.split() if w.lower().strip(",.;:!?") not in drop) for c in captions]
    singles = list(dict.fromkeys(k for k in kept if k))
    if len(singles) < 2:
        return singles
    pairs = [f"{a} and {b}" for a, b in zip(singles, singles[1:] + singles[:1])]
    return [p for pair in zip(singles, pairs) for p in pair]


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
