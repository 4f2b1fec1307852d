"""``LatentGenPipeline``: prompt (and optionally an image) to image, in the diffusers layout.

A model folder holds ``model_index.json`` and the five components ``vae/``,
``text_encoder/``, ``tokenizer/``, ``unet/`` and ``scheduler/`` (safetensors weights).
The pipeline keeps stock diffusers' contract, so a latentgen folder runs in
``diffusers.StableDiffusionPipeline`` (same image for the same seed) and a Stable
Diffusion folder runs here:

* VAE images are in [-1, 1]; latents are ``vae.encode(x) * vae.config.scaling_factor``
  (no shift factor, as in Stable Diffusion).
* ``unet.config.sample_size`` is the latent side: the default image side is
  ``sample_size * vae_scale_factor``.
* The unconditional prompt is the encoding of ``""`` padded to the tokenizer's max
  length, with no attention mask (what caption dropout trains on).
* ``guidance_scale <= 1`` turns classifier-free guidance off (one conditional pass).
  A guidance-conditioned student (``unet.config.time_cond_proj_dim`` set) is fed the
  embedding of ``guidance_scale - 1`` and runs one conditional pass; it ignores
  ``negative_prompt``.
* The saved ``scheduler/`` is the recommended sampler; ``sampler="euler"`` etc. picks
  another one on the same noise schedule (``latentgen.diffusion.make_scheduler``).

Cancelling: a ``callback_on_step_end`` that sets ``pipe._interrupt = True`` (diffusers'
convention; another thread may set it too) stops the loop after the current step.
The call then returns normally, with ``output.interrupted = True`` and
``output.steps_done``; its images are decoded from the model's latest estimate of the
clean image (the x0 prediction of the last step run), not from the noisy latents.

Image-to-image (SDEdit, Meng et al. 2022): ``image`` is encoded (posterior mean),
noised to the timestep ``strength`` of the way into the schedule, and denoised from
there: ``int(num_inference_steps * strength)`` steps are run, so ``strength=0``
returns the input's VAE round trip and ``strength=1`` ignores the input. PIL images of
any mode are converted to RGB (transparency composited on white) and resized, with a
warning, to ``height`` x ``width`` (default: the model's native size).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from latentgen.diffusion import SAMPLERS, alpha_sigma, make_scheduler, pred_x0
from latentgen.limits import check_prompt
from latentgen.pngmeta import read_png_params, save_png_with_params

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_STEPS",
    "LatentGenPipeline",
    "LatentGenPipelineOutput",
    "check_lora_source",
    "check_model_folder",
    "check_weight_files",
    "read_model_card_defaults",
    "read_png_params",
    "resolve_model_dir",
    "save_png_with_params",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "default")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0
FOLDER_CONTENTS = (
    "a model folder holds model_index.json and unet/, vae/ and text_encoder/ (each a config.json and "
    ".safetensors weights), tokenizer/ (tokenizer.json, or vocab.json and merges.txt) and scheduler/ "
    "(scheduler_config.json), as LatentGenPipeline.save_pretrained or the trainers write it"
)


@dataclass
class LatentGenPipelineOutput(BaseOutput):
    """``images``: PIL images, a (B, H, W, 3) array, a (B, 3, H, W) tensor in [0, 1], or latents."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    interrupted: bool = False
    steps_done: int = 0


# ---------------------------------------------------------------- model folders
def _has(folder: str, *names: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, n)) for n in names)


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
PICKLE_HELP = ("pickle files can run arbitrary code when loaded, so latentgen loads safetensors only: convert the "
               "weights to safetensors, or pass trust_pickle=True (CLI: --trust-pickle) if you trust whoever made "
               "them")


def _component_problem(folder: str, name: str, trust_pickle: bool = False) -> str | None:
    sub = os.path.join(folder, name)
    if not os.path.isdir(sub):
        return f"has no {name}/ folder"
    if name == "scheduler":
        return None if _has(sub, "scheduler_config.json") else "has no scheduler/scheduler_config.json"
    if name == "tokenizer":
        ok = _has(sub, "tokenizer.json") or (_has(sub, "vocab.json") and _has(sub, "merges.txt"))
        return None if ok else "has no tokenizer/tokenizer.json (nor vocab.json + merges.txt)"
    if not _has(sub, "config.json"):
        return f"has no {name}/config.json"
    files = os.listdir(sub)
    if not any(f.endswith(".safetensors") for f in files):
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickles and trust_pickle:
            return None
        if pickles:
            return f"holds only pickle weights in {name}/ ({', '.join(pickles)}): {PICKLE_HELP}"
        return f"has no .safetensors weights in {name}/ (latentgen loads safetensors only)"
    return None


def check_model_folder(path: str | os.PathLike, trust_pickle: bool = False) -> str:
    """``path`` as a str if it is a complete model folder, else a clear error saying what is missing.

    Pickle weights (.bin, .ckpt, .pt) are refused unless ``trust_pickle`` is set.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(PICKLE_SUFFIXES):
        raise ValueError(f"{path!r} is a single pickle checkpoint: {PICKLE_HELP}; and latentgen needs a model "
                         f"folder: {FOLDER_CONTENTS}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model folder at {path!r}: {FOLDER_CONTENTS} "
                                "(latentgen never downloads models)")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} is a file, not a model folder: {FOLDER_CONTENTS}")
    problems = [p for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
                if (p := _component_problem(path, n, trust_pickle))]
    if problems:
        raise FileNotFoundError(f"model folder {path!r} {'; '.join(problems)}: {FOLDER_CONTENTS}")
    return path


def check_weight_files(folder: str) -> None:
    """Refuse a corrupt or truncated .safetensors file of unet/, vae/ or text_encoder/ (header check only).

    The error names the file relative to ``folder``, as the loaders' own errors do not.
    """
    from safetensors import SafetensorError, safe_open

    for name in ("unet", "vae", "text_encoder"):
        sub = os.path.join(folder, name)
        for f in sorted(os.listdir(sub)):
            if not f.endswith(".safetensors"):
                continue
            try:
                with safe_open(os.path.join(sub, f), framework="pt"):
                    pass  # opening parses the header and checks it covers the whole file
            except (SafetensorError, RuntimeError) as e:
                raise ValueError(f"{folder}: could not read {name}/{f} (corrupt or truncated safetensors file: "
                                 f"{e}): copy the model folder again, or save it again with save_pretrained"
                                 ) from None
            except OSError as e:
                raise ValueError(f"{folder}: could not read {name}/{f} ({e.strerror or e}): check the file's "
                                 "permissions") from None


LORA_HELP = "LoRA weights are a .safetensors file, or a folder holding pytorch_lora_weights.safetensors"


def check_lora_source(path: str | os.PathLike, weight_name: str | None = None,
                      trust_pickle: bool = False) -> str:
    """``path`` as a str if it holds safetensors LoRA weights (a file, or a folder with one), else a clear error.

    Pickle weights (.bin, .pt, .ckpt) are refused unless ``trust_pickle`` is set; nothing is downloaded.
    """
    path = os.fspath(path)
    target = os.path.join(path, weight_name) if weight_name and os.path.isdir(path) else path
    if not os.path.exists(target):
        raise FileNotFoundError(f"no LoRA weights at {target!r}: {LORA_HELP} (latentgen never downloads)")
    if os.path.isdir(target):
        files = sorted(os.listdir(target))
        if any(f.endswith(".safetensors") for f in files):
            return path
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickles and trust_pickle:
            return path
        if pickles:
            raise ValueError(f"LoRA folder {path!r} holds only pickle weights ({', '.join(pickles)}): {PICKLE_HELP}")
        raise FileNotFoundError(f"LoRA folder {path!r} holds no .safetensors weights: {LORA_HELP}")
    if target.endswith(".safetensors") or trust_pickle:
        return path
    if target.endswith(PICKLE_SUFFIXES):
        raise ValueError(f"LoRA weights {target!r} are a pickle file: {PICKLE_HELP}")
    raise ValueError(f"LoRA weights {target!r} are not a .safetensors file: {LORA_HELP}")


def resolve_model_dir(model: str | os.PathLike | None, trust_pickle: bool = False) -> str:
    """``model``, or the bundled default model when it is None."""
    if model is not None:
        return check_model_folder(model, trust_pickle)
    if not os.path.isdir(DEFAULT_MODEL_DIR):
        raise FileNotFoundError(
            f"no model given and no bundled default model at {DEFAULT_MODEL_DIR}: pass --model DIR "
            "(a folder written by train/unet.py or LatentGenPipeline.save_pretrained), or train one with "
            "`python -m train.unet --data DIR --out DIR`"
        )
    return check_model_folder(DEFAULT_MODEL_DIR)


_CARD_KEYS = {"sampler": str, "num_inference_steps": int, "guidance_scale": float}


def read_model_card_defaults(folder: str | os.PathLike) -> dict:
    """The ``sampler``, ``num_inference_steps`` and ``guidance_scale`` lines of the YAML front
    matter of ``folder/README.md`` (only the keys present; ``{}`` without a card)."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.split(" #")[0].strip().strip("\"'")
        if not sep or key not in _CARD_KEYS:
            continue
        try:
            out[key] = _CARD_KEYS[key](value)
        except ValueError:
            raise ValueError(f"{path}: front matter {key}: {value!r} is not a {_CARD_KEYS[key].__name__}; "
                             "fix or delete that line") from None
    if "sampler" in out and out["sampler"] not in SAMPLERS:
        raise ValueError(f"{path}: front matter sampler: {out['sampler']!r} is unknown; "
                         f"choose one of {', '.join(SAMPLERS)}")
    return out


# ---------------------------------------------------------------- images in
def _to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, with any transparency composited on white."""
    if img.mode == "RGB":
        return img
    try:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            bg = PIL.Image.new("RGBA", img.size, (255, 255, 255, 255))
            bg.alpha_composite(img.convert("RGBA"))
            return bg.convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot convert an init image of mode {img.mode!r} to RGB ({e}); "
                         "save it as an 8-bit RGB or RGBA PNG") from None


def _image_tensor(image, height: int, width: int) -> torch.Tensor:
    """An init image (PIL, list of PIL, uint8 array or tensor) as a tensor in [-1, 1].  # (N, 3, H, W)"""
    if isinstance(image, np.ndarray):
        image = [PIL.Image.fromarray(a) for a in (image if image.ndim == 4 else [image])]
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image):
        arrays = []
        for img in image:
            img = _to_rgb(img)
            if img.size != (width, height):
                logger.warning("init image is %dx%d; resizing it to %dx%d (pass height/width to choose "
                               "the size)", img.width, img.height, width, height)
                img = img.resize((width, height), PIL.Image.LANCZOS)
            arrays.append(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    if isinstance(image, torch.Tensor):
        x = image[None] if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (height, width):
            raise ValueError(f"an init image tensor must be (N, 3, {height}, {width}) (or (3, H, W)), got "
                             f"{tuple(image.shape)}: resize it or pass matching height/width")
        if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
            raise ValueError("an init image tensor must hold values in [-1, 1] (VAE images), got "
                             f"[{x.min():.3g}, {x.max():.3g}]: use x * 2 - 1 for images in [0, 1]")
        return x.float()
    raise ValueError(f"init image of type {type(image).__name__} is not supported: pass a PIL image, a list "
                     "of them, a uint8 (H, W, 3) array or a (N, 3, H, W) tensor in [-1, 1]")


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
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


# ---------------------------------------------------------------- the pipeline
class LatentGenPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Text-to-image and image-to-image latent diffusion with classifier-free guidance."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._interrupt = False
        self._rgb_map = None

    # ------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, trust_pickle: bool = False, **kwargs):
        """Load a latentgen or Stable-Diffusion-format folder from disk (safetensors only).

        Components other than the five (safety_checker, feature_extractor, ...) are ignored.
        Pickle weights (.bin) are refused unless ``trust_pickle=True``; a corrupt or truncated
        safetensors file is a ValueError naming it.
        """
        folder = check_model_folder(pretrained_model_name_or_path, trust_pickle)
        check_weight_files(folder)
        kwargs.setdefault("use_safetensors", None if trust_pickle else True)
        kwargs.setdefault("local_files_only", True)
        kwargs.setdefault("torch_dtype", torch.float32)  # whatever dtype the weights are stored in
        if not os.path.isfile(os.path.join(folder, "model_index.json")):
            return cls._from_component_folders(folder, kwargs["torch_dtype"], kwargs["use_safetensors"])
        for extra in ("safety_checker", "feature_extractor", "image_encoder", "requires_safety_checker"):
            kwargs.pop(extra, None)
        return super().from_pretrained(folder, **kwargs)

    @classmethod
    def _from_component_folders(cls, folder: str, torch_dtype=None, use_safetensors: bool | None = True):
        """Load the five components one by one: for SD-format folders without model_index.json."""
        import diffusers

        sub = lambda name: os.path.join(folder, name)
        with open(os.path.join(sub("scheduler"), "scheduler_config.json")) as f:
            sched_cfg = json.load(f)
        sched_cls = getattr(diffusers, str(sched_cfg.get("_class_name")), None)
        if sched_cls is None or not hasattr(sched_cls, "set_timesteps"):
            raise ValueError(f"{sub('scheduler')}/scheduler_config.json names an unknown scheduler class "
                             f"{sched_cfg.get('_class_name')!r}: use a diffusers scheduler class name")
        dtype = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        return cls(
            vae=AutoencoderKL.from_pretrained(sub("vae"), use_safetensors=use_safetensors, **dtype),
            text_encoder=CLIPTextModel.from_pretrained(sub("text_encoder"), use_safetensors=use_safetensors, **dtype),
            tokenizer=CLIPTokenizer.from_pretrained(sub("tokenizer")),
            unet=UNet2DConditionModel.from_pretrained(sub("unet"), use_safetensors=use_safetensors, **dtype),
            scheduler=sched_cls.from_config(sched_cfg),
        )

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                          trust_pickle: bool = False, **kwargs):
        """diffusers' ``load_lora_weights`` from a local safetensors file or folder (or a state dict).

        Pickle weights (.bin, .pt, .ckpt) are refused unless ``trust_pickle=True``.
        """
        source = pretrained_model_name_or_path_or_dict
        if not isinstance(source, dict):
            source = check_lora_source(source, kwargs.get("weight_name"), trust_pickle)
            kwargs.setdefault("local_files_only", True)
            if not trust_pickle:
                kwargs["use_safetensors"] = True
        return super().load_lora_weights(source, adapter_name=adapter_name, **kwargs)

    # ------------------------------------------------------------ helpers
    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def default_size(self) -> tuple[int, int]:
        """(height, width) the UNet was trained at: the latent side times the VAE factor."""
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def _max_tokens(self) -> int:
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], device) -> torch.Tensor:
        """Text encoder hidden states of ``prompts`` (see :func:`encode_prompts`).  # (B, L, D)"""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, device)

    def get_guidance_scale_embedding(self, w: torch.Tensor, embedding_dim: int = 512,
                                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Sinusoidal embedding of the guidance weight (Meng et al. 2023), by stock diffusers' own code.  # (B, D)"""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.get_guidance_scale_embedding(self, w, embedding_dim, dtype)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images in [-1, 1] (the posterior mean).  # (N, C, h, w)"""
        x = x.to(device=self._execution_device, dtype=self.vae.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, output_type: str = "pil", generator=None):
        """Scaled latents to images of ``output_type`` (as stock diffusers decodes them)."""
        if output_type == "latent":
            return latents
        image = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor,
                                return_dict=False, generator=generator)[0]  # (B, 3, H, W) in [-1, 1]
        return self.image_processor.postprocess(image, output_type=output_type,
                                                do_denormalize=[True] * image.shape[0])

    @torch.no_grad()
    def latents_preview(self, latents: torch.Tensor, method: str = "decode") -> list[PIL.Image.Image]:
        """A quick look at latents during sampling, e.g. ``callback_kwargs["denoised"]``.

        ``"decode"`` runs the VAE decoder (exact; cheap at latentgen's sizes). ``"linear"``
        maps each latent pixel to a colour with a linear map fitted once to the VAE's
        encodings of flat colours: no decoder pass, 1/factor the resolution.
        """
        if method == "decode":
            return self.decode_latents(latents, "pil")
        if method != "linear":
            raise ValueError(f"unknown preview method {method!r}; choose 'decode' or 'linear'")
        w = self._latent_rgb_map().to(latents.device)  # (C + 1, 3)
        lat = latents.float().permute(0, 2, 3, 1)  # (B, h, w, C)
        rgb = torch.cat([lat, torch.ones_like(lat[..., :1])], -1) @ w  # (B, h, w, 3) in [-1, 1]
        arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        return [PIL.Image.fromarray(a) for a in arr]

    @torch.no_grad()
    def _latent_rgb_map(self) -> torch.Tensor:
        if self._rgb_map is None or self._rgb_map[0] is not self.vae:
            g = torch.Generator().manual_seed(0)
            colours = torch.rand(64, 3, generator=g) * 2 - 1  # (64, 3) in [-1, 1]
            side = 4 * self.vae_scale_factor
            lat = self.encode_image(colours[:, :, None, None].expand(-1, -1, side, side))  # (64, C, 4, 4)
            feats = lat.float().mean(dim=(2, 3)).cpu()  # (64, C)
            feats = torch.cat([feats, torch.ones(len(feats), 1)], 1)  # (64, C + 1)
            self._rgb_map = (self.vae, torch.linalg.lstsq(feats, colours).solution)  # (C + 1, 3)
        return self._rgb_map[1]

    @staticmethod
    def _step_kwargs(scheduler, generator) -> dict:
        params = set(inspect.signature(scheduler.step).parameters)
        return {k: v for k, v in (("eta", 0.0), ("generator", generator)) if k in params}

    # ------------------------------------------------------------ inputs
    def check_inputs(self, prompts, negatives, num_inference_steps, guidance_scale, height, width,
                     num_images_per_prompt, image, strength, output_type, sampler, generator):
        """Every argument checked up front; a ValueError names the problem and the fix."""
        for text in prompts:
            check_prompt(text, "prompt")
        for text in negatives or ():
            check_prompt(text, "negative prompt")
        f = self.vae_scale_factor
        for name, side in (("height", height), ("width", width)):
            if not isinstance(side, numbers.Integral) or side <= 0 or side % f:
                near = max(f, round(side / f) * f) if isinstance(side, numbers.Real) else f
                raise ValueError(f"{name}={side!r} must be a positive multiple of the VAE factor {f} "
                                 f"(e.g. {near})")
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts: "
                             "give one negative prompt, or one per prompt")
        n_train = self.scheduler.config.num_train_timesteps
        if not isinstance(num_inference_steps, numbers.Integral) or not 1 <= num_inference_steps <= n_train:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer "
                             f"from 1 to {n_train}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
                or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale={guidance_scale!r} must be a finite number "
                             "(1 turns guidance off; 3 to 8 is typical)")
        if not isinstance(num_images_per_prompt, numbers.Integral) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1")
        if image is not None and not (isinstance(strength, numbers.Real) and 0 <= strength <= 1):
            raise ValueError(f"strength={strength!r} must be a number from 0 (keep the image) "
                             "to 1 (ignore it)")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is unknown; "
                             f"choose one of {', '.join(OUTPUT_TYPES)}")
        if sampler is not None and sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)} "
                             "(or None for the model's own scheduler)")
        batch = len(prompts) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for {batch} images: pass one generator, "
                             "or one per image (prompts x num_images_per_prompt)")

    @staticmethod
    def _as_prompt_list(prompt, name: str) -> list[str]:
        items = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(p, str) for p in items):
            raise ValueError(f"{name} must be a string or a non-empty list of strings, "
                             f"got {type(prompt).__name__}"
                             + (" (use \"\" for an unconditional image)" if name == "prompt" else ""))
        return list(items)

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        image=None,
        strength: float = 0.8,
        callback_on_step_end=None,
        output_type: str = "pil",
        sampler: str | None = None,
        return_dict: bool = True,
    ):
        """Generate images; returns a ``LatentGenPipelineOutput``.

        ``prompt``/``negative_prompt``: a string or one per image batch entry ("" is unconditional).
        ``guidance_scale``: classifier-free guidance weight (<= 1: off). ``generator``: one, or
        one per image. ``height``/``width``: multiples of ``vae_scale_factor`` (default: the
        model's size). ``image`` + ``strength``: SDEdit image-to-image. ``sampler``: a name
        from ``latentgen.diffusion.SAMPLERS`` (default: the saved scheduler). ``output_type``:
        "pil", "np", "pt" or "latent".
        ``callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict`` runs after
        every step with ``callback_kwargs = {"latents", "denoised"}`` (the x0 prediction, for
        previews); returning ``{"latents": ...}`` replaces the latents, and setting
        ``pipe._interrupt = True`` cancels (see the module docstring).
        """
        # 1. Check inputs
        prompts = self._as_prompt_list(prompt, "prompt")
        negatives = None
        if negative_prompt is not None:
            negatives = self._as_prompt_list(negative_prompt, "negative_prompt")
            negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        dh, dw = self.default_size()
        height, width = dh if height is None else height, dw if width is None else width
        self.check_inputs(prompts, negatives, num_inference_steps, guidance_scale, height, width,
                          num_images_per_prompt, image, strength, output_type, sampler, generator)
        height, width, num_inference_steps, num_images_per_prompt = (
            int(height), int(width), int(num_inference_steps), int(num_images_per_prompt))
        guidance_scale = float(guidance_scale)
        init = None if image is None else _image_tensor(image, height, width)  # (N, 3, H, W)
        if init is not None and len(init) not in (1, len(prompts)):
            raise ValueError(f"{len(init)} init images for {len(prompts)} prompts: "
                             "give one image, or one per prompt")
        negatives = negatives or [""] * len(prompts)
        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        student = self.unet.config.time_cond_proj_dim is not None
        do_cfg = guidance_scale > 1 and not student and negatives != prompts
        self._interrupt = False

        # 2. Encode the prompt: unconditional and conditional in one batch, once per call
        texts = negatives + prompts if do_cfg else prompts
        emb = self.encode_prompt(texts, device).repeat_interleave(num_images_per_prompt, dim=0)  # (kB, L, D)
        emb = emb.to(self.unet.dtype)
        timestep_cond = None
        if student:
            w = torch.tensor(guidance_scale - 1).repeat(batch)  # (B,), as stock computes it
            timestep_cond = self.get_guidance_scale_embedding(w, self.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.to(device=device, dtype=self.unet.dtype)  # (B, P)

        # 3. Timesteps (a fresh scheduler per call, so calls never share sampler state)
        scheduler = (make_scheduler(sampler, self.scheduler.config) if sampler
                     else type(self.scheduler).from_config(self.scheduler.config))
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        if init is not None:
            t_start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
            timesteps = timesteps[t_start * scheduler.order:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)

        # 4. Latents: pure noise, or the init image noised to the first timestep (SDEdit)
        f = self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        if init is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
            latents = noise * scheduler.init_noise_sigma  # (B, C, h, w)
        else:
            init_latents = self.encode_image(init).to(self.unet.dtype)  # (N, C, h, w)
            reps = batch // len(init_latents)
            init_latents = init_latents.repeat_interleave(reps, dim=0)  # (B, C, h, w)
            noise = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
            latents = (scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(batch))
                       if len(timesteps) else init_latents)

        # 5. Denoising loop
        step_kwargs = self._step_kwargs(scheduler, generator)
        last, steps_done = None, 0  # last: the UNet's input and output of the latest step
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                x_in = scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
                out = self.unet(x_in, t, encoder_hidden_states=emb, timestep_cond=timestep_cond,
                                return_dict=False)[0]  # (kB, C, h, w)
                if do_cfg:
                    out_uncond, out_text = out.chunk(2)
                    out = out_uncond + guidance_scale * (out_text - out_uncond)  # Ho & Salimans 2022, Eq. 6
                last = (x_in[:batch], out, t)
                latents = scheduler.step(out, t, latents, **step_kwargs, return_dict=False)[0]
                steps_done = i + 1
                if callback_on_step_end is not None:
                    denoised = self._denoised(scheduler, *last)
                    result = callback_on_step_end(self, i, t, {"latents": latents, "denoised": denoised})
                    latents = (result or {}).get("latents", latents)
                progress.update()
        interrupted = steps_done < len(timesteps)

        # 6. Decode (a cancelled run shows its latest estimate of the clean image)
        if interrupted:
            latents = latents if last is None else self._denoised(scheduler, *last)
        images = self.decode_latents(latents, output_type, generator)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return LatentGenPipelineOutput(images=images, interrupted=interrupted, steps_done=steps_done)

    @staticmethod
    def _denoised(scheduler, x_in: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor:
        """The x0 prediction from the UNet's (variance-preserving) input and output.  # (B, C, h, w)"""
        if getattr(scheduler, "alphas_cumprod", None) is None:  # not a DDPM-family schedule
            return x_in
        last = len(scheduler.alphas_cumprod) - 1
        idx = torch.as_tensor(t, device=x_in.device).round().long().clamp(0, last)
        alpha, sigma = alpha_sigma(scheduler.alphas_cumprod, idx.reshape(1))
        x0 = pred_x0(scheduler.config.prediction_type, x_in.float(), model_output.float(), alpha, sigma)
        return x0.to(x_in.dtype)
