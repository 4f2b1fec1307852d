"""Bounds shared by the pipeline, the CLI and the app: checked before any model is loaded.

The text encoder reads at most 77 tokens, so no useful prompt is longer than a few hundred
characters; ``MAX_PROMPT_CHARS`` refuses the rest with a short message (a multi-megabyte
prompt would otherwise hold the tokenizer and flood the log).
"""

from __future__ import annotations

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


MAX_CAPTION_CHARS = 2000  # a training caption; longer ones are skipped and reported by the data scanner
