"""Prompts to the text encoder: the prompt arguments, their encoding, and the words a model never learned.

latentgen's tokenizers are learned on the training captions the CLIP way (byte-level BPE
with a ``</w>`` end-of-word suffix, :mod:`latentgen.models.clip`): a word seen often enough in
training is one token, ``word</w>``; any other word is spelled from pieces and the model has
never been taught what it means. :func:`unknown_words` finds those words, so the CLI and the
app can say which words of a prompt will not be drawn instead of drawing silently.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata

logger = logging.getLogger(__name__)

EOW = "</w>"
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters, as CLIP's pre-tokenizer splits them (\p{L}+)


def as_prompt_list(prompt, name: str) -> list[str]:
    """``prompt`` (a string or a non-empty list of them) as a list; a ValueError naming ``name`` otherwise."""
    items = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(p, str) for p in items):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, "
                         f"got {type(prompt).__name__}"
                         + (" (use \"\" for an unconditional image)" if name == "prompt" else ""))
    return list(items)


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device):
    """Text encoder hidden states of ``prompts``, padded to the max length, no attention mask.  # (B, L, D)

    Exactly what stock ``StableDiffusionPipeline`` computes; the trainers' caches use it too.
    Each distinct prompt is encoded once; prompts over the token limit are truncated with a warning.
    """
    unique = list(dict.fromkeys(prompts))
    n = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    ids = tokenizer(unique, padding="max_length", max_length=n, truncation=True,
                    return_tensors="pt").input_ids  # (U, L)
    for text, full in zip(unique, tokenizer(unique, truncation=False).input_ids):
        if len(full) > n:
            dropped = tokenizer.decode(full[n - 1:-1])
            logger.warning("prompt %r is longer than the text encoder's %d tokens; ignoring %r",
                           text, n, dropped)
    emb = text_encoder(ids.to(device), attention_mask=None)[0]  # (U, L, D)
    emb = emb.to(dtype=text_encoder.dtype)
    return emb[[unique.index(p) for p in prompts]]  # (B, L, D)


@functools.lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """The words of ``prompt`` that ``tokenizer`` has no whole-word token (``word</w>``) for: words the
    model never learned. Lowercased (as the tokenizer reads them), each once, in order; numbers and
    punctuation are not words."""
    vocab = tokenizer.get_vocab()
    byte_symbol = _byte_symbols()
    out = []
    for word in _WORD.findall(unicodedata.normalize("NFC", prompt).lower()):
        token = "".join(byte_symbol[b] for b in word.encode("utf-8")) + EOW
        if token not in vocab and word not in out:
            out.append(word)
    return out


def unknown_words_message(words: list[str], examples: str) -> str:
    """One line saying which ``words`` the model never learned and where ``examples`` of prompts are."""
    listed = ", ".join(repr(w) for w in words)
    them = "them" if len(words) > 1 else "it"
    return (f"the model never learned the word{'s' if len(words) > 1 else ''} {listed} (its tokenizer has no "
            f"whole-word token for {them}), so the image will most likely not show {them}; for prompts it "
            f"draws, see {examples}")
