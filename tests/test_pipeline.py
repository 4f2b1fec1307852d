"""LatentGenPipeline on tiny random components: loading, samplers, parity with stock diffusers,
img2img, cancelling, bad input and the `latentgen generate` command."""

import json
import logging
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

from latentgen import LatentGenPipeline
from latentgen.cli import main as cli_main
from latentgen.diffusion import SAMPLERS, make_scheduler
from latentgen.pipeline import read_model_card_defaults, read_png_params, save_png_with_params
from tests.tiny_models import make_tiny_pipeline, make_tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    p = LatentGenPipeline.from_pretrained(model_dir)
    p.set_progress_bar_config(disable=True)
    return p


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _np(p, prompt="a red circle", steps=3, seed=0, **kw):
    """Images as a (B, H, W, 3) array, seeded."""
    return p(prompt, num_inference_steps=steps, generator=_gen(seed), output_type="np", **kw).images


def _stock(folder):
    sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    return sd


class _CountCalls:
    """Counts UNet forward passes and their batch sizes."""

    def __init__(self, unet):
        self.batches = []
        self.handle = unet.register_forward_hook(lambda m, args, out: self.batches.append(args[0].shape[0]))

    def __enter__(self):
        return self.batches

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------- loading and saving
def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "again")
    assert all(f.endswith(".safetensors") for _, _, fs in os.walk(tmp_path / "again") for f in fs
               if f.endswith((".bin", ".safetensors")))
    again = LatentGenPipeline.from_pretrained(tmp_path / "again")
    again.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert next(getattr(again, name).parameters()).dtype == torch.float32
    assert dict(again.scheduler.config) == dict(pipe.scheduler.config)
    x = pipe("a red circle", num_inference_steps=3, generator=_gen(), output_type="np").images
    y = again("a red circle", num_inference_steps=3, generator=_gen(), output_type="np").images
    np.testing.assert_array_equal(x, y)


def test_weights_stored_in_fp16_load_in_fp32(model_dir, tmp_path):
    half = LatentGenPipeline.from_pretrained(model_dir).to(torch.float16)
    half.save_pretrained(tmp_path / "half")
    with open(tmp_path / "half" / "text_encoder" / "config.json") as f:
        assert json.load(f).get("dtype") == "float16"
    again = LatentGenPipeline.from_pretrained(tmp_path / "half")
    assert again.unet.dtype == again.vae.dtype == again.text_encoder.dtype == torch.float32


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_gives_finite_images_of_the_right_size(pipe, sampler):
    out = pipe(["a red circle", "a blue square"], num_inference_steps=4, guidance_scale=3.0, generator=_gen(),
               sampler=sampler, output_type="np")
    assert out.images.shape == (2, 16, 16, 3) and np.isfinite(out.images).all()
    assert out.steps_done == 4 and not out.interrupted
    # another size, and the other output types
    pil = pipe("a red circle", num_inference_steps=2, height=24, width=32, sampler=sampler).images
    assert len(pil) == 1 and pil[0].size == (32, 24) and pil[0].mode == "RGB"
    pt = pipe("", num_inference_steps=2, sampler=sampler, output_type="pt", num_images_per_prompt=3).images
    assert pt.shape == (3, 3, 16, 16) and 0 <= pt.min() and pt.max() <= 1
    lat = pipe("a", num_inference_steps=2, sampler=sampler, output_type="latent").images
    assert lat.shape == (1, 4, 8, 8)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler", "a sampler is per call, not a permanent swap"


def test_same_seed_same_image_other_seed_other_image(pipe):
    a = _np(pipe, seed=7, sampler="euler_a")
    b = _np(pipe, seed=7, sampler="euler_a")
    c = _np(pipe, seed=8, sampler="euler_a")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # per-image generators: image i of a batch is the image made alone with its seed
    batch = pipe("a red circle", num_inference_steps=3, generator=[_gen(7), _gen(8)], num_images_per_prompt=2,
                 output_type="np", sampler="euler_a").images
    np.testing.assert_allclose(batch[1], c[0], atol=1e-5)


@pytest.mark.parametrize("sampler", [None, "euler", "dpm++2m"])
def test_parity_with_stable_diffusion_pipeline(model_dir, pipe, sampler):
    sd = _stock(model_dir)
    if sampler:
        sd.scheduler = make_scheduler(sampler, sd.scheduler.config)
    kw = dict(prompt=["a red circle", "a small blue square"], negative_prompt=["green", "big"],
              num_inference_steps=4, guidance_scale=4.5, num_images_per_prompt=2, output_type="np")
    ours = pipe(**kw, generator=_gen(3), sampler=sampler).images
    theirs = sd(**kw, generator=_gen(3)).images
    assert ours.shape == theirs.shape == (4, 16, 16, 3)
    assert np.abs(ours - theirs).max() < 1e-3
    # the unconditional prompt is the encoding of "" padded with no mask, exactly as stock builds it
    ours = _np(pipe, guidance_scale=7.0, seed=4, sampler=sampler)
    theirs = _np(sd, guidance_scale=7.0, seed=4)
    assert np.abs(ours - theirs).max() < 1e-3


def test_guidance_conditioned_student_runs_one_pass_and_matches_stock(tmp_path):
    folder = make_tiny_pipeline(tmp_path, time_cond_proj_dim=16)
    student = LatentGenPipeline.from_pretrained(folder)
    student.set_progress_bar_config(disable=True)
    with _CountCalls(student.unet) as calls:
        ours = _np(student, guidance_scale=6.0, seed=1)
    assert calls == [1, 1, 1], "a guidance-conditioned student needs no unconditional pass"
    theirs = _np(_stock(folder), guidance_scale=6.0, seed=1)
    assert np.abs(ours - theirs).max() < 1e-3
    other_w = _np(student, guidance_scale=2.0, seed=1)
    assert np.abs(ours - other_w).max() > 1e-4, "the guidance embedding must reach the UNet"
    with _CountCalls(student.unet) as calls:  # steps left out: a student without a card samples 4 steps
        student("a red circle", generator=_gen(1), output_type="np")
    assert calls == [1] * 4


def test_steps_and_guidance_left_out_are_the_model_cards(tmp_path):
    folder = make_tiny_pipeline(tmp_path)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("---\nnum_inference_steps: 2\nguidance_scale: 1.0\n---\n# A model\n")
    pipe = LatentGenPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    with _CountCalls(pipe.unet) as calls:
        left_out = pipe("a red circle", generator=_gen(2), output_type="np").images
    assert calls == [1, 1], "2 steps and guidance 1 (one conditional pass each), as the card says"
    given = _np(pipe, steps=2, seed=2, guidance_scale=1.0)
    assert np.array_equal(left_out, given)
    os.remove(os.path.join(folder, "README.md"))
    with _CountCalls(pipe.unet) as calls:  # the card is read at load: this pipeline keeps it
        pipe("a red circle", generator=_gen(2), output_type="np")
    assert calls == [1, 1]
    bare = LatentGenPipeline.from_pretrained(folder)
    bare.set_progress_bar_config(disable=True)
    with _CountCalls(bare.unet) as calls:  # no card: 25 steps with guidance (two branches in one batch)
        bare("a red circle", generator=_gen(2), output_type="np")
    assert calls == [2] * 25


def _sd_shaped_folder(tmp_path) -> str:
    """A tiny Stable-Diffusion-format folder: SD's block layout, factor-8 VAE, PNDM, eps-prediction,
    and the safety checker and feature extractor entries a real one has."""
    torch.manual_seed(0)
    tok = make_tiny_tokenizer()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                                norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                        sample_size=32, scaling_factor=0.18215)
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                 safety_checker=None, feature_extractor=CLIPImageProcessor(),
                                 requires_safety_checker=False)
    folder = str(tmp_path / "sd_format")
    sd.save_pretrained(folder)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"])  # ignored, never loaded
    json.dump(index, open(os.path.join(folder, "model_index.json"), "w"))
    return folder


def test_a_stable_diffusion_format_folder_loads(tmp_path):
    folder = _sd_shaped_folder(tmp_path)
    pipe = LatentGenPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert sorted(pipe.components) == ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    assert pipe.default_size() == (32, 32)
    ours = _np(pipe, guidance_scale=7.5)
    theirs = _np(_stock(folder), guidance_scale=7.5)
    assert np.abs(ours - theirs).max() < 1e-3
    euler = pipe("a red circle", num_inference_steps=3, sampler="euler", output_type="np").images
    assert euler.shape == (1, 32, 32, 3) and np.isfinite(euler).all()
    # the component folders alone (no model_index.json) load too
    os.remove(os.path.join(folder, "model_index.json"))
    bare = LatentGenPipeline.from_pretrained(folder)
    bare.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_np(bare, guidance_scale=7.5), ours, atol=1e-6)


# ---------------------------------------------------------------- img2img, callbacks, cancel
def _init_image() -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_img2img_strength_zero_returns_the_vae_round_trip(pipe):
    img = _init_image()
    with _CountCalls(pipe.unet) as calls:
        out = pipe("a red circle", image=img, strength=0.0, num_inference_steps=10, output_type="np")
    assert calls == [] and out.steps_done == 0
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        round_trip = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample
    expected = ((round_trip / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out.images, expected, atol=1e-5)


def test_img2img_strength_sets_the_number_of_steps(pipe):
    img = _init_image()
    with _CountCalls(pipe.unet) as calls:
        half = pipe("a red circle", image=img, strength=0.5, num_inference_steps=10, generator=_gen(),
                    guidance_scale=3.0, output_type="np")
    assert calls == [2] * 5 and half.steps_done == 5
    full = pipe("a red circle", image=[img], strength=1.0, num_inference_steps=4, output_type="np")
    assert full.steps_done == 4 and np.isfinite(full.images).all()
    for sampler in SAMPLERS:
        out = pipe("a", image=img, strength=0.6, num_inference_steps=5, sampler=sampler, output_type="np")
        assert out.steps_done == 3 and np.isfinite(out.images).all(), sampler


def test_img2img_converts_modes_and_resizes_with_a_warning(pipe, caplog):
    rgba = _init_image().convert("RGBA")
    grey = _init_image().convert("L")
    for img in (rgba, grey, _init_image().convert("P")):
        out = pipe("a", image=img, strength=0.0, num_inference_steps=2, output_type="np")
        assert out.images.shape == (1, 16, 16, 3)
    with caplog.at_level(logging.WARNING, logger="latentgen.images"):
        out = pipe("a", image=_init_image().resize((40, 30)), strength=0.0, output_type="np")
    assert out.images.shape == (1, 16, 16, 3)
    assert "resizing it to 16x16" in caplog.text


def test_callback_sees_latents_and_denoised_and_previews_work(pipe):
    seen = []

    def cb(p, step, t, kw):
        assert p is pipe
        seen.append((step, int(t), kw["latents"].shape, kw["denoised"].shape))
        return {}

    pipe("a red circle", num_inference_steps=3, callback_on_step_end=cb, generator=_gen())
    assert [s[0] for s in seen] == [0, 1, 2] and [s[1] for s in seen] == [1023, 682, 340]
    assert all(s[2] == s[3] == (1, 4, 8, 8) for s in seen)
    lat = pipe("a", num_inference_steps=2, output_type="latent", generator=_gen()).images
    decoded = pipe.latents_preview(lat)
    linear = pipe.latents_preview(lat, method="linear")
    assert decoded[0].size == (16, 16) and linear[0].size == (8, 8) and linear[0].mode == "RGB"
    with pytest.raises(ValueError, match="decode"):
        pipe.latents_preview(lat, method="fancy")


def test_cancel_from_the_callback_stops_the_loop(pipe):
    def cancel_after_two(p, step, t, kw):
        if step == 1:
            p._interrupt = True
        return {}

    with _CountCalls(pipe.unet) as calls:
        out = pipe("a red circle", num_inference_steps=8, callback_on_step_end=cancel_after_two,
                   output_type="np")
    assert len(calls) == 2
    assert out.interrupted and out.steps_done == 2
    assert out.images.shape == (1, 16, 16, 3) and np.isfinite(out.images).all()
    # the flag is reset by the next call
    again = pipe("a red circle", num_inference_steps=2, output_type="np")
    assert not again.interrupted and again.steps_done == 2


def test_empty_prompt_is_unconditional_and_needs_one_pass(pipe):
    with _CountCalls(pipe.unet) as calls:
        out = pipe("", num_inference_steps=3, guidance_scale=7.0, output_type="np")
    assert calls == [1, 1, 1] and np.isfinite(out.images).all()
    with _CountCalls(pipe.unet) as calls:
        _np(pipe, steps=2, guidance_scale=7.0, num_images_per_prompt=3)
    assert calls == [6, 6], "conditional and unconditional passes run in one batch"


def test_long_prompts_are_truncated_with_a_warning(pipe, caplog):
    long = " ".join(["red circle"] * 20)
    with caplog.at_level(logging.WARNING, logger="latentgen.prompts"):
        out = pipe(long, num_inference_steps=2, output_type="np")
    assert np.isfinite(out.images).all()
    assert "longer than the text encoder's 16 tokens" in caplog.text


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    ({"height": 15}, "height=15 must be a positive multiple of the VAE factor 2"),
    ({"width": 0}, "width=0 must be a positive multiple"),
    ({"num_inference_steps": 0}, "num_inference_steps=0 must be an integer from 1 to 1024"),
    ({"num_inference_steps": 2.5}, "must be an integer"),
    ({"guidance_scale": float("nan")}, "guidance_scale=nan must be a finite number"),
    ({"guidance_scale": float("inf")}, "must be a finite number"),
    ({"guidance_scale": "7"}, "must be a finite number"),
    ({"sampler": "plms"}, "unknown sampler 'plms'; choose one of ddim, ddpm, euler, euler_a, dpm\\+\\+2m"),
    ({"output_type": "jpg"}, "output_type='jpg' is unknown"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt=0"),
    ({"prompt": None}, "prompt must be a string"),
    ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, "3 negative prompts for 2 prompts"),
    ({"image": "not an image"}, "init image of type str is not supported"),
    ({"image": torch.zeros(1, 3, 8, 8)}, "must be \\(N, 3, 16, 16\\)"),
    ({"image": torch.full((1, 3, 16, 16), 255.0)}, "must hold values in \\[-1, 1\\]"),
    ({"image": PIL.Image.new("RGB", (16, 16)), "strength": 1.5}, "strength=1.5 must be a number from 0"),
    ({"generator": [torch.Generator()] * 3}, "3 generators for 1 images"),
    ({"prompt": "red " * 29_000}, "the prompt is 116,000 characters long; at most 1,000"),
    ({"prompt": ["a", "b" * 1001]}, "the prompt is 1,001 characters long"),
    ({"negative_prompt": "x" * 5000}, "the negative prompt is 5,000 characters long"),
])
def test_bad_input_is_a_clear_error(pipe, kwargs, message):
    kwargs = {"prompt": "a red circle", "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_a_folder_missing_a_component_is_a_clear_error(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder at .*never downloads"):
        LatentGenPipeline.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match="has no unet/ folder: a model folder holds model_index.json"):
        LatentGenPipeline.from_pretrained(broken)
    shutil.copytree(os.path.join(model_dir, "unet"), broken / "unet")
    os.remove(broken / "tokenizer" / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="has no tokenizer/tokenizer.json"):
        LatentGenPipeline.from_pretrained(broken)
    shutil.copytree(os.path.join(model_dir, "tokenizer"), broken / "tokenizer", dirs_exist_ok=True)
    for f in os.listdir(broken / "vae"):
        if f.endswith(".safetensors"):
            os.rename(broken / "vae" / f, broken / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickle weights in vae/"):
        LatentGenPipeline.from_pretrained(broken)


# ---------------------------------------------------------------- PNG settings, model card, CLI
def test_png_parameters_round_trip(tmp_path):
    params = {"prompt": "a red circle ✓", "seed": 3, "guidance": 4.5}
    path = save_png_with_params(PIL.Image.new("RGB", (4, 4)), tmp_path / "sub" / "x.png", params)
    assert read_png_params(path) == {**params, "negative_prompt": ""}  # none given reads back as ""
    PIL.Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert read_png_params(tmp_path / "plain.png") == {}
    with pytest.raises(ValueError, match="does not end in .png"):
        save_png_with_params(PIL.Image.new("RGB", (4, 4)), tmp_path / "x.jpg", params)


def test_model_card_defaults(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlicense: apache-2.0\nsampler: dpm++2m\nnum_inference_steps: 12  # tuned\n"
        "guidance_scale: \"4.5\"\n---\n# A model\nsampler: ddim\n")
    assert read_model_card_defaults(tmp_path) == {"sampler": "dpm++2m", "num_inference_steps": 12,
                                                  "guidance_scale": 4.5}
    assert read_model_card_defaults(tmp_path / "nothing") == {}
    (tmp_path / "README.md").write_text("---\nnum_inference_steps: many\n---\n")
    with pytest.raises(ValueError, match="num_inference_steps: 'many' is not a int"):
        read_model_card_defaults(tmp_path)
    (tmp_path / "README.md").write_text("---\nsampler: plms\n---\n")
    with pytest.raises(ValueError, match="choose one of ddim"):
        read_model_card_defaults(tmp_path)


def test_cli_generate_writes_pngs_that_say_how_they_were_made(model_dir, pipe, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert cli_main(["generate", "--model", model_dir, "--prompt", "a red circle", "--negative-prompt",
                     "blue", "--steps", "3", "--guidance", "4", "--seed", "5", "--sampler", "euler",
                     "--out", str(out), "--device", "cpu"]) == 0
    params = read_png_params(out)
    assert params == {"prompt": "a red circle", "negative_prompt": "blue", "steps": 3, "sampler": "euler",
                      "guidance": 4.0, "seed": 5, "width": 16, "height": 16, "model": "tiny_model"}
    assert PIL.Image.open(out).text["parameters"] == (
        "a red circle\nNegative prompt: blue\n"
        "Steps: 3, Sampler: Euler, CFG scale: 4, Seed: 5, Size: 16x16, Model: tiny_model")
    # the recorded settings make the same image again
    again = pipe(params["prompt"], negative_prompt=params["negative_prompt"],
                 num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                 generator=_gen(params["seed"]), sampler=params["sampler"]).images[0]
    assert np.abs(np.asarray(again, dtype=int) - np.asarray(PIL.Image.open(out), dtype=int)).max() <= 1

    # several images: a prefix, one seed each; the model card gives the defaults; img2img records its settings
    with open(os.path.join(model_dir, "README.md"), "w") as f:
        f.write("---\nsampler: dpm++2m\nnum_inference_steps: 2\nguidance_scale: 3.5\n---\n")
    try:
        assert cli_main(["generate", "--model", model_dir, "--prompt", "", "--n", "2", "--seed", "9",
                         "--init-image", str(out), "--strength", "0.5",
                         "--out", str(tmp_path / "b.png")]) == 0
    finally:
        os.remove(os.path.join(model_dir, "README.md"))
    p0, p1 = read_png_params(tmp_path / "b-0.png"), read_png_params(tmp_path / "b-1.png")
    assert (p0["seed"], p1["seed"]) == (9, 10)
    assert p0["sampler"] == "dpm++2m" and p0["steps"] == 2 and p0["guidance"] == 3.5
    assert p0["strength"] == 0.5 and p0["init_image"] == out.name  # a file name, never a path
    # a folder
    assert cli_main(["generate", "--model", model_dir, "--prompt", "a", "--seed", "1", "--steps", "1",
                     "--out", str(tmp_path / "folder")]) == 0
    assert os.listdir(tmp_path / "folder") == ["latentgen-1.png"]
    assert str(tmp_path / "folder" / "latentgen-1.png") in capsys.readouterr().out


def test_cli_generate_bad_input_is_a_clear_error(model_dir, tmp_path, capsys, monkeypatch):
    import latentgen.loading as P

    rc = cli_main(["generate", "--model", model_dir, "--prompt", "a", "--height", "15",
                   "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "multiple of the VAE factor" in capsys.readouterr().err
    rc = cli_main(["generate", "--model", model_dir, "--prompt", "a",
                   "--init-image", str(tmp_path / "no.png"),
                   "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "--init-image" in capsys.readouterr().err
    monkeypatch.setattr(P, "DEFAULT_MODEL_DIR", str(tmp_path / "no_default"))
    rc = cli_main(["generate", "--prompt", "a", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "no bundled default model" in err and "--model DIR" in err and "latentgen train unet" in err
    monkeypatch.setattr(P, "DEFAULT_MODEL_DIR", model_dir)
    assert cli_main(["generate", "--prompt", "a", "--steps", "1", "--out", str(tmp_path / "d.png")]) == 0
    assert not os.path.exists(tmp_path / "x.png")
