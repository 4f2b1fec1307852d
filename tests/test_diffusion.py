"""The noise schedule, the samplers by name and the v-prediction training objective."""

import pytest
import torch
from diffusers import DDPMScheduler, PNDMScheduler

from latentgen import diffusion as D
from latentgen.models.unet import PRESETS, UNetConfig, build_unet, get_unet_config


def test_training_schedule_reaches_zero_terminal_snr():
    abar = D.training_alphas_cumprod()
    assert abar.shape == (1024,)
    assert abar[-1] == 0 and abar[0] > 0.99
    s = D.snr(abar, torch.arange(1024))
    assert s[-1] == 0 and bool((s[1:] < s[:-1]).all()), "SNR must fall strictly to exactly 0"


def test_power_of_two_grids_nest_on_1024_steps():
    """With 1024 steps and trailing spacing, n/2 steps are every other step of n steps."""
    sched = D.make_scheduler("ddim")
    grids = {}
    for n in (1, 2, 4, 8, 16, 32, 64):
        sched.set_timesteps(n)
        grids[n] = sched.timesteps.tolist()
        assert grids[n][0] == 1023, "every schedule starts from pure noise"
    for n in (2, 4, 8, 16, 32, 64):
        assert grids[n][::2] == grids[n // 2]


@pytest.mark.parametrize("name", D.SAMPLERS)
def test_make_scheduler_keeps_the_training_schedule(name):
    s = D.make_scheduler(name)
    assert s.config.prediction_type == "v_prediction"
    assert s.config.rescale_betas_zero_snr and s.config.timestep_spacing == "trailing"
    assert s.config.num_train_timesteps == 1024
    assert not s.config.get("clip_sample", False)
    assert D.sampler_name(s) == name
    # rebuilding from another sampler's config gives the same schedule
    other = D.make_scheduler(name, D.make_scheduler("euler").config)
    assert type(other) is type(s) and D.sampler_name(other) == name
    s.set_timesteps(4)
    assert [int(t) for t in s.timesteps] == [1023, 767, 511, 255]


def test_make_scheduler_keeps_a_foreign_schedule():
    sd = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                       steps_offset=1)
    e = D.make_scheduler("euler", sd.config)
    assert e.config.prediction_type == "epsilon" and e.config.timestep_spacing == "leading"
    assert e.config.num_train_timesteps == 1000 and e.config.steps_offset == 1
    assert D.sampler_name(sd) == "PNDMScheduler"


def test_unknown_sampler_lists_the_choices():
    with pytest.raises(ValueError, match="euler_a"):
        D.make_scheduler("plms")


def test_equations_invert_each_other():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    t = torch.tensor([0, 1, 300, 700, 1022, 1023])
    alpha, sigma = D.alpha_sigma(D.training_alphas_cumprod(), t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    x_t = D.q_sample(x0, eps, alpha, sigma)
    v = D.v_target(x0, eps, alpha, sigma)
    torch.testing.assert_close(D.pred_x0_from_v(x_t, v, alpha, sigma), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D.pred_eps_from_v(x_t, v, alpha, sigma), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D.pred_x0("v_prediction", x_t, v, alpha, sigma), x0, atol=1e-5, rtol=1e-5)
    ok = t < 1000  # eps cannot give x0 near SNR 0: that is why we predict v
    torch.testing.assert_close(D.pred_x0("epsilon", x_t, eps, alpha, sigma)[ok], x0[ok], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x_t[-1], eps[-1])  # the last training step is pure noise


def test_equations_match_the_diffusers_scheduler():
    """Training (our equations) and sampling (diffusers) share one schedule exactly."""
    sched = DDPMScheduler.from_config(D.training_scheduler_config())
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 4, 2, 2, generator=g), torch.randn(4, 4, 2, 2, generator=g)
    t = torch.tensor([0, 10, 512, 1023])
    alpha, sigma = D.alpha_sigma(sched.alphas_cumprod, t)
    torch.testing.assert_close(D.q_sample(x0, eps, alpha, sigma), sched.add_noise(x0, eps, t))
    torch.testing.assert_close(D.v_target(x0, eps, alpha, sigma), sched.get_velocity(x0, eps, t))


def test_min_snr_weight_hand_values():
    w = D.min_snr_weight(torch.tensor([0.0, 1.0, 5.0, 10.0]), gamma=5.0)
    torch.testing.assert_close(w, torch.tensor([0.0, 0.5, 5 / 6, 5 / 11]))


class _Oracle(torch.nn.Module):
    """Knows x0, so it predicts v exactly: v = (alpha_t x_t - x0) / sigma_t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x_t, t, encoder_hidden_states=None, return_dict=False):
        alpha, sigma = D.alpha_sigma(D.training_alphas_cumprod(), t)
        return (self.w * (alpha * x_t - self.x0) / sigma,)


def test_diffusion_loss_is_zero_for_a_perfect_model_and_seeded():
    x0 = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    emb = torch.zeros(8, 3, 5)
    assert D.diffusion_loss(_Oracle(x0), x0, emb, torch.Generator().manual_seed(0)) < 1e-8
    wrong = _Oracle(torch.zeros_like(x0))
    a = D.diffusion_loss(wrong, x0, emb, torch.Generator().manual_seed(0))
    b = D.diffusion_loss(wrong, x0, emb, torch.Generator().manual_seed(0))
    assert a > 0.01 and a == b
    weighted = D.diffusion_loss(wrong, x0, emb, torch.Generator().manual_seed(0), min_snr_gamma=5.0)
    assert 0 < weighted < a  # min-SNR weights are at most gamma / (gamma + 1) < 1


def test_split_losses_are_the_v_loss_in_one_pass_and_hold_the_held_samples_to_the_base():
    x0 = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    emb = torch.zeros(6, 3, 5)
    held = torch.tensor([False, True, False, True, True, False])
    wrong = _Oracle(torch.zeros(1, 4, 4, 4))  # the v of x0 = 0, for any batch
    inst, pri = D.split_losses(wrong, x0, emb, held, torch.Generator().manual_seed(0))
    whole = D.diffusion_loss(wrong, x0, emb, torch.Generator().manual_seed(0))  # the same t and eps
    assert inst > 0.01 and pri > 0.01 and torch.allclose((3 * inst + 3 * pri) / 6, whole)
    inst_b, pri_b = D.split_losses(wrong, x0, emb, held, torch.Generator().manual_seed(0), base_unet=wrong)
    assert pri_b == 0 and torch.equal(inst_b, inst)  # held to itself: nothing to learn there
    perfect, _ = D.split_losses(_Oracle(x0), x0, emb, held, torch.Generator().manual_seed(0), base_unet=wrong)
    assert perfect < 1e-8


def test_tiny_unet_trains_on_the_v_loss():
    torch.manual_seed(0)
    cfg = get_unet_config("tiny")
    unet = build_unet(cfg)
    assert 5_000 < sum(p.numel() for p in unet.parameters()) < 100_000
    latents = torch.randn(4, 4, 8, 8)
    emb = torch.randn(4, 5, cfg.cross_attention_dim)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = D.diffusion_loss(unet, latents, emb, torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])


def test_unet_presets_are_consistent():
    for name, cfg in PRESETS.items():
        assert cfg.sample_size % 2 ** (len(cfg.block_out_channels) - 1) == 0, name
    unet = build_unet("tiny")
    assert unet.config.sample_size == 8 and unet.config.cross_attention_dim == 32
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetConfig(block_out_channels=(48, 64, 64))
    with pytest.raises(ValueError, match="one block type per level"):
        UNetConfig(block_out_channels=(64, 128))
    with pytest.raises(ValueError, match="small, base|tiny, small"):
        get_unet_config("huge")
