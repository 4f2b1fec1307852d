"""distill --from-student: a fine-tune's student made by adding the fine-tune's change to its base's student."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from latentgen import LatentGenPipeline
from latentgen.distill import make_student
from latentgen.lora import LORA_INFO
from latentgen.modelcard import write_card
from latentgen.train.config import TrainerError
from latentgen.train.distill import DistillConfig, main, run
from latentgen.train.distill_transfer import FALLBACK, SCALES, choose_scale
from tests.tiny_models import make_tiny_pipeline, write_lora_fine_tune


def _nudge(module, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base, its 4-step student (a guidance-input copy, moved a little), and a full fine-tune of the base
    (UNet and VAE moved) whose finetune.json names the base."""
    root = tmp_path_factory.mktemp("transfer")
    base = make_tiny_pipeline(root, name="base")
    pipe = LatentGenPipeline.from_pretrained(base)
    student = make_student(pipe.unet, 16)
    _nudge(student, 1e-3, 1)
    LatentGenPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=student,
                      scheduler=pipe.scheduler).save_pretrained(root / "student")
    write_card(root / "student", {"sampler": "ddim", "num_inference_steps": 4, "guidance_scale": 3.0},
               "student", [])
    _nudge(pipe.unet, 1e-2, 2)
    _nudge(pipe.vae.decoder, 1e-2, 3)
    pipe.save_pretrained(root / "tuned")
    (root / "tuned" / LORA_INFO).write_text(json.dumps({"base": base}))
    (root / "tuned" / "prompts.txt").write_text("a teal circle\n")
    return {"root": root, "base": base, "student": str(root / "student"), "tuned": str(root / "tuned")}


def _sd(folder):
    return LatentGenPipeline.from_pretrained(folder).unet.state_dict()


def test_the_student_moves_by_what_the_fine_tune_changed_and_keeps_its_own_sampling(models, tmp_path):
    res = run(DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "o"),
                            transfer_scale=1.0))
    got, student, base, tuned = (_sd(f) for f in (res["final"], models["student"], models["base"],
                                                   models["tuned"]))
    for k, w in got.items():
        want = student[k] + (tuned[k] - base[k]) if k in base else student[k]  # the guidance embedding: kept
        assert torch.allclose(w, want, atol=1e-6), k
    assert not torch.allclose(got["conv_in.weight"], student["conv_in.weight"])
    final = LatentGenPipeline.from_pretrained(res["final"])
    tuned_vae = LatentGenPipeline.from_pretrained(models["tuned"]).vae.state_dict()
    assert all(torch.equal(a, tuned_vae[k]) for k, a in final.vae.state_dict().items())  # the fine-tune's VAE
    card = (tmp_path / "o" / "final" / "README.md").read_text()
    assert "num_inference_steps: 4" in card and "guidance_scale: 3.0" in card and "--from-student" in card
    assert (tmp_path / "o" / "final" / "prompts.txt").read_text() == "a teal circle\n"
    stock = StableDiffusionPipeline.from_pretrained(res["final"], safety_checker=None)
    image = stock("a teal circle", num_inference_steps=4, guidance_scale=3.0, height=16, width=16,
                  generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (16, 16, 3)


def test_transfer_scale_moves_the_student_that_many_times_the_change(models, tmp_path):
    res = run(DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "o"),
                            transfer_scale=1.25))
    got, student, base, tuned = (_sd(f) for f in (res["final"], models["student"], models["base"],
                                                   models["tuned"]))
    assert res["scale"] == 1.25
    for k in base:
        assert torch.allclose(got[k], student[k] + 1.25 * (tuned[k] - base[k]), atol=1e-6), k
    assert "1.25 times what the fine-tune" in (tmp_path / "o" / "final" / "README.md").read_text()
    for bad in (0, -1, 5, "often"):
        with pytest.raises(TrainerError, match="--transfer-scale must be auto, or a number above 0 and at most 4"):
            run(DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "b"),
                              transfer_scale=bad))


def test_auto_chooses_the_scale_whose_drawings_are_nearest_the_images():
    class Student(torch.nn.Module):  # its one weight is the grey level it draws
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

    student = Student()

    def pipe(prompts, generator, output_type, **sampling):
        assert output_type == "pt" and len(generator) == len(prompts) and sampling == {"num_inference_steps": 4}
        return SimpleNamespace(images=student.w.detach().expand(len(prompts), 3, 2, 2))

    images = torch.full((10, 3, 2, 2), 0.6)
    scale, dist = choose_scale(pipe, student, lambda lam: {"w": torch.tensor(lam / 2)}, ["c"] * 10, images,
                               {"num_inference_steps": 4}, (1.0, 1.25, 1.5))
    assert scale == 1.25 and dist[1.25] == pytest.approx(0.000625, rel=1e-4) and dist[1.0] == pytest.approx(0.01, rel=1e-4)


def test_auto_scale_is_chosen_on_the_fine_tunes_images_and_said(models, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 150, 150)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a teal circle {i}")
    res = run(DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "o"),
                            data=(str(data),), transfer_scale="auto"))
    dist = res["auto"]["distances"]
    assert res["auto"]["images"] == 3 and [float(k) for k in dist] == list(SCALES)
    assert len(set(dist.values())) == len(SCALES)  # each scale drew something else
    assert res["scale"] == float(min(dist, key=dist.get))
    got, student, base, tuned = (_sd(f) for f in (res["final"], models["student"], models["base"],
                                                   models["tuned"]))
    k = "conv_in.weight"
    assert torch.allclose(got[k], student[k] + res["scale"] * (tuned[k] - base[k]), atol=1e-6)
    assert "nearest to their 3 images" in (tmp_path / "o" / "final" / "README.md").read_text()
    # without the images (the fixture's finetune.json names no data), the fallback, said so
    res = run(DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "f"),
                            transfer_scale="auto"))
    assert res["scale"] == FALLBACK and res["auto"] == {"images": 0}
    assert "images were not found" in (tmp_path / "f" / "final" / "README.md").read_text()


def test_a_lora_fine_tune_moves_the_student_by_its_merged_adapters(models, tmp_path):
    lora = write_lora_fine_tune(models["base"], tmp_path / "lora")
    res = run(DistillConfig(model=lora, from_student=models["student"], out=str(tmp_path / "o")))
    got, student, base = _sd(res["final"]), _sd(models["student"]), _sd(models["base"])
    moved = [k for k in base if not torch.allclose(got[k], student[k], atol=1e-6)]
    assert moved and all(".attn" in k and k.endswith("weight") for k in moved), moved  # only what LoRA adapts
    assert res["weights_moved"] == len(moved) < res["weights_shared"] and res["fine_tune_move_median"] > 0
    assert res["scale"] == 1.125  # the default


def test_wrong_students_and_bases_are_named(models, tmp_path, capsys):
    other = make_tiny_pipeline(tmp_path, seed=5, name="other")  # a stranger: same shapes, other weights
    with pytest.raises(TrainerError, match="far from"):
        run(DistillConfig(model=models["tuned"], from_student=other, out=str(tmp_path / "a")))
    no_record = tmp_path / "no_record"
    shutil.copytree(models["tuned"], no_record)
    (no_record / LORA_INFO).unlink()
    with pytest.raises(TrainerError, match="was fine-tuned from"):
        run(DistillConfig(model=str(no_record), from_student=models["student"], out=str(tmp_path / "b")))
    with pytest.raises(SystemExit):
        main(["--model", models["tuned"], "--from-student", str(tmp_path / "missing"), "--out", str(tmp_path / "c")])
    assert "--from-student" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--draw-data N"):  # without --from-student, images are needed
        DistillConfig(model=models["tuned"], out=str(tmp_path / "d"))


def test_refining_trains_the_moved_student_toward_the_teachers_steps(models, tmp_path):
    from latentgen.data.shapes import write_shapes_folder

    data = str(tmp_path / "data")
    write_shapes_folder(data, n=8, size=16, seed=0)
    cfg = DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "o"),
                        data=(data,), refine_steps=3, refine_substeps=2, batch_size=4, lr=1e-3, progress=False)
    res = run(cfg)
    assert res["refine"] == {"steps": 3, "substeps": 2, "examples": 8}
    plain = run(DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "p")))
    got, moved = _sd(res["final"]), _sd(plain["final"])
    assert any(not torch.allclose(got[k], moved[k]) for k in moved)  # trained beyond the transfer
    assert (tmp_path / "o" / "refine" / "checkpoints").is_dir()
    with pytest.raises(TrainerError, match="needs --data"):
        run(DistillConfig(model=models["tuned"], from_student=models["student"], out=str(tmp_path / "q"),
                          refine_steps=2))


def test_interval_loss_with_two_substeps_is_progressive_distillations_target():
    """k = 2 teacher steps over one student step is Salimans & Ho's target; a student that is the guided
    teacher's one-step jump has zero loss only when k steps and one agree (never for a random net)."""
    from latentgen.diffusion import make_scheduler
    from latentgen.distill import interval_distillation_loss, progressive_distillation_loss
    from tests.tiny_models import make_tiny_components

    teacher = make_tiny_components(0)["unet"]
    student = make_student(teacher, 16)
    ac = make_scheduler("ddim").alphas_cumprod
    z0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    cond, uncond = (torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    g = torch.tensor([1.0, 1.0])  # guidance 1: the guided teacher is the conditional one
    with torch.no_grad():
        got = interval_distillation_loss(student, teacher, z0, cond, uncond, g, 2, 2, ac,
                                         torch.Generator().manual_seed(3))
        # the same draws, with the teacher as a guidance-input student at g = 1 (cond_proj zero: the same net)
        want = progressive_distillation_loss(student, make_student(teacher, 16), z0, cond, g, 2, ac,
                                             torch.Generator().manual_seed(3))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), (got, want)
