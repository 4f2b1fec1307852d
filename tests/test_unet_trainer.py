import dataclasses
import json
import os

import pytest
import torch

from tests.tiny_components import make_tiny_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_tiny_parts(tmp_path_factory.mktemp("parts"))


def _losses(out):
    with open(os.path.join(out, "logs", "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_unet_trains_saves_and_generates(parts, tmp_path):
    from latentgen.train.unet import UNetTrainConfig, run

    data, vae_dir, clip_dir = parts
    out = str(tmp_path / "unet")
    cfg = UNetTrainConfig(out=out, data=(data,), vae=vae_dir, text_encoder=clip_dir, preset="tiny", size=16,
                          max_steps=40, batch_size=8, lr=3e-3, log_every=10, validate_every=0, val_steps=2,
                          progress=False, ema_decay=0.9)
    res = run(cfg)
    assert res["finished"]
    with open(os.path.join(out, "run_config.json")) as f:  # the config itself, with its version
        saved = json.load(f)
    assert saved["config_version"] == 1 and saved["trainer"] == "unet" and saved["data"] == [data]
    assert saved["max_steps"] == 40 and saved["examples"] > 0
    with open(os.path.join(out, "README.md")) as f:  # the card gives the command that made the model
        assert "latentgen train unet --out" in f.read()
    losses = _losses(out)
    assert losses[-1] < losses[0], losses
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "clip"):
        assert os.path.isdir(os.path.join(out, sub)), sub
    with open(os.path.join(out, "prompts.txt")) as f, open(os.path.join(data, "metadata.jsonl")) as m:
        known = f.read().splitlines()  # what a fine-tune's prior preservation holds the model to
        assert known and set(known) <= {json.loads(line)["text"] for line in m}
    # the VAE's preset, as train.vae wrote it beside its weights, travels with the VAE
    vae_src = os.path.join(vae_dir, "vae") if os.path.isdir(os.path.join(vae_dir, "vae")) else vae_dir
    with open(os.path.join(vae_src, "latentgen_config.json")) as a, open(os.path.join(out, "vae", "latentgen_config.json")) as b:
        assert json.load(a) == json.load(b)
    assert os.path.isfile(os.path.join(out, "samples", "samples-0000040.png"))
    # the latent cache is reused on resume and the folder loads and generates
    assert len(os.listdir(os.path.join(out, "cache"))) == 1
    from latentgen import LatentGenPipeline
    from latentgen.pipeline import read_model_card_defaults

    pipe = LatentGenPipeline.from_pretrained(out)
    assert read_model_card_defaults(out)["sampler"] == "ddim"
    img = pipe("a large red circle at center", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert img.shape == (1, 16, 16, 3) and torch.isfinite(torch.as_tensor(img)).all()


def test_missing_components_is_a_clear_error(parts, tmp_path, capsys):
    from latentgen.train import unet as train_unet

    data, vae_dir, _ = parts
    with pytest.raises(SystemExit):
        train_unet.main(["--data", data, "--vae", vae_dir, "--text-encoder", str(tmp_path), "--out",
                         str(tmp_path / "o"), "--preset", "tiny", "--max-steps", "1"])
    assert "text_encoder" in capsys.readouterr().err


def test_unet_with_shuffled_summaries_trains_and_records_it(parts, tmp_path, capsys):
    from latentgen.train import unet as train_unet

    data, vae_dir, clip_dir = parts
    out = str(tmp_path / "shuf")
    base = ["--data", data, "--vae", vae_dir, "--text-encoder", clip_dir, "--out", out, "--preset", "tiny",
            "--size", "16", "--batch-size", "8", "--log-every", "2", "--validate-every", "0", "--no-progress"]
    with pytest.raises(SystemExit):
        train_unet.main(base + ["--max-steps", "1", "--shuffle-summary", "-0.1"])
    assert "probability in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_unet.main(base + ["--max-steps", "1", "--shuffle-summary-multi", "0"])
    assert "give --shuffle-summary P" in capsys.readouterr().err
    assert train_unet.main(base + ["--max-steps", "4", "--shuffle-summary", "1",
                                   "--shuffle-summary-multi", "0"])["finished"]
    with open(os.path.join(out, "run_config.json")) as f:
        run = json.load(f)
    assert run["shuffle_summary"] == 1.0 and run["shuffle_summary_multi"] == 0.0
    assert all(torch.isfinite(torch.tensor(_losses(out))))


def test_resume_with_other_settings_is_refused_but_bookkeeping_may_change(parts, tmp_path):
    from latentgen.train.unet import UNetTrainConfig, run

    data, vae_dir, clip_dir = parts
    cfg = UNetTrainConfig(out=str(tmp_path / "r"), data=(data,), vae=vae_dir, text_encoder=clip_dir, preset="tiny",
                          size=16, max_steps=2, batch_size=4, validate_every=0, val_steps=1, progress=False,
                          checkpoint_every=2)
    assert run(cfg)["finished"]
    longer = dataclasses.replace(cfg, max_steps=3, resume="latest", val_steps=2, log_every=1)
    assert run(longer)["step"] == 3
    with pytest.raises(ValueError, match="caption_dropout"):
        run(dataclasses.replace(longer, max_steps=4, caption_dropout=0.3))
