"""Guided and progressive distillation: one short function per equation.

Two stages turn a text-to-image teacher that needs classifier-free guidance (two UNet
passes per step) and tens of DDIM steps into a student that needs one pass per step
and 8, 4, 2 or 1 steps:

1. **Guided distillation** (Meng et al. 2023, "On Distillation of Guided Diffusion
   Models", Sec. 3, stage one): a student conditioned on the guidance scale g learns
   to give, in one pass, the guided teacher's prediction ``uncond + g (cond - uncond)``.
2. **Progressive distillation** (Salimans & Ho 2022, "Progressive Distillation for Fast
   Sampling of Diffusion Models", Algorithm 2; Meng et al. 2023 Sec. 3, stage two):
   one DDIM step of a student matches two DDIM steps of its teacher (at the same g);
   the student becomes the teacher and the step count halves.

Conventions (the schedule of ``latentgen.diffusion``): v-prediction, 1024 training
steps, zero terminal SNR, trailing spacing. An N-step sampler visits
t_k = T - 1 - k T/N (k = 0..N-1) and its last step lands on the clean image, written
t = -1 with alpha = 1, sigma = 0 (DDIM's ``set_alpha_to_one``). The first step starts
at t = T - 1 where alpha = 0: z = eps is pure noise and x0 = alpha z - sigma v = -v is
still defined, so even a 1-step student starts from pure noise.

Losses are the paper's: weighted MSE on x0 with the truncated-SNR weight max(SNR, 1);
the student predicts v and its x0 is ``alpha z - sigma v``. Shapes: B batch,
C latent channels, h x w latent side, L tokens, D text width, P guidance-embedding width.
"""

from __future__ import annotations

import copy

import torch
from diffusers.utils.torch_utils import randn_tensor

from latentgen.diffusion import classifier_free_guidance, pred_x0_from_v, q_sample

__all__ = [
    "copy_unet",
    "ddim_step",
    "freeze_text_kv",
    "grid_alpha_sigma",
    "grid_timesteps",
    "guidance_embedding",
    "guided_distillation_loss",
    "guided_forward",
    "make_student",
    "progressive_distillation_loss",
    "progressive_target",
    "sample_grid_timesteps",
    "snr_from_alpha_sigma",
    "student_forward",
    "truncated_snr_v_weight",
    "truncated_snr_weight",
    "x0_loss",
]


# ----------------------------------------------------------------------------- guidance
def guidance_embedding(guidance_scale, dim: int, dtype: torch.dtype = torch.float32,
                       batch: int | None = None) -> torch.Tensor:
    """Sinusoidal embedding of ``guidance_scale - 1``, exactly as stock ``StableDiffusionPipeline``
    feeds a UNet with ``time_cond_proj_dim`` (Meng et al. 2023, Sec. 3: the student takes w as
    input; diffusers' ``get_guidance_scale_embedding``, VDM's embedding of 1000 w).  # (B, P)

    ``guidance_scale`` is a number (repeated ``batch`` times, default 1) or a (B,) tensor.
    """
    from latentgen.diffusion import guidance_scale_embedding

    g = torch.as_tensor(guidance_scale, dtype=torch.float64).cpu()
    w = (g - 1).float()  # as stock: torch.tensor(guidance_scale - 1), the subtraction in double precision
    w = w.repeat(batch or 1) if w.ndim == 0 else w  # (B,)
    return guidance_scale_embedding(w, dim, dtype)


# ----------------------------------------------------------------------------- the step grid
def grid_timesteps(num_steps: int, num_train_timesteps: int = 1024) -> torch.Tensor:
    """The trailing N-step grid t_k = T - 1 - k T/N, k = 0..N-1 (Lin et al. 2023, Sec. 3.4; what
    diffusers' ``timestep_spacing="trailing"`` gives when N divides T).  # (N,)"""
    if num_steps < 1 or num_train_timesteps % num_steps:
        raise ValueError(f"{num_steps} steps do not divide the {num_train_timesteps} training timesteps: use "
                         "a power of two (1, 2, 4, ..., 1024) so every grid shares the teacher's timesteps")
    return num_train_timesteps - 1 - torch.arange(num_steps) * (num_train_timesteps // num_steps)


def sample_grid_timesteps(batch: int, num_steps: int, generator: torch.Generator | None, device,
                          num_train_timesteps: int = 1024) -> torch.Tensor:
    """t ~ Uniform over the N-step grid (Salimans & Ho 2022, Algorithm 2: t = i/N, i ~ Cat[1..N]).  # (B,)"""
    gen_device = generator.device if generator is not None else "cpu"
    k = torch.randint(0, num_steps, (batch,), generator=generator, device=gen_device)
    return grid_timesteps(num_steps, num_train_timesteps).to(gen_device)[k].to(device)


def grid_alpha_sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) (Ho et al. 2020, Eq. 4), with t = -1 the clean
    image (alpha = 1, sigma = 0), where DDIM's last step lands (``set_alpha_to_one``).  # (B, 1, 1, 1) each"""
    abar = alphas_cumprod.to(t.device).float()[t.clamp(min=0)]
    abar = torch.where(t < 0, torch.ones_like(abar), abar)[:, None, None, None]  # (B, 1, 1, 1)
    return abar.sqrt(), (1 - abar).sqrt()


# ----------------------------------------------------------------------------- the equations
def ddim_step(z_t: torch.Tensor, x0_hat: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
              alpha_s: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from t to s < t: z_s = alpha_s x0 + (sigma_s / sigma_t)(z_t - alpha_t x0)
    (Song et al. 2020, Eq. 12, eta 0; the alpha/sigma form of Salimans & Ho 2022, Alg. 2).  # (B, C, h, w)"""
    eps_hat = (z_t - alpha_t * x0_hat) / sigma_t  # (B, C, h, w); sigma_t > 0 for every t >= 0
    return alpha_s * x0_hat + sigma_s * eps_hat


def progressive_target(z_t: torch.Tensor, z_t2: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
                       alpha_t2: torch.Tensor, sigma_t2: torch.Tensor) -> torch.Tensor:
    """The x0 that takes one DDIM step from z_t to the teacher's two-step result z_t'':
    x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
    (Salimans & Ho 2022, Algorithm 2). At the last step t'' = -1 (alpha = 1, sigma = 0) it is
    exactly z_t''; elsewhere the denominator is sigma_t'' (sqrt SNR_t'' - sqrt SNR_t) > 0.  # (B, C, h, w)"""
    ratio = sigma_t2 / sigma_t  # (B, 1, 1, 1)
    return (z_t2 - ratio * z_t) / (alpha_t2 - ratio * alpha_t)


def truncated_snr_weight(snr_t: torch.Tensor) -> torch.Tensor:
    """Truncated-SNR weight of the x0 loss, max(SNR, 1) (Salimans & Ho 2022, Sec. 4): the loss is
    max(||x - x^||^2, ||eps - eps^||^2), since ||eps - eps^||^2 = SNR ||x - x^||^2: the eps-loss at
    high SNR, the x-loss at low SNR, where an eps-loss would weight x by SNR -> 0.  # (B,)"""
    return snr_t.clamp(min=1.0)


def truncated_snr_v_weight(snr_t: torch.Tensor) -> torch.Tensor:
    """The same loss on v: max(SNR, 1) ||x0 - x0^||^2 = max(SNR, 1) / (SNR + 1) ||v - v^||^2, since
    x0^ = alpha z - sigma v^ gives ||x0 - x0^||^2 = sigma^2 ||v - v^||^2 = ||v - v^||^2 / (SNR + 1)
    (Salimans & Ho 2022, Sec. 4). The weight is max(alpha^2, sigma^2), in [1/2, 1].  # (B,)"""
    return truncated_snr_weight(snr_t) / (snr_t + 1)


def x0_loss(x0_pred: torch.Tensor, x0_target: torch.Tensor, snr_t: torch.Tensor) -> torch.Tensor:
    """E_t max(SNR_t, 1) ||x0_target - x0_pred||^2, per-pixel mean (Salimans & Ho 2022, Alg. 2 and Sec. 4)."""
    per_sample = (x0_pred.float() - x0_target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (truncated_snr_weight(snr_t) * per_sample).mean()


def snr_from_alpha_sigma(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """SNR = alpha^2 / sigma^2 (Kingma et al. 2021, Eq. 2), for (B, 1, 1, 1) inputs.  # (B,)"""
    return (alpha.flatten() / sigma.flatten()).pow(2)


# ----------------------------------------------------------------------------- the student
def make_student(teacher_unet, time_cond_proj_dim: int = 256):
    """A copy of ``teacher_unet`` that also takes the guidance embedding (Meng et al. 2023, Sec. 3).

    Same config plus ``time_cond_proj_dim``; the teacher's weights; the new
    ``time_embedding.cond_proj`` (added to the timestep embedding) starts at zero, so the
    student starts as the conditional teacher at every guidance scale.
    """
    from diffusers import UNet2DConditionModel

    if teacher_unet.config.time_cond_proj_dim is not None:
        raise ValueError(f"the teacher UNet already takes a guidance embedding (time_cond_proj_dim="
                         f"{teacher_unet.config.time_cond_proj_dim}): it is a distilled student; give the "
                         "original (guided) model, or copy it for another progressive round")
    if not isinstance(time_cond_proj_dim, int) or time_cond_proj_dim < 2:
        raise ValueError(f"time_cond_proj_dim must be an int >= 2, got {time_cond_proj_dim!r}")
    config = {k: v for k, v in teacher_unet.config.items() if not k.startswith("_")}
    student = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": time_cond_proj_dim})
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if set(missing) != {"time_embedding.cond_proj.weight"} or unexpected:
        raise RuntimeError(f"student and teacher UNets differ beyond cond_proj: missing {missing}, "
                           f"unexpected {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    p = next(teacher_unet.parameters())
    if p.dtype != student.dtype:
        student = student.to(dtype=p.dtype)
    return student.to(p.device)


def freeze_text_kv(unet) -> int:
    """Keep the cross-attention key and value projections (``attn2.to_k``, ``attn2.to_v``: how the UNet
    reads the prompt embeddings) as they are: a student trained this way changes what it does with the
    prompt's features, not which features it reads. Returns the number of tensors frozen."""
    frozen = 0
    for name, p in unet.named_parameters():
        if ".attn2.to_k." in name or ".attn2.to_v." in name:
            p.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ValueError("the UNet has no cross-attention key/value projections (attn2.to_k, attn2.to_v) to freeze")
    return frozen


def copy_unet(unet):
    """An independent copy (the next round's student starts as its teacher: Salimans & Ho 2022, Alg. 2)."""
    return copy.deepcopy(unet)


def student_forward(unet, z_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
                    g: torch.Tensor) -> torch.Tensor:
    """v from a guidance-conditioned UNet at guidance scales ``g`` (B,), one pass.  # (B, C, h, w)

    ``unet`` may be wrapped for distributed training (its ``.module`` holds the config)."""
    base = getattr(unet, "module", unet)
    dtype = base.dtype
    w_emb = guidance_embedding(g, base.config.time_cond_proj_dim).to(z_t.device, dtype)  # (B, P)
    return unet(z_t.to(dtype), t, encoder_hidden_states=emb.to(dtype), timestep_cond=w_emb,
                return_dict=False)[0].float()


def guided_forward(unet, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                   g: torch.Tensor) -> torch.Tensor:
    """Guided v from a plain (two-pass) UNet: one batched pass over (uncond, cond), then
    v_uncond + g (v_cond - v_uncond) (Ho & Salimans 2022, Eq. 6).  # (B, C, h, w)

    ``unet`` may be wrapped for distributed training (its ``.module`` holds the dtype)."""
    dtype = getattr(unet, "module", unet).dtype
    v_both = unet(torch.cat([z_t, z_t]).to(dtype), torch.cat([t, t]),
                  encoder_hidden_states=torch.cat([uncond, cond]).to(dtype), return_dict=False)[0].float()
    v_uncond, v_cond = v_both.chunk(2)  # (B, C, h, w) each
    return classifier_free_guidance(v_cond, v_uncond, g.to(z_t.device))


# ----------------------------------------------------------------------------- the two objectives
def _noisy(z0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, generator):
    eps = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=torch.float32)  # (B, C, h, w)
    alpha, sigma = grid_alpha_sigma(alphas_cumprod, t)
    return q_sample(z0.float(), eps, alpha, sigma), alpha, sigma


def guided_distillation_loss(student, teacher, z0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                             g: torch.Tensor, num_steps: int, alphas_cumprod: torch.Tensor,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage one (Meng et al. 2023, Sec. 3): max(SNR, 1) ||x0_student(z_t, g) - x0 of the guided teacher||^2.

    ``z0`` clean latents (B, C, h, w); ``cond``/``uncond`` prompt embeddings (B, L, D); ``g``
    guidance scales (B,); t on the ``num_steps`` grid (the only timesteps the next round asks for).
    """
    b = z0.shape[0]
    t = sample_grid_timesteps(b, num_steps, generator, z0.device, len(alphas_cumprod))  # (B,)
    z_t, alpha, sigma = _noisy(z0, t, alphas_cumprod, generator)
    with torch.no_grad():
        x0_target = pred_x0_from_v(z_t, guided_forward(teacher, z_t, t, cond, uncond, g), alpha, sigma)
    x0_student = pred_x0_from_v(z_t, student_forward(student, z_t, t, cond, g), alpha, sigma)
    return x0_loss(x0_student, x0_target, snr_from_alpha_sigma(alpha, sigma))


def progressive_distillation_loss(student, teacher, z0: torch.Tensor, cond: torch.Tensor, g: torch.Tensor,
                                  student_steps: int, alphas_cumprod: torch.Tensor,
                                  generator: torch.Generator | None = None,
                                  uncond: torch.Tensor | None = None) -> torch.Tensor:
    """Stage two (Salimans & Ho 2022, Algorithm 2; Meng et al. 2023 stage two): one student DDIM step
    t -> t'' matches two teacher DDIM steps t -> t' -> t'' at the same guidance scale ``g``.

    t is on the ``student_steps`` grid; the teacher runs on the grid with twice the steps. Without
    ``uncond`` both models take g as an input (one pass, ``student_forward``); with it (B, L, D) both
    are plain two-pass UNets whose guided v is the classifier-free combination (``guided_forward``),
    so the student keeps the teacher's guidance arithmetic and its negative prompt.
    """
    if uncond is None:
        model_v = lambda unet, z, s: student_forward(unet, z, s, cond, g)
    else:
        model_v = lambda unet, z, s: guided_forward(unet, z, s, cond, uncond, g)
    n_train = len(alphas_cumprod)
    half = n_train // (2 * student_steps)  # one teacher step
    b = z0.shape[0]
    t = sample_grid_timesteps(b, student_steps, generator, z0.device, n_train)  # (B,)
    t1, t2 = t - half, t - 2 * half  # t' and t'' (t'' = -1: the clean image)
    z_t, alpha, sigma = _noisy(z0, t, alphas_cumprod, generator)
    a1, s1 = grid_alpha_sigma(alphas_cumprod, t1)
    a2, s2 = grid_alpha_sigma(alphas_cumprod, t2)
    with torch.no_grad():
        x0_a = pred_x0_from_v(z_t, model_v(teacher, z_t, t), alpha, sigma)
        z_t1 = ddim_step(z_t, x0_a, alpha, sigma, a1, s1)
        x0_b = pred_x0_from_v(z_t1, model_v(teacher, z_t1, t1), a1, s1)
        z_t2 = ddim_step(z_t1, x0_b, a1, s1, a2, s2)
        x_tilde = progressive_target(z_t, z_t2, alpha, sigma, a2, s2)
    x0_student = pred_x0_from_v(z_t, model_v(student, z_t, t), alpha, sigma)
    return x0_loss(x0_student, x_tilde, snr_from_alpha_sigma(alpha, sigma))


def interval_distillation_loss(student, teacher, z0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                               g: torch.Tensor, student_steps: int, teacher_substeps: int,
                               alphas_cumprod: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDIM step of a guidance-input student, t -> t'', matches ``teacher_substeps`` DDIM steps of the
    guided two-pass teacher over the same interval (Salimans & Ho 2022, Eq. 8's target, with k teacher steps
    in place of two, as TRACT's intervals, Berthelot et al. 2023): a few-step student refined on a new teacher.
    """
    n_train = len(alphas_cumprod)
    sub = n_train // (student_steps * teacher_substeps)  # one teacher step
    t = sample_grid_timesteps(z0.shape[0], student_steps, generator, z0.device, n_train)  # (B,)
    z_t, alpha, sigma = _noisy(z0, t, alphas_cumprod, generator)
    z, s, a_s, s_s = z_t, t, alpha, sigma
    with torch.no_grad():
        for _ in range(teacher_substeps):
            a_n, s_n = grid_alpha_sigma(alphas_cumprod, s - sub)  # s - sub = -1: the clean image
            x0 = pred_x0_from_v(z, guided_forward(teacher, z, s, cond, uncond, g), a_s, s_s)
            z, s, a_s, s_s = ddim_step(z, x0, a_s, s_s, a_n, s_n), s - sub, a_n, s_n  # (B, C, h, w)
        x_tilde = progressive_target(z_t, z, alpha, sigma, a_s, s_s)
    x0_student = pred_x0_from_v(z_t, student_forward(student, z_t, t, cond, g), alpha, sigma)
    return x0_loss(x0_student, x_tilde, snr_from_alpha_sigma(alpha, sigma))
