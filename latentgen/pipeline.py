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
  ``num_inference_steps`` and ``guidance_scale`` left out are the model card's (``README.md``).

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

Model folders are checked and loaded in :mod:`latentgen.loading`, init images read in
:mod:`latentgen.images`, prompts encoded in :mod:`latentgen.prompts`; their public names are
importable from here too.
"""

from __future__ import annotations

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

from latentgen.diffusion import (
    SAMPLERS,
    classifier_free_guidance,
    guidance_scale_embedding,
    make_scheduler,
    sampler_pred_x0,
    step_kwargs,
)
from latentgen.images import fit_latent_rgb_map, image_tensor, latents_to_rgb
from latentgen.limits import check_prompt, check_sampling
from latentgen.loading import (
    DEFAULT_GUIDANCE,
    DEFAULT_MODEL_DIR,
    DEFAULT_STEPS,
    check_lora_source,
    check_model_folder,
    check_weight_files,
    diffusers_dtype,
    load_component_folders,
    quiet_unet_only_lora,
    read_model_card_defaults,
    resolve_model_dir,
    sampling_defaults,
)
from latentgen.pngmeta import read_png_params, save_png_with_params
from latentgen.prompts import as_prompt_list, encode_prompts

__all__ = [  # with the loaders and PNG helpers, so that `from latentgen.pipeline import ...` keeps working
    "DEFAULT_GUIDANCE", "DEFAULT_MODEL_DIR", "DEFAULT_STEPS", "LatentGenPipeline", "LatentGenPipelineOutput",
    "check_lora_source", "check_model_folder", "check_weight_files", "encode_prompts", "read_model_card_defaults",
    "read_png_params", "resolve_model_dir", "sampling_defaults", "save_png_with_params",
]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class LatentGenPipelineOutput(BaseOutput):
    """``images``: PIL images, a (B, H, W, 3) array, a (B, 3, H, W) tensor in [0, 1], or latents."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    interrupted: bool = False
    steps_done: int = 0


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
        """Load a latentgen or Stable-Diffusion-format folder from disk (safetensors only), in float32.

        Components other than the five (safety_checker, feature_extractor, ...) are ignored.
        Pickle weights (.bin) are refused unless ``trust_pickle=True``; a corrupt or truncated
        safetensors file is a ValueError naming it. ``dtype`` (or ``torch_dtype``) loads in another dtype.
        """
        folder = check_model_folder(pretrained_model_name_or_path, trust_pickle)
        check_weight_files(folder)
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or torch.float32
        kwargs.pop("torch_dtype", None)
        kwargs.setdefault("use_safetensors", None if trust_pickle else True)
        kwargs.setdefault("local_files_only", True)
        card = read_model_card_defaults(folder)
        if not os.path.isfile(os.path.join(folder, "model_index.json")):
            pipe = cls(**load_component_folders(folder, dtype, kwargs["use_safetensors"]))
        else:
            for extra in ("safety_checker", "feature_extractor", "image_encoder", "requires_safety_checker"):
                kwargs.pop(extra, None)
            pipe = super().from_pretrained(folder, **kwargs, **diffusers_dtype(dtype))
        pipe.card_defaults = card  # the steps and guidance of a call that leaves them out
        return pipe

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
        with quiet_unet_only_lora():
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

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], device) -> torch.Tensor:
        """Text encoder hidden states of ``prompts`` (see :func:`encode_prompts`).  # (B, L, D)"""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, device)

    def get_guidance_scale_embedding(self, w: torch.Tensor, embedding_dim: int = 512,
                                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Sinusoidal embedding of the guidance weight (Meng et al. 2023), as stock diffusers computes it.  # (B, D)"""
        return guidance_scale_embedding(w, embedding_dim, dtype)

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
        if self._rgb_map is None or self._rgb_map[0] is not self.vae:
            self._rgb_map = (self.vae, fit_latent_rgb_map(self.encode_image, 4 * self.vae_scale_factor))
        return latents_to_rgb(latents, self._rgb_map[1])

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
        check_sampling(num_inference_steps, self.scheduler.config.num_train_timesteps, guidance_scale,
                       num_images_per_prompt, None if image is None else strength)
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

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
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
        ``num_inference_steps``, ``guidance_scale`` (classifier-free guidance weight, <= 1: off): None is
        the model card's, else :func:`latentgen.loading.sampling_defaults`. ``generator``: one, or
        one per image. ``height``/``width``: multiples of ``vae_scale_factor`` (default: the
        model's size). ``image`` + ``strength``: SDEdit image-to-image. ``sampler``: a name
        from ``latentgen.diffusion.SAMPLERS`` (default: the saved scheduler). ``output_type``:
        "pil", "np", "pt" or "latent".
        ``callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict`` runs after
        every step with ``callback_kwargs = {"latents", "denoised"}`` (the x0 prediction, for
        previews); returning ``{"latents": ...}`` replaces the latents, and setting
        ``pipe._interrupt = True`` cancels (see the module docstring).
        """
        # 1. Check inputs (steps and guidance left out: the model card's)
        card = sampling_defaults(getattr(self, "card_defaults", {}), self.unet.config.time_cond_proj_dim is not None)
        num_inference_steps = card["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        guidance_scale = card["guidance_scale"] if guidance_scale is None else guidance_scale
        prompts = as_prompt_list(prompt, "prompt")
        negatives = None if negative_prompt is None else as_prompt_list(negative_prompt, "negative_prompt")
        negatives = negatives * len(prompts) if negatives is not None and len(negatives) == 1 else negatives
        dh, dw = self.default_size()
        height, width = dh if height is None else height, dw if width is None else width
        self.check_inputs(prompts, negatives, num_inference_steps, guidance_scale, height, width,
                          num_images_per_prompt, image, strength, output_type, sampler, generator)
        height, width, num_inference_steps, num_images_per_prompt = (
            int(height), int(width), int(num_inference_steps), int(num_images_per_prompt))
        guidance_scale = float(guidance_scale)
        init = self._init_images(image, height, width, len(prompts))  # (N, 3, H, W) or None
        device = self._execution_device
        self._interrupt = False

        # 2. Encode the prompt
        emb, timestep_cond, do_cfg = self._encode_conditioning(
            prompts, negatives or [""] * len(prompts), guidance_scale, num_images_per_prompt, device)

        # 3. Prepare timesteps
        scheduler, timesteps = self._prepare_timesteps(sampler, num_inference_steps,
                                                       None if init is None else strength, device)

        # 4. Prepare latents
        batch = len(prompts) * num_images_per_prompt
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        latents = self._prepare_latents(shape, scheduler, timesteps, init, generator, device)

        # 5. Denoising loop
        latents, last, steps_done = self._denoise(latents, scheduler, timesteps, emb, timestep_cond,
                                                  guidance_scale if do_cfg else None, generator,
                                                  callback_on_step_end)
        interrupted = steps_done < len(timesteps)

        # 6. Decode (a cancelled run shows its latest estimate of the clean image)
        if interrupted and last is not None:
            latents = sampler_pred_x0(scheduler, *last)
        images = self.decode_latents(latents, output_type, generator)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return LatentGenPipelineOutput(images=images, interrupted=interrupted, steps_done=steps_done)

    def _init_images(self, image, height: int, width: int, n_prompts: int) -> torch.Tensor | None:
        """The init images as a tensor in [-1, 1], one or one per prompt (None: text to image).  # (N, 3, H, W)"""
        if image is None:
            return None
        init = image_tensor(image, height, width)
        if len(init) not in (1, n_prompts):
            raise ValueError(f"{len(init)} init images for {n_prompts} prompts: "
                             "give one image, or one per prompt")
        return init

    def _encode_conditioning(self, prompts: list[str], negatives: list[str], guidance_scale: float,
                             num_images_per_prompt: int, device):
        """``(emb, timestep_cond, do_cfg)``: the text embeddings (unconditional then conditional in one
        batch when guidance is on, encoded once per call), a student's guidance embedding, and whether
        classifier-free guidance runs.  # (kB, L, D), (B, P) or None"""
        student = self.unet.config.time_cond_proj_dim is not None
        do_cfg = guidance_scale > 1 and not student and negatives != prompts
        texts = negatives + prompts if do_cfg else prompts
        emb = self.encode_prompt(texts, device).repeat_interleave(num_images_per_prompt, dim=0)
        timestep_cond = None
        if student:
            w = torch.tensor(guidance_scale - 1).repeat(len(prompts) * num_images_per_prompt)  # (B,), as stock
            timestep_cond = self.get_guidance_scale_embedding(w, self.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.to(device=device, dtype=self.unet.dtype)
        return emb.to(self.unet.dtype), timestep_cond, do_cfg

    def _prepare_timesteps(self, sampler: str | None, num_inference_steps: int, strength: float | None,
                           device):
        """A fresh scheduler (calls never share sampler state) and its timesteps; with ``strength``
        (image to image) only the last ``int(num_inference_steps * strength)`` of them."""
        scheduler = (make_scheduler(sampler, self.scheduler.config) if sampler
                     else type(self.scheduler).from_config(self.scheduler.config))
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        if strength is not None:
            t_start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
            timesteps = timesteps[t_start * scheduler.order:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
        return scheduler, timesteps

    def _prepare_latents(self, shape: tuple, scheduler, timesteps, init, generator, device) -> torch.Tensor:
        """Pure noise, or the init images' latents noised to the first timestep (SDEdit).  # (B, C, h, w)"""
        noise = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        if init is None:
            return noise * scheduler.init_noise_sigma
        init_latents = self.encode_image(init).to(self.unet.dtype)  # (N, C, h, w)
        init_latents = init_latents.repeat_interleave(shape[0] // len(init_latents), dim=0)  # (B, C, h, w)
        if not len(timesteps):
            return init_latents
        return scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(shape[0]))

    def _denoise(self, latents, scheduler, timesteps, emb, timestep_cond, cfg_scale: float | None, generator,
                 callback_on_step_end):
        """The sampling loop; ``cfg_scale`` None: one conditional pass per step. Returns the latents, the
        UNet's input, output and timestep of the last step run (None before any), and the steps run."""
        kwargs = step_kwargs(scheduler, generator)
        batch, last, steps_done = len(latents), None, 0
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                x_in = latents if cfg_scale is None else torch.cat([latents] * 2)
                x_in = scheduler.scale_model_input(x_in, t)
                out = self.unet(x_in, t, encoder_hidden_states=emb, timestep_cond=timestep_cond,
                                return_dict=False)[0]  # (kB, C, h, w)
                if cfg_scale is not None:
                    uncond, cond = out.chunk(2)
                    out = classifier_free_guidance(cond, uncond, cfg_scale)
                last = (x_in[:batch], out, t)
                latents = scheduler.step(out, t, latents, **kwargs, return_dict=False)[0]
                steps_done = i + 1
                if callback_on_step_end is not None:
                    kw = {"latents": latents, "denoised": sampler_pred_x0(scheduler, *last)}
                    latents = (callback_on_step_end(self, i, t, kw) or {}).get("latents", latents)
                progress.update()
        return latents, last, steps_done
