"""The contrastive objective that pretrains the CLIP text and image towers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned temperature so that exp(scale) <= 100


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    negative_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with a learned temperature (Radford et al. 2021, CLIP, Fig. 3 pseudocode).

    ``L = (CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2`` over L2-normalised embeddings, with
    ``s = exp(min(logit_scale, ln 100))`` (the clamp of Sec. 2.5; no gradient flows past it).
    ``negative_text_embeds`` (K, D) are extra captions that every image must rank below its own: the
    hard negatives of NegCLIP (Yuksekgonul et al. 2023, Sec. 4), which join only the image-to-text term.
    """
    with torch.autocast(image_embeds.device.type, enabled=False):  # bf16 cosines x 100 are too coarse
        image = F.normalize(image_embeds.float(), dim=-1)  # (B, D)
        text = F.normalize(text_embeds.float(), dim=-1)  # (B, D)
        scale = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * image @ text.t()  # (B, B): image i against caption j
        target = torch.arange(len(image), device=image.device)
        text_to_image = F.cross_entropy(logits.t(), target)
        if negative_text_embeds is not None:
            negatives = F.normalize(negative_text_embeds.float(), dim=-1)  # (K, D)
            logits = torch.cat([logits, scale * image @ negatives.t()], dim=1)  # (B, B + K)
        image_to_text = F.cross_entropy(logits, target)
    return (image_to_text + text_to_image) / 2


def token_identity_loss(
    hidden: torch.Tensor,
    token_embedding: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scale: float = 10.0,
) -> torch.Tensor:
    """Each token's final state must name its own token: ``CE(scale * cos(h_i, E), x_i)`` over the real tokens.

    CLIP's loss trains only the end-of-text state, so a word's own state may keep little of the word (a causal
    text tower writes it into the states after it instead). The UNet cross-attends to every state, and to take
    colour and shape from separate words it needs each word's state to carry that word. This ties the read-out
    to the input token embeddings ``E`` (V, D), so it adds no weights; cosine logits with a fixed ``scale``
    keep the norms out of it. ``hidden`` (B, L, D) after the final layer norm, ``input_ids`` and
    ``attention_mask`` (B, L); padding is left out.
    """
    with torch.autocast(hidden.device.type, enabled=False):
        h = F.normalize(hidden.float(), dim=-1)  # (B, L, D)
        e = F.normalize(token_embedding.float(), dim=-1)  # (V, D)
        logits = scale * h @ e.t()  # (B, L, V)
        keep = attention_mask.bool()  # (B, L)
        return F.cross_entropy(logits[keep], input_ids[keep])
