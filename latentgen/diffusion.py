"""Noise schedule, samplers and the training objective: one short function per equation.

The choice, and why (it is made with progressive distillation in mind):

* **v-prediction** (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling
  of Diffusion Models", Sec. 4 and App. D): the UNet predicts v = alpha_t eps - sigma_t x0.
  An eps-predicting model cannot give x0 at SNR 0 (x0 = (x_t - sigma_t eps) / alpha_t
  divides by alpha_t = 0), and a distilled student taking one or two big steps
  needs a prediction that stays well defined at every noise level.
* **Zero terminal SNR** (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
  Steps are Flawed", Sec. 3.1, Alg. 1): ``rescale_betas_zero_snr=True`` shifts and scales
  sqrt(alpha_bar) so that the last training step is pure noise. Sampling starts from
  pure noise, so training must see it too, or the first (and, for a 1-step student,
  only) step is asked for something it never learned.
* **Trailing timestep spacing** (Lin et al. 2023, Sec. 3.4, Table 2): every sampling
  schedule starts at the last training step t = T - 1.
* **1024 training steps**: with trailing spacing every power-of-two step count lands
  on the same grid (1023, 511, 255, ... are shared), so a distilled student's steps are
  exactly every other step of its teacher's; with 1000, 16/32/64-step grids miss them.
* ``beta_schedule="scaled_linear"`` with Stable Diffusion's 0.00085..0.012 (Rombach et
  al. 2022): the schedule latent models and stock diffusers pipelines expect; its SNR
  falls gently through the middle steps, where latent images get their layout.
* ``clip_sample=False``: latents have unit variance, not a [-1, 1] range; DDIM and DDPM
  would clip them by default.

Training and sampling share the same ``alphas_cumprod``: the trainer reads them from
``training_alphas_cumprod()``, a diffusers scheduler built from ``training_scheduler_config()``.
Shapes in comments: B batch, C latent channels, h x w latent side.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1024

# name -> (scheduler class, settings that make it that sampler)
_SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {"variance_type": "fixed_small"}),
    "euler": (EulerDiscreteScheduler, {"final_sigmas_type": "zero", "use_karras_sigmas": False}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                              "final_sigmas_type": "zero", "use_karras_sigmas": False}),
}
SAMPLERS: tuple[str, ...] = tuple(_SAMPLERS)


def training_scheduler_config() -> dict:
    """The noise schedule latentgen models are trained on (see the module docstring for why)."""
    return {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "clip_sample": False,
        "set_alpha_to_one": True,  # DDIM's last step lands on the clean image
        "steps_offset": 1,  # unused by trailing spacing; stock pipelines rewrite any other value
    }


def make_scheduler(name: str, base_config=None):
    """A diffusers scheduler for sampler ``name`` on the noise schedule of ``base_config``.

    ``base_config`` is any scheduler's config (e.g. ``pipe.scheduler.config``); its
    schedule (betas, prediction type, zero-SNR rescale, spacing) is kept and only the
    sampler changes. Without it, the training schedule above is used.
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    cls, settings = _SAMPLERS[name]
    cfg = dict(training_scheduler_config() if base_config is None else base_config)
    cfg.update(settings, clip_sample=False)
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls.from_config({k: v for k, v in cfg.items() if k in accepted})


def sampler_name(scheduler) -> str:
    """The name ``make_scheduler`` knows ``scheduler`` by, or its class name for any other scheduler."""
    for name, (cls, settings) in _SAMPLERS.items():
        if type(scheduler) is cls and all(scheduler.config.get(k) == v for k, v in settings.items()):
            return name
    return type(scheduler).__name__


def step_kwargs(scheduler, generator) -> dict:
    """The keywords of ``scheduler.step`` among ``eta=0`` (DDIM) and ``generator`` (the ancestral samplers)."""
    params = set(inspect.signature(scheduler.step).parameters)
    return {k: v for k, v in (("eta", 0.0), ("generator", generator)) if k in params}


@functools.lru_cache(maxsize=1)
def _training_alphas_cumprod() -> Tensor:
    return DDPMScheduler.from_config(training_scheduler_config()).alphas_cumprod.clone()


def training_alphas_cumprod() -> Tensor:
    """alpha_bar_t for t = 0..T-1, as the diffusers scheduler computes it; alpha_bar_{T-1} = 0.  # (T,)"""
    return _training_alphas_cumprod().clone()


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) (Ho et al. 2020, Eq. 4).  # (B,1,1,1)"""
    abar = alphas_cumprod.to(t.device)[t].float()[:, None, None, None]  # (B, 1, 1, 1)
    return abar.sqrt(), (1 - abar).sqrt()


def q_sample(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x_t = alpha_t x0 + sigma_t eps (Ho et al. 2020, Eq. 4; Kingma et al. 2021, Eq. 1)."""
    return alpha * x0 + sigma * eps  # (B, C, h, w)


def v_target(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022, Sec. 4, App. D)."""
    return alpha * eps - sigma * x0  # (B, C, h, w)


def pred_x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0 = alpha_t x_t - sigma_t v (Salimans & Ho 2022, App. D; uses alpha^2 + sigma^2 = 1)."""
    return alpha * x_t - sigma * v  # (B, C, h, w)


def pred_eps_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = sigma_t x_t + alpha_t v (Salimans & Ho 2022, App. D)."""
    return sigma * x_t + alpha * v  # (B, C, h, w)


def pred_x0_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0 = (x_t - sigma_t eps) / alpha_t (Ho et al. 2020, Eq. 15); undefined at SNR 0: alpha is floored."""
    return (x_t - sigma * eps) / alpha.clamp(min=1e-4)  # (B, C, h, w)


def pred_x0(prediction_type: str, x_t: Tensor, model_output: Tensor, alpha: Tensor,
            sigma: Tensor) -> Tensor:
    """The clean-image estimate for a UNet trained with diffusers' ``prediction_type``.  # (B, C, h, w)"""
    if prediction_type == "v_prediction":
        return pred_x0_from_v(x_t, model_output, alpha, sigma)
    if prediction_type == "epsilon":
        return pred_x0_from_eps(x_t, model_output, alpha, sigma)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected v_prediction, epsilon or sample")


def sampler_pred_x0(scheduler, x_t: Tensor, model_output: Tensor, t) -> Tensor:
    """``pred_x0`` at a sampler's timestep ``t`` from the UNet's (variance-preserving) input and output;
    ``x_t`` itself for a scheduler without ``alphas_cumprod`` (not a DDPM-family schedule).  # (B, C, h, w)"""
    if getattr(scheduler, "alphas_cumprod", None) is None:
        return x_t
    last = len(scheduler.alphas_cumprod) - 1
    idx = torch.as_tensor(t, device=x_t.device).round().long().clamp(0, last)
    alpha, sigma = alpha_sigma(scheduler.alphas_cumprod, idx.reshape(1))
    x0 = pred_x0(scheduler.config.prediction_type, x_t.float(), model_output.float(), alpha, sigma)
    return x0.to(x_t.dtype)


def snr(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """SNR(t) = alpha_t^2 / sigma_t^2 = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021).  # (B,)"""
    abar = alphas_cumprod.to(t.device)[t].float()
    return abar / (1 - abar)


def min_snr_weight(snr_t: Tensor, gamma: float = 5.0) -> Tensor:
    """Min-SNR-gamma weight of the v-loss: min(SNR, gamma) / (SNR + 1) (Hang et al. 2023, Sec. 3.4).

    It is min(SNR, gamma) on the x0-loss, rewritten for v (||v - v^||^2 = (SNR + 1) ||x0 - x0^||^2).
    Like eps-prediction's plain loss, it gives the nearly-pure-noise steps little weight (0 at SNR 0).
    """
    return snr_t.clamp(max=gamma) / (snr_t + 1)  # (B,)


def classifier_free_guidance(cond: Tensor, uncond: Tensor, g) -> Tensor:
    """Ho & Salimans 2022, Eq. 6: uncond + g (cond - uncond), for any prediction (v or eps); g a number
    or (B,). The one guidance combination: the pipeline and the distiller use it.  # (B, C, h, w)"""
    g = torch.as_tensor(g, dtype=cond.dtype, device=cond.device)
    g = g.reshape(-1, *([1] * (cond.ndim - 1))) if g.ndim else g  # (B, 1, 1, 1)
    return uncond + g * (cond - uncond)


def guidance_scale_embedding(w: Tensor, embedding_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding of guidance weights ``w`` (B,) for a guidance-conditioned UNet (Meng et al. 2023),
    by stock diffusers' own ``get_guidance_scale_embedding``.  # (B, D)"""
    return _stock_pipeline().get_guidance_scale_embedding(None, w, embedding_dim, dtype)  # never reads self


@functools.cache
def _stock_pipeline():
    """``diffusers.StableDiffusionPipeline``, imported without transformers' note that ``CLIPImageProcessor``
    falls back to its PIL backend when torchvision is missing (no latentgen code processes images with it)."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        transformers.logging.set_verbosity(level)
    return StableDiffusionPipeline


def sample_timesteps(batch: int, generator: torch.Generator | None, device) -> Tensor:
    """t ~ Uniform{0, ..., T-1}, drawn on the generator's device.  # (B,)"""
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator, device=gen_device)
    return t.to(device)


def diffusion_loss(unet, latents: Tensor, text_emb: Tensor, generator: torch.Generator | None = None,
                   min_snr_gamma: float | None = None, alphas_cumprod: Tensor | None = None,
                   ) -> Tensor:
    """The v-prediction loss E_{t, eps} w(t) ||v_theta(x_t, t, c) - v||^2 (Salimans & Ho 2022, Sec. 4).

    ``latents`` are scaled VAE latents (B, C, h, w), ``text_emb`` the text encoder's
    hidden states (B, L, D), ``generator`` seeds t and eps. w(t) = 1, or the min-SNR
    weight when ``min_snr_gamma`` is set. ``alphas_cumprod`` defaults to the training
    schedule; pass ``scheduler.alphas_cumprod`` to fine-tune a model on its own schedule.
    """
    abar = training_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    b = latents.shape[0]
    t = sample_timesteps(b, generator, latents.device)  # (B,)
    x0 = latents.float()
    eps = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C, h, w)
    alpha, sigma = alpha_sigma(abar, t)
    x_t = q_sample(x0, eps, alpha, sigma)
    v_pred = unet(x_t.to(latents.dtype), t, encoder_hidden_states=text_emb, return_dict=False)[0]
    target = v_target(x0, eps, alpha, sigma)  # (B, C, h, w)
    per_sample = F.mse_loss(v_pred.float(), target, reduction="none").mean(dim=(1, 2, 3))  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(snr(abar, t), min_snr_gamma)
    return per_sample.mean()


def preservation_loss(unet, base_unet, latents: Tensor, text_emb: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
    """E_{t, eps} ||v_theta(x_t, t, c) - v_base(x_t, t, c)||^2: the fine-tuned model's prediction held to the
    frozen base model's on the same noisy latent (the output-preservation loss of Li & Hoiem 2017, Eq. 2,
    for diffusion). Unlike DreamBooth's prior loss its target carries no sampling noise."""
    held = torch.ones(latents.shape[0], dtype=torch.bool, device=latents.device)  # (B,)
    return split_losses(unet, latents, text_emb, held, generator, base_unet)[1]


def split_losses(unet, latents: Tensor, text_emb: Tensor, held: Tensor, generator: torch.Generator | None = None,
                 base_unet=None) -> tuple[Tensor, Tensor]:
    """One pass of ``unet`` over the batch, two losses: the v-prediction loss (Salimans & Ho 2022, Sec. 4) on
    the samples not ``held`` (B,), and on the ``held`` ones the distance to ``base_unet``'s prediction on
    the same noisy latent (:func:`preservation_loss`), or their own v-loss when ``base_unet`` is None
    (DreamBooth's prior loss, Ruiz et al. 2023, Eq. 2). Returns the mean of each. One pass over the
    whole batch costs less than one per part."""
    t = sample_timesteps(latents.shape[0], generator, latents.device)  # (B,)
    x0 = latents.float()
    eps = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C, h, w)
    alpha, sigma = alpha_sigma(training_alphas_cumprod(), t)
    x_t = q_sample(x0, eps, alpha, sigma).to(latents.dtype)
    target = v_target(x0, eps, alpha, sigma)  # (B, C, h, w)
    if base_unet is not None and held.any():
        with torch.no_grad():
            target[held] = base_unet(x_t[held], t[held], encoder_hidden_states=text_emb[held],
                                     return_dict=False)[0].float()
    v_pred = unet(x_t, t, encoder_hidden_states=text_emb, return_dict=False)[0]
    per_sample = F.mse_loss(v_pred.float(), target, reduction="none").mean(dim=(1, 2, 3))  # (B,)
    return _mean(per_sample[~held]), _mean(per_sample[held])


def _mean(x: Tensor) -> Tensor:
    """The mean, 0 (with the graph kept) for no samples."""
    return x.mean() if x.numel() else x.sum()
