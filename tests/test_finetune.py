import dataclasses
import json
import logging
import os
import shlex
import shutil

import pytest
import torch

from latentgen.data.shapes import write_shapes_folder
from latentgen.lora import UNET_LORA_TARGETS
from latentgen.train.config import TrainerError
from latentgen.train.finetune import FinetuneConfig, main, run
from tests.tiny_models import make_tiny_pipeline


@pytest.fixture(scope="module")
def base_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    data = str(root / "data")
    write_shapes_folder(data, n=12, size=16, seed=1)
    return make_tiny_pipeline(root), data


SMALL = {"max_steps": 12, "batch_size": 4, "lr": 5e-3, "progress": False, "log_every": 4,
         "checkpoint_every": 6, "val_steps": 2, "decoder_steps": 3}


def _cfg(base, data, out, **fields):
    return FinetuneConfig(model=str(base), data=(str(data),), out=str(out), **{**SMALL, **fields})


def _args(base, data, out, *extra):
    return ["--model", base, "--data", data, "--out", str(out), "--max-steps", "12", "--batch-size", "4",
            "--lr", "5e-3", "--no-progress", "--log-every", "4", "--checkpoint-every", "6", "--val-steps", "2",
            "--decoder-steps", "3", *extra]


class _Notes(logging.Handler):
    """The messages a logger emits from now on (``take`` returns them and starts again)."""

    def __init__(self, name: str):
        super().__init__()
        self.messages = []
        logging.getLogger(name).addHandler(self)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def take(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken


def _image(pipe, seed=0):
    return pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
                output_type="np").images


@pytest.mark.parametrize("targets", [UNET_LORA_TARGETS, UNET_LORA_TARGETS + ",proj_in,proj_out,conv1,conv2"],
                         ids=["attention", "and-other-layers"])  # proj_in: the file's first key, not renamed
def test_lora_trains_only_adapters_and_loads_in_both_pipelines(base_and_data, tmp_path, targets):
    from diffusers import StableDiffusionPipeline

    from latentgen import LatentGenPipeline
    base, data = base_and_data
    out = tmp_path / "lora"
    with pytest.warns(UserWarning, match="new to the tokenizer"):
        res = run(_cfg(base, data, out, lora_rank=4, lora_targets=targets))
    assert res["finished"] and res["lora"]
    assert os.path.isfile(out / "pytorch_lora_weights.safetensors")
    from safetensors.torch import load_file

    keys = load_file(out / "pytorch_lora_weights.safetensors")
    assert keys and all("lora" in k for k in keys)

    ours = LatentGenPipeline.from_pretrained(base)
    before = _image(ours)
    base_sd = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    notes = _Notes("diffusers.loaders.lora_base")
    ours.load_lora_weights(str(out))
    assert not notes.take()  # diffusers' note that a UNet-only LoRA has no text-encoder keys, left out
    saved = {k.removeprefix("unet.").split(".lora")[0] for k in keys}  # the adapted modules' names
    for target in targets.split(","):  # every kind of target has adapters, the ResNet convolutions too
        assert any(name.endswith("." + target) for name in saved), target
    assert _adapted(ours.unet) == saved  # every adapter in the file is loaded, none dropped
    after = _image(ours)
    assert abs(after - before).max() > 1e-4  # the adapters change the image
    # only adapter weights differ from the base model
    for k, v in ours.unet.state_dict().items():
        if "lora" not in k:
            torch.testing.assert_close(v, base_sd[k.replace(".base_layer", "")], rtol=0, atol=0)

    stock = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    stock.load_lora_weights(str(out))
    assert any(m.startswith("No LoRA keys associated to CLIPTextModel") for m in notes.take())  # stock's note
    logging.getLogger("diffusers.loaders.lora_base").removeHandler(notes)
    assert _adapted(stock.unet) == saved
    theirs = stock("a red circle", num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                   output_type="np").images
    assert abs(theirs - after).max() < 1e-3

    ours.fuse_lora(lora_scale=0.0)  # scale 0 = the base model again
    assert abs(_image(ours) - before).max() < 1e-4


def _adapted(unet) -> set[str]:
    """The names of ``unet``'s modules that carry loaded LoRA adapters."""
    return {name for name, module in unet.named_modules() if hasattr(module, "lora_A") and module.lora_A}


def _fixed_loss(pipe, data, repeats=4):
    """The v-loss of ``pipe`` on the folder's images, with fixed t and noise (comparable across models)."""
    from latentgen.cache import build_cache, sample_latents
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.diffusion import diffusion_loss

    cache = build_cache(ImageCaptionDataset([data], size=16), pipe.vae, pipe.tokenizer, pipe.text_encoder)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = [diffusion_loss(pipe.unet, sample_latents(cache, pipe.vae.config.scaling_factor, g),
                                 cache["embeddings"][cache["caption_id"]], g) for _ in range(repeats)]
    return torch.stack(losses).mean().item()


def test_full_finetune_lowers_loss_and_saves_a_model(base_and_data, tmp_path):
    from latentgen import LatentGenPipeline
    base, data = base_and_data
    base = shutil.copytree(base, tmp_path / "base")  # with a preset config beside the UNet's weights, as trained
    (base / "unet" / "latentgen_config.json").write_text('{"_class": "UNetConfig", "sample_size": 2}')
    base = str(base)
    out = tmp_path / "full"
    res = run(_cfg(base, data, out, lora_rank=0, lr=2e-3, max_steps=30, caption_dropout=0.0))
    assert res["finished"] and not res["lora"]
    tuned = LatentGenPipeline.from_pretrained(str(out))
    assert _fixed_loss(tuned, data) < 0.9 * _fixed_loss(LatentGenPipeline.from_pretrained(base), data)
    assert _image(tuned).shape == (1, 16, 16, 3)
    # the preset travels with the weights (train.distill rebuilds the student's from it)
    assert (out / "unet" / "latentgen_config.json").read_text() == '{"_class": "UNetConfig", "sample_size": 2}'


def test_text_encoder_lora_and_dreambooth_prior(base_and_data, tmp_path):
    base, data = base_and_data
    out = tmp_path / "db"
    res = run(_cfg(base, data, out, lora_rank=2, train_text_encoder=True, instance_prompt="a red circle",
                   class_prompt="a circle", num_class_images=4, val_steps=2, max_steps=6))
    assert res["finished"]
    assert len([f for f in os.listdir(out / "class_images") if f.endswith(".png")]) == 4
    from safetensors.torch import load_file

    keys = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    assert not any("base_model.model" in k for k in keys)  # the model's own names, not peft's wrapper's
    _loads_in_both_pipelines(base, out)


def _loads_in_both_pipelines(base, out, text_lora=True):
    """The LoRA in ``out`` loads through our pipeline and stock diffusers, text encoder included, and both
    draw the same image, which differs from the base model's."""
    from diffusers import StableDiffusionPipeline

    from latentgen import LatentGenPipeline

    ours = LatentGenPipeline.from_pretrained(base)
    before = _image(ours)
    te_before = ours.encode_prompt(["a red circle"], "cpu")
    ours.load_lora_weights(str(out))
    if text_lora:
        assert not torch.allclose(ours.encode_prompt(["a red circle"], "cpu"), te_before)  # the text LoRA is in
    after = _image(ours)
    assert abs(after - before).max() > 1e-4
    stock = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    stock.load_lora_weights(str(out))
    theirs = stock("a red circle", num_inference_steps=2, guidance_scale=5.0,
                   generator=torch.Generator().manual_seed(0), output_type="np").images
    assert abs(theirs - after).max() < 1e-3


@pytest.mark.parametrize("bad,match", [
    (["--lora-rank", "-1"], "lora-rank must be from 0 to 256"),
    (["--lora-rank", "100000"], "lora-rank must be from 0 to 256"),
    (["--max-steps", "0"], "max-steps must be from 1"),
    (["--decoder-steps", "0"], "decoder-steps must be from 1"),
    (["--class-prompt", "a dog"], "num-class-images"),
    (["--shuffle-summary", "1.5"], "probability in [0, 1]"),
    (["--shuffle-summary", "0.5", "--train-text-encoder"], "leave out --train-text-encoder"),
    (["--shuffle-summary-multi", "0"], "give --shuffle-summary P"),
    (["--prior-target", "pixels"], "invalid choice: 'pixels'"),
    (["--prior-images", "0"], "prior-images must be from 1 to 100000"),
])
def test_bad_flags(base_and_data, tmp_path, capsys, bad, match):
    base, data = base_and_data
    with pytest.raises(SystemExit):
        main(_args(base, data, tmp_path / "x", *bad))
    assert match in capsys.readouterr().err


def test_flags_give_the_config_and_the_mode_gives_the_learning_rate(tmp_path):
    from latentgen.train.config import command_for, parse_config

    argv = _args("m", "d", tmp_path / "o", "--lora-rank", "0", "--train-text-encoder", "--tune-decoder", "on",
                 "--prior", "off", "--val-prompt", "a", "--val-prompt", "b", "--text-encoder", "te",
                 "--instance-prompt", "sks", "--class-prompt", "a dog", "--num-class-images", "3")
    cfg = parse_config(FinetuneConfig, "", argv)
    assert cfg == _cfg("m", "d", tmp_path / "o", lora_rank=0, train_text_encoder=True, tune_decoder="on",
                       prior="off", val_prompt=("a", "b"), text_encoder="te", instance_prompt="sks",
                       class_prompt="a dog", num_class_images=3)
    command = shlex.split(command_for(cfg))  # latentgen train finetune --out ...: the card's command
    assert parse_config(FinetuneConfig, "", command[3:]) == cfg
    default = FinetuneConfig(out="o", data="d", model="m")  # a LoRA of rank 32 on attention and ResNet convs
    assert default.lora_rank == 32 and default.lora_targets.split(",")[-2:] == ["conv1", "conv2"]
    assert default.loop().lr == 5e-4 and FinetuneConfig(out="o", data="d", model="m", lora_rank=8).loop().lr == 5e-4
    assert FinetuneConfig(out="o", data="d", model="m", lora_rank=0).loop().lr == 1e-4  # full
    assert FinetuneConfig(out="o", data="d", model="m", lora_rank=0, lr=1e-3).loop().lr == 1e-3


def test_not_a_model_folder(base_and_data, tmp_path, capsys):
    _, data = base_and_data
    with pytest.raises(TrainerError, match="not a latentgen or Stable Diffusion model"):
        run(_cfg(tmp_path, data, tmp_path / "x"))
    with pytest.raises(SystemExit) as exit_:  # on the command line: one line on stderr, status 2
        main(_args(str(tmp_path), data, tmp_path / "x"))
    assert exit_.value.code == 2 and "error: --model" in capsys.readouterr().err


def test_empty_data_folder(base_and_data, tmp_path):
    base, _ = base_and_data
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="(?i)no usable"):
        run(_cfg(base, tmp_path / "empty", tmp_path / "x"))


def test_resume_with_another_learning_rate_is_refused(base_and_data, tmp_path):
    base, data = base_and_data
    out = tmp_path / "resumed"
    cfg = _cfg(base, data, out, max_steps=6)
    assert run(cfg)["finished"]
    longer = dataclasses.replace(cfg, max_steps=12, resume="latest")
    with pytest.raises(ValueError, match=r"different settings \(lr"):
        run(dataclasses.replace(longer, lr=1e-3))
    again = run(longer)  # same settings go on
    assert again["finished"] and again["step"] == 12


def test_lora_on_a_continued_text_encoder_writes_a_loadable_base(base_and_data, tmp_path):
    """--text-encoder (a CLIP continued on the user's folder): the LoRA's --out also holds the base model
    with that text encoder, so from_pretrained(out) + load_lora_weights(out) is the fine-tuned model."""
    from diffusers import StableDiffusionPipeline

    from latentgen import LatentGenPipeline
    base, data = base_and_data
    other = make_tiny_pipeline(tmp_path / "other", seed=7)  # stands in for train.clip's continued run
    out = tmp_path / "lora-te"
    res = run(_cfg(base, data, out, lora_rank=4, max_steps=4, text_encoder=other))
    assert res["finished"]
    got = LatentGenPipeline.from_pretrained(str(out))
    want = LatentGenPipeline.from_pretrained(other).text_encoder.state_dict()
    for k, v in got.text_encoder.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    base_unet = LatentGenPipeline.from_pretrained(base).unet.state_dict()
    assert all(torch.equal(v, base_unet[k]) for k, v in got.unet.state_dict().items())  # no adapters baked in
    got.load_lora_weights(str(out))
    stock = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, requires_safety_checker=False)
    stock.load_lora_weights(str(out))
    theirs = stock("a red circle", num_inference_steps=2, guidance_scale=5.0,
                   generator=torch.Generator().manual_seed(0), output_type="np").images
    assert abs(theirs - _image(got)).max() < 1e-3

    with pytest.raises(TrainerError, match="no text_encoder/config.json"):
        run(_cfg(base, data, tmp_path / "bad", text_encoder=str(tmp_path)))


def test_summary_shuffle_swaps_only_the_states_from_the_end_token_on(base_and_data):
    from transformers import CLIPTokenizer

    from latentgen.train.common import SummaryShuffle

    base, _ = base_and_data
    tok = CLIPTokenizer.from_pretrained(os.path.join(base, "tokenizer"))
    captions = ["", "a red circle", "a blue square", "a green triangle at top", "a face"]
    lengths = [len(ids) for ids in tok(captions).input_ids]
    assert lengths[1] == lengths[2] and len(set(lengths)) > 2  # two captions share a length, the rest do not
    n, d = 8, 3
    states = torch.arange(len(captions), dtype=torch.float)[:, None, None].expand(-1, n, d).clone()  # (N, L, D) = id
    shuffle = SummaryShuffle(tok, captions, states, p=1.0)
    ids = torch.tensor([1, 2, 0, 3, 4])
    out = shuffle(ids, states[ids], step=0)
    end = lengths[1] - 1  # the first <|endoftext|> of "a red circle"
    assert (out[0, :end] == 1).all() and (out[0, end:] == 2).all()  # the other caption of its length
    assert (out[1, :end] == 2).all() and (out[1, end:] == 1).all()
    assert torch.equal(out[2:], states[ids[2:]])  # the empty caption, and captions no other shares, unchanged
    assert torch.equal(shuffle(ids, states[ids], step=0), out)  # the same step draws the same donors
    assert torch.equal(SummaryShuffle(tok, captions, states, p=0.0)(ids, states[ids], step=0), states[ids])


def test_summary_shuffle_multi_sets_the_probability_for_captions_naming_two_shapes(base_and_data):
    from transformers import CLIPTokenizer

    from latentgen.train.common import SummaryShuffle, shapes_named

    assert [shapes_named(c) for c in ("a face", "a red circle", "a red circle and a blue square at top")] == [0, 1, 2]
    base, _ = base_and_data
    tok = CLIPTokenizer.from_pretrained(os.path.join(base, "tokenizer"))
    captions = ["a red circle", "a blue square", "a red circle and a blue square", "a blue circle and a red square"]
    lengths = [len(ids) for ids in tok(captions).input_ids]
    assert lengths[0] == lengths[1] and lengths[2] == lengths[3]
    states = torch.arange(len(captions), dtype=torch.float)[:, None, None].expand(-1, 12, 2).clone()  # (N, L, D) = id
    ids = torch.arange(len(captions))
    spared = SummaryShuffle(tok, captions, states, p=1.0, p_multi=0.0)(ids, states[ids], step=0)
    assert (spared[0, lengths[0] - 1:] == 1).all() and (spared[1, lengths[1] - 1:] == 0).all()  # one shape: swapped
    assert torch.equal(spared[2:], states[2:])  # two shapes: their own summary
    only_multi = SummaryShuffle(tok, captions, states, p=0.0, p_multi=1.0)(ids, states[ids], step=0)
    assert torch.equal(only_multi[:2], states[:2]) and (only_multi[2, lengths[2] - 1:] == 3).all()
    with pytest.raises(ValueError, match="p_multi must lie in"):
        SummaryShuffle(tok, captions, states, p=1.0, p_multi=2.0)


def test_full_finetune_with_shuffled_summaries_runs_and_records_it(base_and_data, tmp_path):
    base, data = base_and_data
    out = tmp_path / "shuf"
    res = run(_cfg(base, data, out, lora_rank=0, max_steps=4, shuffle_summary=1.0))
    assert res["finished"]
    record = json.loads((out / "finetune.json").read_text())
    assert record["shuffle_summary"] == 1.0 and record["shuffle_summary_multi"] is None
    assert record == json.loads((out / "run_config.json").read_text())  # the run's saved config
    with open(out / "README.md") as f:  # the card gives the command that made the model
        assert "latentgen train finetune --out" in f.read()


def test_tuned_decoder_is_saved_with_the_lora_and_loads_in_both_pipelines(base_and_data, tmp_path, capsys):
    from latentgen.adapt import roundtrip
    from latentgen.pipeline import LatentGenPipeline
    base, data = base_and_data
    out = tmp_path / "dec"
    res = run(_cfg(base, data, out, lora_rank=2, tune_decoder="on", decoder_steps=6, decoder_lr=1e-3,
                   val_steps=2, max_steps=4, prior_images=5))
    assert res["finished"]
    said = capsys.readouterr().out
    assert "codec: the VAE reconstructs the folder at" in said and "tuned decoder:" in said
    priors = sorted(os.listdir(out / "prior_images"))
    assert len([f for f in priors if f.endswith(".png")]) == 5  # --prior-images of the base model's images
    assert len([f for f in priors if f.endswith(".txt")]) == 5  # ... with their captions: prior preservation
    record = json.loads((out / "finetune.json").read_text())
    assert record["prior_images"] == 5 and record["examples"] == 12 + 5  # the folder's and the prior images
    assert record["decoder"]["tuned"] and record["decoder"]["steps"] == 6
    tuned = LatentGenPipeline.from_pretrained(str(out))
    base_pipe = LatentGenPipeline.from_pretrained(base)
    dec, ref = dict(tuned.vae.decoder.named_parameters()), dict(base_pipe.vae.decoder.named_parameters())
    assert any(not torch.equal(dec[k], ref[k]) for k in dec)  # the decoder moved ...
    for k, v in tuned.vae.encoder.state_dict().items():  # ... the encoder did not
        torch.testing.assert_close(v, base_pipe.vae.encoder.state_dict()[k], rtol=0, atol=0)
    from latentgen.data.folder import ImageCaptionDataset

    pixels = torch.stack([ImageCaptionDataset([data], size=16)[i]["pixels"] for i in range(12)])
    after = roundtrip(tuned.vae, pixels)  # what the run recorded is what the saved VAE does
    assert after["psnr"] == pytest.approx(record["decoder"]["psnr_after"], abs=0.05)
    assert after["edge_psnr"] == pytest.approx(record["decoder"]["edge_psnr_after"], abs=0.05)
    _loads_in_both_pipelines(str(out), out, text_lora=False)


def test_prior_images_default_to_one_per_folder_image(base_and_data, tmp_path):
    base, data = base_and_data
    out = tmp_path / "p"
    assert run(_cfg(base, data, out, max_steps=2, val_steps=2))["finished"]
    assert len([f for f in os.listdir(out / "prior_images") if f.endswith(".png")]) == 12


def test_prior_prompts_leave_out_the_new_words():
    from latentgen.train.prior import prior_prompts

    caps = ["a large teal circle at center", "a small Teal, square at left", "a large teal circle at center"]
    assert prior_prompts(caps, ["teal"]) == [
        "a large circle at center", "a large circle at center and a small square at left",
        "a small square at left", "a small square at left and a large circle at center"]
    assert prior_prompts(["a teal"], ["teal"]) == ["a"] and prior_prompts(["teal"], ["teal"]) == []


def test_a_lora_folder_as_the_base_model_is_a_clear_error(base_and_data, tmp_path):
    base, data = base_and_data
    out = tmp_path / "lora"
    run(_cfg(base, data, out, lora_rank=2, max_steps=2, tune_decoder="off"))
    with pytest.raises(TrainerError, match="holds LoRA weights .* not a full model: give the model it was "
                                           "fine-tuned"):
        run(_cfg(out, data, tmp_path / "again"))


def test_prior_target_base_holds_the_prior_images_to_the_base_model(base_and_data, tmp_path):
    """Output preservation: with a large weight on it, the fine-tune moves the base's predictions on the prior
    images' captions less than DreamBooth's prior loss does, at the same steps and seed."""
    from latentgen import LatentGenPipeline
    from latentgen.diffusion import preservation_loss

    base, data = base_and_data
    pipe = LatentGenPipeline.from_pretrained(base)
    prior_prompts = ["a large red circle", "a small blue square"]

    def drift(folder):
        tuned = LatentGenPipeline.from_pretrained(base)
        tuned.load_lora_weights(str(folder))
        x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        from latentgen.pipeline import encode_prompts
        emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, prior_prompts * 2, "cpu")
        with torch.no_grad():
            return preservation_loss(tuned.unet, pipe.unet, x, emb, torch.Generator().manual_seed(0)).item()

    runs = {}
    for target in ("images", "base"):
        out = tmp_path / target
        with pytest.warns(UserWarning, match="new to the tokenizer"):
            res = run(_cfg(base, data, out, lora_rank=4, prior_target=target, prior_loss_weight=4.0,
                           tune_decoder="off", max_steps=12))
        assert res["finished"]
        assert json.loads((out / "run_config.json").read_text())["prior_target"] == target
        runs[target] = drift(out)
    assert 0 < runs["base"] < runs["images"], runs
    # the loss itself: zero for the base model against itself, seeded
    x = torch.randn(2, 4, 8, 8)
    emb = torch.randn(2, 3, pipe.unet.config.cross_attention_dim)
    assert preservation_loss(pipe.unet, pipe.unet, x, emb, torch.Generator().manual_seed(0)).item() == 0.0
