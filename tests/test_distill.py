"""Guided + progressive distillation: the equations, the student, the trainer, and stock-diffusers parity."""

import dataclasses
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from latentgen import LatentGenPipeline
from latentgen.diffusion import (
    classifier_free_guidance,
    make_scheduler,
    pred_x0_from_v,
    training_alphas_cumprod,
    v_target,
)
from latentgen.distill import (
    copy_unet,
    ddim_step,
    grid_alpha_sigma,
    grid_timesteps,
    guidance_embedding,
    guided_distillation_loss,
    make_student,
    progressive_distillation_loss,
    progressive_target,
    snr_from_alpha_sigma,
    truncated_snr_v_weight,
    truncated_snr_weight,
)
from latentgen.pipeline import read_model_card_defaults
from tests.tiny_models import make_tiny_components, make_tiny_pipeline, write_lora_fine_tune

T = 1024


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- equations
def test_progressive_target_hand_computed():
    z_t, z_t2 = torch.tensor(1.0), torch.tensor(0.5)
    a_t, s_t, a_2, s_2 = (torch.tensor(v) for v in (0.6, 0.8, 0.8, 0.6))
    # x~ = (0.5 - 0.75 * 1) / (0.8 - 0.75 * 0.6) = -0.25 / 0.35
    x = progressive_target(z_t, z_t2, a_t, s_t, a_2, s_2)
    assert x.item() == pytest.approx(-0.25 / 0.35, abs=1e-7)
    # by construction one DDIM step from z_t with that x0 lands on z_t''
    assert ddim_step(z_t, x, a_t, s_t, a_2, s_2).item() == pytest.approx(0.5, abs=1e-6)
    # the last step (t'' = -1: alpha 1, sigma 0): the target is z_t'' itself
    z2 = torch.randn(2, 4, 8, 8, generator=_gen(0))
    last = progressive_target(torch.randn_like(z2), z2, a_t, s_t, torch.tensor(1.0), torch.tensor(0.0))
    assert torch.equal(last, z2)


def test_grid_and_ddim_step_match_diffusers():
    ac = training_alphas_cumprod()
    for n in (1, 2, 4, 8, 16, 64):
        s = make_scheduler("ddim")
        s.set_timesteps(n)
        assert torch.equal(s.timesteps, grid_timesteps(n)), n
    assert grid_timesteps(1).tolist() == [1023]  # the 1-step student starts from pure noise
    a, sg = grid_alpha_sigma(ac, torch.tensor([1023, -1]))
    assert a.flatten().tolist() == [0.0, 1.0] and sg.flatten().tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="power of two"):
        grid_timesteps(3)
    s = make_scheduler("ddim")
    s.set_timesteps(4)
    z, v = torch.randn(2, 1, 4, 8, 8, generator=_gen(1))
    for t in s.timesteps.tolist():
        a_t, s_t = grid_alpha_sigma(ac, torch.tensor([t]))
        a_s, s_s = grid_alpha_sigma(ac, torch.tensor([t - T // 4]))
        ours = ddim_step(z, pred_x0_from_v(z, v, a_t, s_t), a_t, s_t, a_s, s_s)
        theirs = s.step(v, t, z, eta=0.0).prev_sample
        assert (ours - theirs).abs().max() < 1e-5, t
    # at t = T - 1 (alpha = 0) x0 = -v is defined
    a_t, s_t = grid_alpha_sigma(ac, torch.tensor([1023]))
    assert torch.equal(pred_x0_from_v(z, v, a_t, s_t), -v)


def test_truncated_snr_weight_on_x_equals_the_v_loss_weight():
    assert truncated_snr_weight(torch.tensor([0.0, 0.5, 1.0, 4.0])).tolist() == [1.0, 1.0, 1.0, 4.0]
    ac = training_alphas_cumprod()
    g = _gen(2)
    t = torch.tensor([0, 100, 600, 900, 1022, 1023])
    x0, eps, v_hat = torch.randn(3, 6, 4, 8, 8, generator=g)
    a, s = grid_alpha_sigma(ac, t)
    z = a * x0 + s * eps
    snr = snr_from_alpha_sigma(a, s)
    x_loss = truncated_snr_weight(snr) * (x0 - pred_x0_from_v(z, v_hat, a, s)).pow(2).mean((1, 2, 3))
    v_loss = truncated_snr_v_weight(snr) * (v_target(x0, eps, a, s) - v_hat).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(x_loss, v_loss, rtol=1e-4, atol=1e-6)
    w = truncated_snr_v_weight(snr)
    assert w.min() >= 0.5 - 1e-6 and w.max() <= 1.0 + 1e-6  # max(alpha^2, sigma^2)


def test_guidance_embedding_is_diffusers(tmp_path):
    parts = make_tiny_components()
    stock = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    ours_pipe = LatentGenPipeline(**make_tiny_components())
    for g in (1.0, 1.3, 4.5, 7.77):
        for dim in (16, 255, 256):
            want = stock.get_guidance_scale_embedding(torch.tensor(g - 1).repeat(3), embedding_dim=dim)
            assert torch.equal(guidance_embedding(g, dim, batch=3), want), (g, dim)
            w = torch.tensor(g - 1).repeat(3)
            assert torch.equal(ours_pipe.get_guidance_scale_embedding(w, dim), want)
    gs = torch.tensor([1.0, 2.5, 8.0])
    want = stock.get_guidance_scale_embedding(gs - 1, embedding_dim=32)  # a (B,) tensor of scales
    assert torch.equal(guidance_embedding(gs, 32), want)
    v = classifier_free_guidance(torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(v, torch.tensor([2.0, 3.0]).reshape(2, 1, 1, 1))


# ----------------------------------------------------------------------------- the student
def _tiny_unet():
    return make_tiny_components()["unet"]


def _conditioned(unet, seed=3):
    """A guidance-conditioned UNet whose guidance input matters (cond_proj not zero)."""
    s = make_student(unet, 16)
    torch.nn.init.normal_(s.time_embedding.cond_proj.weight, std=0.3, generator=_gen(seed))
    return s.eval()


def test_make_student_starts_as_the_conditional_teacher():
    teacher = _tiny_unet()
    student = make_student(teacher, 16).eval()
    assert student.config.time_cond_proj_dim == 16 and not student.time_embedding.cond_proj.weight.any()
    z, emb = torch.randn(2, 4, 8, 8, generator=_gen(0)), torch.randn(2, 16, 32, generator=_gen(1))
    t = torch.tensor([1023, 300])
    with torch.no_grad():
        want = teacher(z, t, encoder_hidden_states=emb).sample
        for g in (1.0, 7.0):
            w_emb = guidance_embedding(g, 16, batch=2)
            got = student(z, t, encoder_hidden_states=emb, timestep_cond=w_emb).sample
            torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="already takes a guidance embedding"):
        make_student(student)


class _Oracle(torch.nn.Module):
    """A 'student' that is exactly what it should learn, computed with stock diffusers schedulers:
    one step of it = two DDIM steps of ``teacher`` (progressive), or the guided teacher (guided)."""

    def __init__(self, teacher, teacher_steps, uncond=None, g=None, config=None):
        super().__init__()
        self.teacher, self.config, self.uncond, self.g = teacher, config or teacher.config, uncond, g
        self.dtype = teacher.dtype
        self.teacher_sched = make_scheduler("ddim")
        self.teacher_sched.set_timesteps(teacher_steps)
        self.student_sched = make_scheduler("ddim")
        self.student_sched.set_timesteps(max(teacher_steps // 2, 1))

    def forward(self, z, t, encoder_hidden_states, timestep_cond, return_dict=False):
        if self.uncond is not None:  # guided: uncond + g (cond - uncond), from a plain teacher
            v_c = self.teacher(z, t, encoder_hidden_states=encoder_hidden_states).sample
            uncond = self.uncond.expand_as(encoder_hidden_states)
            v_u = self.teacher(z, t, encoder_hidden_states=uncond).sample
            return (v_u + self.g.reshape(-1, 1, 1, 1) * (v_c - v_u),)
        out = []
        for i in range(len(z)):
            zi, ti = z[i:i + 1], int(t[i])
            kw = dict(encoder_hidden_states=encoder_hidden_states[i:i + 1],
                      timestep_cond=timestep_cond[i:i + 1])
            z1 = self.teacher_sched.step(self.teacher(zi, ti, **kw).sample, ti, zi).prev_sample
            t1 = ti - T // self.teacher_sched.num_inference_steps
            z2 = self.teacher_sched.step(self.teacher(z1, t1, **kw).sample, t1, z1).prev_sample
            # the student's DDIM step is affine in v: solve step(v) = z2 for v
            f0 = self.student_sched.step(torch.zeros_like(zi), ti, zi).prev_sample
            f1 = self.student_sched.step(torch.ones_like(zi), ti, zi).prev_sample
            out.append((z2 - f0) / (f1 - f0))
        return (torch.cat(out),)


def test_a_student_that_reproduces_its_teacher_has_zero_loss():
    ac = training_alphas_cumprod()
    plain = _tiny_unet().eval()
    teacher = _conditioned(plain)
    z0 = torch.randn(6, 4, 8, 8, generator=_gen(4))
    cond = torch.randn(6, 16, 32, generator=_gen(5))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    with torch.no_grad():
        for steps in (1, 2):  # the 1-step case ends on the clean image (t'' = -1)
            oracle = _Oracle(teacher, 2 * steps)
            zero = progressive_distillation_loss(oracle, teacher, z0, cond, g, steps, ac, _gen(6))
            base = progressive_distillation_loss(copy_unet(teacher), teacher, z0, cond, g, steps, ac, _gen(6))
            assert base > 1e-3 and zero < 1e-6 * base, (steps, zero, base)
        uncond = torch.randn(1, 16, 32, generator=_gen(7))
        student = make_student(plain, 16)
        oracle = _Oracle(plain, 4, uncond=uncond, g=g, config=student.config)
        zero = guided_distillation_loss(oracle, plain, z0, cond, uncond.expand(6, -1, -1), g, 4, ac, _gen(8))
        base = guided_distillation_loss(student, plain, z0, cond, uncond.expand(6, -1, -1), g, 4, ac,
                                        _gen(8))
        assert base > 1e-3 and zero < 1e-6 * base, (zero, base)


# ----------------------------------------------------------------------------- the trainer
def _cfg(model, data, out, **kw):
    from latentgen.train.distill import DistillConfig

    base = {"model": model, "data": (data,), "out": out, "teacher_steps": 4, "min_steps": 1, "stage1_steps": 10,
            "steps_per_round": 40, "batch_size": 8, "lr": 2e-3, "log_every": 5, "time_cond_proj_dim": 16,
            "progress": False, "val_prompts": 2}
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from latentgen.data.shapes import write_shapes_folder
    from latentgen.train import distill

    root = tmp_path_factory.mktemp("distill")
    model = make_tiny_pipeline(root)
    data = str(root / "data")
    write_shapes_folder(data, n=16, size=16, seed=0)
    out = str(root / "out")
    res = distill.run(_cfg(model, data, out))
    return {"model": model, "data": data, "out": out, "res": res}


def test_trainer_writes_every_round(run):
    res, out = run["res"], run["out"]
    assert res["finished"] and [r["student_steps"] for r in res["rounds"]] == [4, 2, 1]
    for name, steps in (("stage1", 4), ("round-2", 2), ("round-1", 1), ("final", 1)):
        folder = os.path.join(out, name)
        card = read_model_card_defaults(folder)
        assert card == {"sampler": "ddim", "num_inference_steps": steps, "guidance_scale": 5.0}, name
        with open(os.path.join(folder, "README.md")) as f:
            text = f.read()
        assert "negative_prompt` is ignored" in text and "guidance_range: [1.0, 8.0]" in text
        assert "latentgen train distill --out" in text  # the command that made it
        sched = json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))
        assert sched["_class_name"] == "DDIMScheduler" and sched["timestep_spacing"] == "trailing"
        assert sched["prediction_type"] == "v_prediction"
        assert sched["set_alpha_to_one"] and not sched["clip_sample"]
        assert json.load(open(os.path.join(folder, "unet", "config.json")))["time_cond_proj_dim"] == 16
    with open(os.path.join(out, "round-2", "run_config.json")) as f:  # the config, with the round's keys
        saved = json.load(f)
    assert saved["config_version"] == 1 and saved["trainer"] == "distill" and saved["data"] == [run["data"]]
    assert (saved["stage"], saved["stage_teacher_steps"], saved["student_steps"], saved["stage_max_steps"]) == \
        ("round-2", 4, 2, 40)
    assert saved["guidance_max"] == 8.0 and saved["size"] == 16 and saved["examples"] == 16


def _cache_batch(out):
    from safetensors.torch import load_file

    cache = load_file(glob.glob(os.path.join(out, "cache", "*.safetensors"))[0])
    z0 = cache["mean"] * 0.7  # the tiny VAE's scaling factor
    return z0, cache["embeddings"][cache["caption_id"]]


def test_one_round_halves_the_steps_and_lowers_the_loss(run):
    out = run["out"]
    ac = training_alphas_cumprod()
    teacher, student = (UNet2DConditionModel.from_pretrained(os.path.join(out, name, "unet")).eval()
                        for name in ("stage1", "round-2"))
    z0, cond = _cache_batch(out)
    g = torch.linspace(1.0, 8.0, len(z0))

    def loss(unet):
        with torch.no_grad():
            return sum(progressive_distillation_loss(unet, teacher, z0, cond, g, 2, ac, _gen(s))
                       for s in range(4)) / 4

    before, after = loss(copy_unet(teacher)), loss(student)
    assert after < 0.8 * before, (before, after)


def test_student_runs_in_stock_diffusers_with_the_same_image(run):
    for name, steps in (("round-2", 2), ("final", 1)):
        folder = os.path.join(run["out"], name)
        ours = LatentGenPipeline.from_pretrained(folder)
        sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                     requires_safety_checker=False)
        for p in (ours, sd):
            p.set_progress_bar_config(disable=True)
        kw = dict(prompt=["a red circle", "a small blue square"], num_inference_steps=steps,
                  guidance_scale=4.5, output_type="np")
        a = ours(**kw, generator=_gen(3)).images
        b = sd(**kw, generator=_gen(3)).images
        assert a.shape == (2, 16, 16, 3) and np.abs(a - b).max() < 1e-3, name
        c = sd(**kw, negative_prompt=["green", "big"], generator=_gen(3)).images
        assert np.abs(b - c).max() == 0, "a student ignores negative_prompt in stock pipelines"


def test_finished_rounds_are_reused_and_settings_are_checked(run):
    from latentgen.train import distill
    from latentgen.train.config import TrainerError

    marker = os.path.join(run["out"], "round-1", "distill_round.json")
    before = os.stat(marker).st_mtime_ns
    res = distill.run(_cfg(run["model"], run["data"], run["out"], log_every=2, resume="latest"))  # bookkeeping
    assert all(r["reused"] for r in res["rounds"]) and os.stat(marker).st_mtime_ns == before
    for extra in ({"guidance_max": 6.0}, {"lr_schedule": "linear"}):  # a schedule is a setting too
        with pytest.raises(TrainerError, match="other settings"):
            distill.run(_cfg(run["model"], run["data"], run["out"], **extra))


def test_resume_within_a_round_gives_the_same_student(run, tmp_path):
    from safetensors.torch import load_file

    from latentgen.train import distill
    from latentgen.train.config import TrainerError

    out = str(tmp_path / "out")
    cfg = _cfg(run["model"], run["data"], out, teacher_steps=2, steps_per_round=6, checkpoint_every=2,
               keep_checkpoints=5)
    distill.run(cfg)
    weights_file = os.path.join(out, "round-1", "unet", "diffusion_pytorch_model.safetensors")
    unbroken = load_file(weights_file)
    # as if killed after step 4 of round 1: no exported model, no later checkpoint
    rnd = os.path.join(out, "round-1")
    for name in ("distill_round.json", "unet", "checkpoints/checkpoint-6"):
        path = os.path.join(rnd, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with pytest.raises(TrainerError, match="--resume latest"):
        distill.run(cfg)
    res = distill.run(dataclasses.replace(cfg, resume="latest"))
    assert [r["reused"] for r in res["rounds"]] == [True, False]
    resumed = load_file(weights_file)
    assert unbroken.keys() == resumed.keys()
    for k in unbroken:
        torch.testing.assert_close(resumed[k], unbroken[k], rtol=0, atol=1e-6, msg=k)


def test_bad_settings_are_clear_errors(run, tmp_path):
    from latentgen.train import distill
    from latentgen.train.config import TrainerError

    for extra, msg in (({"teacher_steps": 6}, "power of two"), ({"min_steps": 8}, "no larger than"),
                       ({"guidance_min": 5.0, "guidance_max": 2.0}, "guidance-min")):
        with pytest.raises(ValueError, match=msg):
            _cfg(run["model"], run["data"], str(tmp_path / "x"), **extra)
    with pytest.raises(TrainerError, match="no model folder"):
        distill.run(_cfg(str(tmp_path / "missing"), run["data"], str(tmp_path / "x")))
    with pytest.raises(TrainerError, match="up to 1024"):  # a power of two, but past the teacher's timesteps
        distill.run(_cfg(run["model"], run["data"], str(tmp_path / "x"), teacher_steps=2048))


def test_flags_name_the_problem_on_stderr(run, tmp_path, capsys):
    from latentgen.train import distill

    argv = ["--model", run["model"], "--data", run["data"], "--out", str(tmp_path / "x"), "--no-progress"]
    with pytest.raises(SystemExit):
        distill.main([*argv, "--teacher-steps", "6"])
    assert "--teacher-steps 6 must be a power of two" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distill.main([*argv, "--model", str(tmp_path / "missing")])
    assert "error: --model: no model folder" in capsys.readouterr().err


def test_bench_distill_teacher_vae_shares_the_decoder_and_refuses_another_latent_space(tmp_path):
    from bench.distill import share_vae
    from tests.tiny_models import make_tiny_pipeline

    teacher = LatentGenPipeline.from_pretrained(make_tiny_pipeline(tmp_path, seed=0, name="t"))
    student = LatentGenPipeline.from_pretrained(make_tiny_pipeline(tmp_path, seed=1, name="s"))
    assert not torch.equal(teacher.vae.decoder.conv_out.weight, student.vae.decoder.conv_out.weight)
    share_vae(teacher, student, "s")
    assert student.vae is teacher.vae
    other = LatentGenPipeline.from_pretrained(make_tiny_pipeline(tmp_path, seed=1, name="o"))
    other.vae.register_to_config(scaling_factor=other.vae.config.scaling_factor * 2)
    with pytest.raises(SystemExit, match="scaled by"):
        share_vae(teacher, other, "o")


def test_freeze_text_kv_keeps_how_every_student_reads_the_prompt(run, tmp_path):
    from safetensors.torch import load_file

    from latentgen.train import distill

    out = str(tmp_path / "out")
    res = distill.run(_cfg(run["model"], run["data"], out, teacher_steps=2, stage1_steps=3, steps_per_round=3,
                           freeze_text_kv=True))
    assert res["finished"] and all(r["run"]["freeze_text_kv"] for r in res["rounds"])
    teacher = load_file(os.path.join(run["model"], "unet", "diffusion_pytorch_model.safetensors"))
    for name in ("stage1", "round-1"):
        student = load_file(os.path.join(out, name, "unet", "diffusion_pytorch_model.safetensors"))
        kv = [k for k in teacher if ".attn2.to_k." in k or ".attn2.to_v." in k]
        assert kv and all(torch.equal(student[k], teacher[k]) for k in kv), name
        assert any(not torch.equal(student[k], teacher[k]) for k in teacher if ".attn2.to_q." in k), name


def test_last_round_steps_lengthens_only_the_last_halving(run, tmp_path):
    from latentgen.train import distill

    out = str(tmp_path / "out")
    short = {"teacher_steps": 4, "stage1_steps": 2, "steps_per_round": 2}
    res = distill.run(_cfg(run["model"], run["data"], out, **short, min_steps=2))
    assert [r["steps_trained"] for r in res["rounds"]] == [2, 2]
    # one more halving, longer: the earlier rounds keep their records and are reused
    res = distill.run(_cfg(run["model"], run["data"], out, **short, last_round_steps=5))
    assert [(r["run"]["stage"], r["steps_trained"], r["reused"]) for r in res["rounds"]] == \
        [("stage1", 2, True), ("round-2", 2, True), ("round-1", 5, False)]
    with pytest.raises(ValueError, match="last-round-steps"):
        _cfg(run["model"], run["data"], str(tmp_path / "x"), last_round_steps=0)


def test_lora_students_are_plain_unets_that_moved_off_the_teacher(run, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from latentgen.train import distill

    out = str(tmp_path / "out")
    res = distill.run(_cfg(run["model"], run["data"], out, teacher_steps=2, stage1_steps=3, steps_per_round=3,
                           lora_rank=4))
    assert res["finished"] and all(r["run"]["lora_rank"] == 4 for r in res["rounds"])
    teacher = load_file(os.path.join(run["model"], "unet", "diffusion_pytorch_model.safetensors"))
    for name in ("stage1", "round-1"):
        weights = os.path.join(out, name, "unet", "diffusion_pytorch_model.safetensors")
        student = load_file(weights)
        assert not any("lora" in k for k in student), name  # merged: a stock UNet loads it
        assert set(teacher) <= set(student), name
        assert any(not torch.equal(student[k], teacher[k]) for k in teacher if ".attn2.to_q." in k), name
        UNet2DConditionModel.from_pretrained(os.path.join(out, name, "unet"), use_safetensors=True)
    with pytest.raises(ValueError, match="give one"):
        _cfg(run["model"], run["data"], str(tmp_path / "x"), lora_rank=4, freeze_text_kv=True)


def test_interpolated_students_span_teacher_to_student(run, tmp_path):
    from bench import interpolate_student

    student = os.path.join(run["out"], "round-1")
    folders = interpolate_student.main(["--teacher", run["model"], "--student", student, "--out", str(tmp_path),
                                        "--alpha", "0", "0.5", "1"])
    t = UNet2DConditionModel.from_pretrained(os.path.join(run["model"], "unet")).state_dict()
    s = UNet2DConditionModel.from_pretrained(os.path.join(student, "unet")).state_dict()
    w = [UNet2DConditionModel.from_pretrained(os.path.join(f, "unet")).state_dict() for f in folders]
    key = "conv_in.weight"
    assert not torch.equal(t[key], s[key])
    torch.testing.assert_close(w[0][key], t[key])
    torch.testing.assert_close(w[2][key], s[key])
    torch.testing.assert_close(w[1][key], (t[key] + s[key]) / 2)
    cond = "time_embedding.cond_proj.weight"  # only the student has it: scaled by alpha
    assert not w[0][cond].any()
    torch.testing.assert_close(w[1][cond], s[cond] / 2)
    LatentGenPipeline.from_pretrained(folders[1])  # a complete model folder


def test_two_pass_students_are_plain_guided_unets_that_learn_two_teacher_steps(run, tmp_path):
    from latentgen.train import distill
    from latentgen.train.config import TrainerError

    out = str(tmp_path / "out")
    res = distill.run(_cfg(run["model"], run["data"], out, two_pass=True, teacher_steps=4, min_steps=2,
                           steps_per_round=40, lr=5e-4))
    assert res["finished"] and [r["run"]["stage"] for r in res["rounds"]] == ["round-2"]  # no stage 1
    assert not os.path.isdir(os.path.join(out, "stage1")) and res["rounds"][0]["run"]["two_pass"]
    folder = os.path.join(out, "final")
    assert json.load(open(os.path.join(folder, "unet", "config.json")))["time_cond_proj_dim"] is None
    assert "`negative_prompt` works" in open(os.path.join(folder, "README.md")).read()
    from bench.distill import find_students

    assert find_students(out) == {2: os.path.join(out, "round-2")}  # bench.distill benchmarks it too

    # the trained student's one guided DDIM step is closer to the teacher's two than the teacher's one
    ac = training_alphas_cumprod()
    teacher = UNet2DConditionModel.from_pretrained(os.path.join(run["model"], "unet")).eval()
    student = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()
    from safetensors.torch import load_file

    z0, cond = _cache_batch(out)
    cache = load_file(glob.glob(os.path.join(out, "cache", "*.safetensors"))[0])
    uncond = cache["embeddings"][int(cache["uncond_id"])].expand_as(cond)  # (B, L, D): the empty prompt
    g = torch.linspace(1.0, 8.0, len(z0))

    def loss(unet):
        with torch.no_grad():
            return sum(progressive_distillation_loss(unet, teacher, z0, cond, g, 2, ac, _gen(s), uncond)
                       for s in range(4)) / 4

    assert loss(student) < 0.8 * loss(copy_unet(teacher))

    # a plain UNet: stock diffusers samples it with classifier-free guidance, negative prompts included
    sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    kw = dict(prompt=["a red circle"], num_inference_steps=2, guidance_scale=4.5, output_type="np")
    b = sd(**kw, generator=_gen(3)).images
    c = sd(**kw, negative_prompt=["green"], generator=_gen(3)).images
    assert b.shape == (1, 16, 16, 3) and np.abs(b - c).max() > 0

    with pytest.raises(TrainerError, match="two-pass"):
        distill.run(_cfg(os.path.join(run["out"], "stage1"), run["data"], str(tmp_path / "x"), two_pass=True))


def test_a_lora_fine_tune_distils_from_its_base_with_the_lora_merged(run, tmp_path):
    """A LoRA-only folder (as ``latentgen train finetune`` writes it, ``finetune.json`` naming the base) is a
    teacher: the distiller merges the adapters into the base's weights and takes the base's parts."""
    import json

    from latentgen import LatentGenPipeline
    from latentgen.lora import LORA_INFO
    from latentgen.train import distill
    from latentgen.train.base import load_merged
    from latentgen.train.config import TrainerError

    lora = tmp_path / "lora"
    write_lora_fine_tune(run["model"], lora)
    merged, parts = load_merged(str(lora))
    assert parts == run["model"]
    plain = LatentGenPipeline.from_pretrained(run["model"])
    adapted = LatentGenPipeline.from_pretrained(run["model"])
    adapted.load_lora_weights(str(lora))
    x, t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    emb = torch.randn(1, 16, plain.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want, before = (p.unet(x, t, encoder_hidden_states=emb).sample for p in (merged, adapted, plain))
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, before, atol=1e-3)
    assert not any("lora" in n for n, _ in merged.unet.named_parameters())  # merged, no adapters left

    res = distill.run(_cfg(str(lora), run["data"], str(tmp_path / "out"), teacher_steps=2, stage1_steps=2,
                           steps_per_round=2))
    folders = list((tmp_path / "out").glob("**/model_index.json"))
    assert res["finished"] and folders, res
    student = LatentGenPipeline.from_pretrained(str(folders[0].parent))  # the base's VAE, unchanged
    assert all(torch.equal(a, b) for a, b in zip(student.vae.state_dict().values(), plain.vae.state_dict().values()))

    (lora / LORA_INFO).write_text(json.dumps({"base": str(tmp_path / "gone")}))
    with pytest.raises(TrainerError, match="merge them into their base first"):
        load_merged(str(lora))


def test_without_data_the_distiller_draws_the_bundled_models_kinds_of_image(run, tmp_path, monkeypatch):
    from latentgen.data import emoji
    from latentgen.data.folder import scan_folder
    from latentgen.train import distill

    with pytest.raises(ValueError, match="--draw-data N"):
        dataclasses.replace(_cfg(run["model"], run["data"], str(tmp_path / "x")), data=())
    write = emoji.write_emoji_folder
    monkeypatch.setattr(emoji, "write_emoji_folder", lambda out, size, **kw: write(out, size=size, limit=6, **kw))
    out = tmp_path / "drawn"
    cfg = dataclasses.replace(_cfg(run["model"], run["data"], str(out), teacher_steps=2, stage1_steps=2,
                                   steps_per_round=2), data=(), draw_data=12)
    res = distill.run(cfg)
    assert res["finished"]
    assert len(scan_folder(str(out / "data" / "shapes")).items) == 12
    assert len(scan_folder(str(out / "data" / "emoji")).items) == 6
