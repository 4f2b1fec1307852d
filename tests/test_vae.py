"""The VAE latent codec: trainer, discriminator path, latent scale, export, PSNR. Tiny and fast."""

import dataclasses
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file

from latentgen import autoencoding as ae
from latentgen.data.shapes import write_shapes_folder
from latentgen.eval.psnr import psnr, reconstruction_psnr
from latentgen.models.discriminator import PatchDiscriminator
from latentgen.models.presets import load_config
from latentgen.models.vae import PRESETS, VAEConfig, build_vae, get_vae_config
from latentgen.train import vae as train_vae
from latentgen.train.config import TrainerError, parse_config
from latentgen.train.vae import VAETrainConfig

FAST = {"preset": "tiny", "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "log_every": 5, "progress": False,
        "val_count": 4}


def _cfg(data, out, **kw) -> VAETrainConfig:
    return VAETrainConfig(data=(str(data),), out=str(out), **{**FAST, **kw})


def _rows(out):
    with open(os.path.join(out, "logs", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes16")
    write_shapes_folder(folder, 40, size=16, seed=0)
    return str(folder)


@pytest.fixture(scope="module")
def trained(shapes16, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "vae")
    summary = train_vae.run(_cfg(shapes16, out, max_steps=25, validate_every=25, checkpoint_every=25))
    return out, summary


# ---------------------------------------------------------------- presets
def test_presets_define_factor_and_latent_shape():
    assert get_vae_config("small64").latent_shape == (4, 16, 16)
    assert get_vae_config("small32").latent_shape == (4, 8, 8)
    for name, cfg in PRESETS.items():
        vae = build_vae(cfg)
        with torch.no_grad():
            z = vae.encode(torch.zeros(1, 3, cfg.sample_size, cfg.sample_size)).latent_dist.mode()
        assert tuple(z.shape[1:]) == cfg.latent_shape, name
    with pytest.raises(ValueError, match="choose one of"):
        get_vae_config("huge")
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig(block_out_channels=(24, 48), norm_num_groups=32)


# ---------------------------------------------------------------- trainer, export, scale
def test_tiny_trains_and_loss_falls(trained):
    out, summary = trained
    rows = [r for r in _rows(out) if "loss" in r]
    assert rows[-1]["rec"] < 0.7 * rows[0]["rec"]
    assert any("val/psnr" in r for r in _rows(out))
    assert os.listdir(os.path.join(out, "samples")) == ["reconstructions-0000025.png"]
    assert summary["steps"] == 25 and math.isfinite(summary["val_psnr"])


def test_export_round_trips_through_from_pretrained(trained):
    out, summary = trained
    loaded = AutoencoderKL.from_pretrained(os.path.join(out, "vae")).eval()
    assert load_config(VAEConfig, os.path.join(out, "vae")) == get_vae_config("tiny")
    assert loaded.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    # the exported weights are the trained ones: rebuild from the final checkpoint and compare outputs
    state = load_file(os.path.join(out, "checkpoints", "checkpoint-25", "model.safetensors"))
    fresh = build_vae("tiny").eval()
    fresh.load_state_dict({k[len("vae."):]: v for k, v in state.items() if k.startswith("vae.")})
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        a = loaded.decode(loaded.encode(x).latent_dist.mode()).sample
        b = fresh.decode(fresh.encode(x).latent_dist.mode()).sample
    assert torch.equal(a, b)


def test_scaling_factor_gives_unit_variance_latents(trained, shapes16):
    out, _ = trained
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "vae")).eval()
    from latentgen.data.folder import ImageCaptionDataset

    pixels = torch.stack([d["pixels"] for d in ImageCaptionDataset(shapes16, size=16)])
    z = ae.encode_latents(vae, pixels, torch.Generator().manual_seed(123)) * vae.config.scaling_factor
    assert z.std().item() == pytest.approx(1.0, abs=0.05)
    assert vae.config.scaling_factor != 1.0  # it was measured, not left at the default


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="No usable image"):
        train_vae.run(_cfg(tmp_path / "empty", tmp_path / "run"))


def test_resume_with_another_preset_is_a_clear_error(trained, shapes16):
    out, _ = trained
    with pytest.raises(ValueError, match="preset") as err:
        train_vae.run(_cfg(shapes16, out, max_steps=30, resume="latest", preset="small32"))
    assert "tiny" in str(err.value) and "small32" in str(err.value) and "--out" in str(err.value)


# ---------------------------------------------------------------- discriminator
def test_decoder_only_keeps_encoder_latents_and_scale(trained, shapes16, tmp_path):
    out, _ = trained
    fine = str(tmp_path / "dec")
    summary = train_vae.run(_cfg(shapes16, fine, model=out, decoder_only=True, max_steps=4, validate_every=0))
    assert summary["finished"] and summary["preset"] is None
    old, new = (load_file(os.path.join(d, "vae", "diffusion_pytorch_model.safetensors")) for d in (out, fine))
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    a, b = (AutoencoderKL.from_pretrained(os.path.join(d, "vae")) for d in (out, fine))
    assert a.config.scaling_factor == b.config.scaling_factor  # the base's, not re-measured
    assert load_config(VAEConfig, os.path.join(fine, "vae")) == load_config(VAEConfig, os.path.join(out, "vae"))
    with pytest.raises(ValueError, match="--decoder-only.*--model"):
        _cfg(shapes16, tmp_path / "x", decoder_only=True)
    with pytest.raises(TrainerError, match="not a VAE export"):
        train_vae.run(_cfg(shapes16, tmp_path / "y", model=str(tmp_path)))


def test_discriminator_path_runs(shapes16, tmp_path):
    out = str(tmp_path / "gan")
    train_vae.main(["--data", shapes16, "--out", out, "--max-steps", "3", "--disc-start", "0",
                    "--log-every", "1", "--preset", "tiny", "--batch-size", "8", "--lr", "3e-3",
                    "--warmup-steps", "0", "--no-progress", "--val-count", "4"])
    rows = [r for r in _rows(out) if "loss" in r]
    assert len(rows) == 3 and all(math.isfinite(r["d_loss"]) and r["d_weight"] >= 0 for r in rows)
    with open(os.path.join(out, "README.md")) as f:  # the card gives the command that made the codec
        assert "latentgen train vae --out" in f.read()


def test_flags_give_the_config():
    """Every flag of the VAE trainer, and the trainer's own defaults for the loop's knobs."""
    cfg = parse_config(VAETrainConfig, "", [
        "--data", "a", "--data", "b", "--out", "o", "--model", "m", "--preset", "tiny", "--recon", "l2",
        "--kl-weight", "0.5", "--disc-start", "7", "--disc-weight", "0.25", "--val-data", "v",
        "--val-count", "3", "--decoder-only", "--hflip", "--scale-samples", "9", "--max-steps", "5",
        "--no-progress"])
    assert cfg == VAETrainConfig(data=("a", "b"), out="o", model="m", preset="tiny", recon="l2",
                                 kl_weight=0.5, disc_start=7, disc_weight=0.25, val_data=("v",), val_count=3,
                                 decoder_only=True, hflip=True, scale_samples=9, max_steps=5, progress=False)
    d = parse_config(VAETrainConfig, "", ["--data", "a", "--out", "o"])
    assert (d.preset, d.recon, d.kl_weight, d.disc_start, d.val_count, d.scale_samples) == \
        ("small64", "l1", 1e-6, None, 64, 512)
    assert (d.max_steps, d.batch_size, d.lr, d.warmup_steps, d.checkpoint_every, d.validate_every) == \
        (2000, 16, 4e-4, 100, 500, 500)
    with pytest.raises(ValueError, match="--disc-start"):
        dataclasses.replace(d, disc_start=-1)


def test_hflip_holds_out_both_orientations(shapes16):
    """With --hflip the held-out images leave training in both orientations; the set is doubled."""
    from latentgen.data.folder import ImageCaptionDataset

    plain, mirrored = (ImageCaptionDataset(shapes16, size=16, hflip=h) for h in (False, True))
    train_p, val_p = train_vae.split_heldout(plain, 4, seed=0)
    train_m, val_m = train_vae.split_heldout(mirrored, 4, seed=0)
    n = len(plain)
    assert val_m.indices == val_p.indices and all(i < n for i in val_m.indices)  # same held-out images
    assert len(train_m) == 2 * len(train_p) and not {i % n for i in train_m.indices} & set(val_m.indices)
    i = train_p.indices[0]
    assert torch.equal(mirrored[i + n]["pixels"], plain[i]["pixels"].flip(-1))


def _grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def test_each_loss_reaches_only_its_own_network():
    torch.manual_seed(0)
    codec = train_vae.Codec(build_vae("tiny"), PatchDiscriminator(n_layers=2))
    x = torch.rand(4, 3, 16, 16) * 2 - 1

    def run(term):
        codec.zero_grad(set_to_none=True)
        out = codec(x, generator=torch.Generator().manual_seed(0), adversarial=True)
        term(out).backward()
        return _grads(codec.vae), _grads(codec.disc)

    d_vae, d_disc = run(lambda o: ae.hinge_d_loss(o["logits_real"], o["logits_fake_d"]))
    assert all(g.abs().sum() == 0 for g in d_vae) and any(g.abs().sum() > 0 for g in d_disc)
    g_vae, g_disc = run(lambda o: ae.hinge_g_loss(o["logits_fake_g"]))
    assert all(g.abs().sum() == 0 for g in g_disc) and any(g.abs().sum() > 0 for g in g_vae)

    # the trainer's single backward of the sum gives each network exactly its own gradient
    args = SimpleNamespace(disc_start=0, recon="l1", kl_weight=1e-6, disc_weight=0.5)
    ctx = SimpleNamespace(step=0, generator=torch.Generator().manual_seed(0),
                          accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    codec.zero_grad(set_to_none=True)
    logs = train_vae.make_step_fn(args)(codec, {"pixels": x}, ctx)
    logs["loss"].backward()
    total_disc = _grads(codec.disc)
    for a, b in zip(total_disc, d_disc):
        torch.testing.assert_close(a, b)
    assert logs["d_weight"] > 0


# ---------------------------------------------------------------- objectives and PSNR
def test_kl_matches_diffusers_posterior():
    params = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    post = DiagonalGaussianDistribution(params)
    torch.testing.assert_close(ae.kl_diagonal_gaussian(post.mean, post.logvar), post.kl())
    assert ae.kl_diagonal_gaussian(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)).item() == 0.0


def test_hinge_losses_on_known_logits():
    assert ae.hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0  # confident and right
    assert ae.hinge_d_loss(torch.zeros(2), torch.zeros(2)).item() == 1.0
    assert ae.hinge_g_loss(torch.tensor([1.0, 3.0])).item() == -2.0
    with pytest.raises(ValueError, match="l1"):
        ae.reconstruction_loss(torch.zeros(1), torch.zeros(1), "l3")


def test_psnr_known_cases():
    a = torch.zeros(2, 3, 4, 4)
    assert psnr(a, a + 0.1).tolist() == pytest.approx([10 * math.log10(4 / 0.01)] * 2, rel=1e-6)  # [-1, 1]
    half = torch.full((3, 4, 4), 0.5)
    assert psnr(half, half + 0.05, data_range=1.0).item() == pytest.approx(10 * math.log10(1 / 0.0025), rel=1e-6)
    # the same picture in [-1, 1] and in [0, 1] gives the same PSNR
    x, y = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    assert psnr(x * 2 - 1, y * 2 - 1).item() == pytest.approx(psnr(x, y, data_range=1.0).item(), rel=1e-5)
    assert psnr(a, a).isinf().all()
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:1])


def test_reconstruction_psnr_dataset_or_loader(shapes16):
    from torch.utils.data import DataLoader

    from latentgen.data.folder import ImageCaptionDataset

    ds = ImageCaptionDataset(shapes16, size=16)
    vae = build_vae("tiny").eval()
    a = reconstruction_psnr(vae, ds, n=10, batch_size=4)
    b = reconstruction_psnr(vae, DataLoader(ds, batch_size=3), n=10)
    assert a == pytest.approx(b, rel=1e-5) and 0 < a < 60


def test_stopped_run_exports_nothing_and_says_unfinished(shapes16, tmp_path, monkeypatch):
    """SIGTERM mid-run: a checkpoint, no vae/ export, and finished=False (so the recipe does not call it done)."""
    import signal

    make = train_vae.make_step_fn

    def make_stopping(cfg):
        step = make(cfg)

        def stopping(model, batch, ctx):
            if ctx.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler turns it into a stop request
            return step(model, batch, ctx)

        return stopping

    monkeypatch.setattr(train_vae, "make_step_fn", make_stopping)
    out = str(tmp_path / "vae")
    res = train_vae.run(_cfg(shapes16, out, max_steps=20, checkpoint_every=50))
    assert res["finished"] is False and res["step"] < 20
    assert not os.path.exists(os.path.join(out, "vae"))
    assert os.listdir(os.path.join(out, "checkpoints"))
