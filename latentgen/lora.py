"""LoRA adapters (Hu et al. 2021) through peft, and their weights in the diffusers format.

    add_lora(unet, rank=8, alpha=None, targets=UNET_LORA_TARGETS)      # only the adapters train
    te = add_text_lora(text_encoder, rank=8, alpha=None)               # a peft wrapper around it
    save_lora(out, unet, te)                                           # out/pytorch_lora_weights.safetensors

The saved file loads with ``LatentGenPipeline.load_lora_weights(out)`` and with stock diffusers'
``StableDiffusionPipeline.load_lora_weights(out)``.
"""

from __future__ import annotations

import os

from torch import nn

LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_INFO = "finetune.json"  # beside LoRA weights: the fine-tune's record, its "base" the model they apply to
UNET_LORA_TARGETS = "to_q,to_k,to_v,to_out.0"
TEXT_LORA_TARGETS = "q_proj,k_proj,v_proj,out_proj"
PEFT_PREFIX = "base_model.model."  # get_peft_model's wrapper: PeftModel.base_model (LoraModel).model


def _config(rank: int, alpha: float | None, targets: str):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                      target_modules=[t.strip() for t in targets.split(",") if t.strip()])


def add_lora(model: nn.Module, rank: int, alpha: float | None, targets: str) -> None:
    """Freeze ``model`` (a diffusers model) and add LoRA adapters of ``rank`` to the modules named in
    ``targets`` (comma-separated); ``alpha`` defaults to the rank."""
    model.requires_grad_(False)
    model.add_adapter(_config(rank, alpha, targets))


def add_text_lora(text_encoder: nn.Module, rank: int, alpha: float | None,
                  targets: str = TEXT_LORA_TARGETS) -> nn.Module:
    """``text_encoder`` (a transformers CLIP text model), frozen, in a peft wrapper with LoRA adapters."""
    from peft import get_peft_model

    text_encoder.requires_grad_(False)
    return get_peft_model(text_encoder, _config(rank, alpha, targets))


def lora_layers(model: nn.Module, convert: bool = True) -> dict:
    """The adapters' weights of ``model`` under the model's own module names (peft's wrapper prefix removed,
    as the loaders want), renamed to diffusers' format with ``convert``.

    diffusers renames only attention projections (``to_q.lora_A`` -> ``to_q.lora.down``), and its UNet
    loader decides the naming of a whole file from its first key: a UNet whose adapters sit on other layers
    too (``conv1``, ``ff.net.2``) must keep peft's names throughout, or the renamed ones are dropped on load."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = {k.removeprefix(PEFT_PREFIX): v for k, v in get_peft_model_state_dict(model).items()}
    return convert_state_dict_to_diffusers(state) if convert else state


def save_lora(out: str, unet: nn.Module, text_encoder: nn.Module | None = None) -> str:
    """Write the adapters of ``unet`` (and ``text_encoder``) to ``out/pytorch_lora_weights.safetensors``."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    StableDiffusionLoraLoaderMixin.save_lora_weights(
        out, unet_lora_layers=lora_layers(unet, convert=False),
        text_encoder_lora_layers=lora_layers(text_encoder) if text_encoder is not None else None,
        safe_serialization=True)
    return os.path.join(out, LORA_FILE)
