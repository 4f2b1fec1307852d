"""The contrastive objective that pretrains the CLIP text and image towers.

Under ``accelerate launch`` on several processes each process embeds its own share of the batch;
:func:`gather_rows` puts every process's embeddings together, so that :func:`clip_loss` sees the global
batch and every image is ranked against every caption of it (the negatives of all processes), as
open_clip's ``ClipLoss`` does with ``gather_with_grad`` (Ilharco et al. 2021).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
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


class _GatherRows(torch.autograd.Function):
    """All processes' ``x`` (n_p, D), concatenated in rank order (sum n_p, D); the backward gives each process
    the sum of every process's gradient for its own rows (each process's loss is a term of the objective)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        rank, biggest = dist.get_rank(), max(sizes)
        padded = x.new_zeros((biggest, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.n = sum(sizes[:rank]), len(x)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum over processes
        return grad[ctx.start: ctx.start + ctx.n], None


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n, D) of every process, concatenated in rank order (N, D), with gradients: the rows of this
    process are ``x`` (its slice of the result passes gradients back to it; the backward sums the
    gradients of all processes for them, so that with DDP's averaging a loss over the global batch on
    every process trains as that loss does on one process). Processes may hold different ``n`` (0 too).
    Every process must call it, in the same order. Without a process group: ``x`` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    n = torch.tensor([len(x)], device=x.device)
    counts = [torch.empty_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    sizes = [int(c) for c in counts]
    return _GatherRows.apply(x, sizes) if max(sizes) else x


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
