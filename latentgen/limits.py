"""Bounds shared by the pipeline, the CLI and the app: checked before any model is loaded.

The text encoder reads at most 77 tokens, so no useful prompt is longer than a few hundred
characters; ``MAX_PROMPT_CHARS`` refuses the rest with a short message (a multi-megabyte
prompt would otherwise hold the tokenizer and flood the log). A command's numeric flags
each have a :class:`Bound`, checked by :func:`check_bounds`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

MAX_PROMPT_CHARS = 1000


def check_prompt(text, name: str = "prompt") -> str:
    """``text`` if it is a string of at most ``MAX_PROMPT_CHARS`` characters, else a ValueError that says so."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"the {name} must be text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"the {name} is {len(text):,} characters long; at most {MAX_PROMPT_CHARS:,} are accepted "
            "(the text encoder reads only the first 77 tokens): shorten it"
        )
    return text


def check_sampling(num_inference_steps, n_train: int, guidance_scale, num_images_per_prompt, strength=None):
    """A pipeline call's numbers, each a ValueError naming the accepted range (``strength``: image to image)."""
    if not isinstance(num_inference_steps, numbers.Integral) or not 1 <= num_inference_steps <= n_train:
        raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer from 1 to {n_train}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
            or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale={guidance_scale!r} must be a finite number "
                         "(1 turns guidance off; 3 to 8 is typical)")
    if not isinstance(num_images_per_prompt, numbers.Integral) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1")
    if strength is not None and not (isinstance(strength, numbers.Real) and 0 <= strength <= 1):
        raise ValueError(f"strength={strength!r} must be a number from 0 (keep the image) to 1 (ignore it)")


MAX_CAPTION_CHARS = 2000  # a training caption; longer ones are skipped and reported by the data scanner


@dataclass(frozen=True)
class Bound:
    """The accepted range of a numeric flag, checked before any model is loaded; ``why`` explains it."""

    lo: int | float
    hi: int | float
    why: str = ""

    def help(self, text: str) -> str:
        return f"{text} ({self.lo} to {self.hi}{': ' + self.why if self.why else ''})"


def check_bounds(args, bounds: dict[str, Bound]) -> None:
    """A ValueError naming the first flag of ``args`` outside its ``bounds`` and the accepted range."""
    for flag, b in bounds.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        finite = isinstance(value, int) or math.isfinite(value)  # (isfinite overflows on a huge int)
        if not (finite and b.lo <= value <= b.hi):
            kind = "a whole number" if isinstance(value, int) else "a finite number"
            why = f" ({b.why})" if b.why else ""
            shown = str(value) if len(str(value)) <= 20 else f"{str(value)[:12]}... ({len(str(value))} digits)"
            raise ValueError(f"{flag} {shown}: must be {kind} from {b.lo} to {b.hi}{why}")
