"""Codec tuning before a fine-tune (latentgen.adapt): the new images' latents move, the known ones stay."""

import copy

import pytest
import torch

from latentgen.adapt import SEPARATION_MARGIN, Decoder, DecoderData, decoder_step, encode_mode, roundtrip_psnr
from tests.tiny_models import make_tiny_components


def _pixels(colour, n, seed):
    """``n`` 16-px squares of ``colour`` (RGB in [-1, 1]) on white, at seeded places.  # (n, 3, 16, 16)"""
    g = torch.Generator().manual_seed(seed)
    x = torch.ones(n, 3, 16, 16)
    for i in range(n):
        r, c = torch.randint(0, 9, (2,), generator=g).tolist()
        x[i, :, r:r + 7, c:c + 7] = torch.tensor(colour)[:, None, None]
    return x


def _tune(vae, new, prior, tune_encoder, steps=60):
    data = DecoderData(vae, new, prior)
    model = Decoder(vae, tune_encoder)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    batch = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in data[0]}
    for _ in range(steps):
        logs = decoder_step(model, batch, None)
        opt.zero_grad()
        logs["loss"].backward()
        opt.step()
    vae.eval()
    return logs


@pytest.mark.parametrize("tune_encoder", [True, False])
def test_codec_tuning_moves_the_new_latents_and_keeps_the_known_ones(tune_encoder):
    vae = make_tiny_components()["vae"]
    old = copy.deepcopy(vae)
    new = _pixels([-1.0, 0.18, 0.18], 8, 0)  # teal
    prior = torch.cat([_pixels([-1.0, -1.0, 0.9], 8, 1), _pixels([0.9, -1.0, -1.0], 8, 2)])  # blue, red
    before = roundtrip_psnr(vae, new)
    logs = _tune(vae, new, prior, tune_encoder)
    assert roundtrip_psnr(vae, new) > before + 0.5  # the folder is reconstructed better (a random VAE here)
    z_old, z_new = encode_mode(old, new), encode_mode(vae, new)
    moved = float(((z_new - z_old).flatten(1).norm(dim=1) / z_old.flatten(1).norm(dim=1)).mean())
    z_prior_old, z_prior_new = encode_mode(old, prior), encode_mode(vae, prior)
    drift = float(((z_prior_new - z_prior_old).flatten(1).norm(dim=1) / z_prior_old.flatten(1).norm(dim=1)).mean())
    if tune_encoder:
        assert moved > 0.5 * SEPARATION_MARGIN and drift < 0.5 * moved, (moved, drift)
        assert "moved" in logs and "prior_drift" in logs
    else:
        assert moved == 0 and drift == 0  # the encoder is untouched
        for k, v in vae.encoder.state_dict().items():
            torch.testing.assert_close(v, old.encoder.state_dict()[k], rtol=0, atol=0)
