"""The tiny recipe end to end: empty folder -> teacher and 4-step student that both pipelines load."""

import json
import os
import shutil

import pytest
import torch


def test_tiny_recipe_end_to_end_and_resume(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from latentgen import LatentGenPipeline
    from latentgen.train import recipe

    out = str(tmp_path / "recipe")
    state = recipe.run(recipe.RecipeConfig(out=out, preset="tiny", progress=False))
    assert set(state["done"]) == set(recipe.STAGES)
    teacher, student = recipe.teacher_dir(out, state["config"]), os.path.join(out, "distill", "final")
    assert teacher == os.path.join(out, "finetune")  # the tiny preset runs clip2 and finetune, as ship does
    half = os.path.join(out, "distill2", "final")  # the 2-step student, halved from the 4-step one
    assert state["done"]["distill2"]["rounds"][-1]["student_steps"] == 2
    g = lambda: torch.Generator().manual_seed(0)
    for folder, steps in ((teacher, 4), (student, 4), (half, 2)):
        assert os.path.getsize(os.path.join(folder, "prompts.txt")) > 0  # the student keeps the teacher's
        ours = LatentGenPipeline.from_pretrained(folder)
        a = ours("a large red circle at center", num_inference_steps=steps, guidance_scale=3.0, generator=g(),
                 output_type="np").images
        stock = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        b = stock("a large red circle at center", num_inference_steps=steps, guidance_scale=3.0, generator=g(),
                  output_type="np").images
        assert a.shape == (1, 16, 16, 3) and abs(a - b).max() < 1e-3
    # the held-out pairs were kept out of the data
    with open(os.path.join(out, "data", "shapes", "metadata.jsonl")) as f:
        pairs = {(o["color"], o["shape"]) for row in map(json.loads, f) for o in row["objects"]}
    assert not pairs & {("purple", "square"), ("orange", "triangle"), ("green", "circle")}
    assert state["done"]["data"]["heldout_pairs"] == "excluded"  # the model cards read this
    # the held-out emoji were kept out too, a whole group at a time
    from latentgen.data.emoji import emoji_group

    def groups(folder):
        with open(os.path.join(out, "data", folder, "metadata.jsonl"), encoding="utf-8") as f:
            return [emoji_group(row["emoji"]) for row in map(json.loads, f)]

    held, seen = groups("emoji-heldout"), groups("emoji")
    assert len(held) == state["done"]["data"]["n_emoji_heldout"] >= 8 and seen
    assert not set(held) & set(seen) and len(held) + len(seen) == len(groups("emoji-all"))
    # the decoder stage kept the encoder bit for bit, and the teacher ships its decoder
    from safetensors.torch import load_file

    def vae_weights(folder):
        return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))

    base, dec, shipped = (vae_weights(os.path.join(out, *p)) for p in
                          (("vae", "vae"), ("decoder", "vae"), ("unet", "vae")))
    assert all(torch.equal(base[k], dec[k]) for k in base if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(base[k], dec[k]) for k in base if k.startswith("decoder."))
    assert all(torch.equal(dec[k], shipped[k]) for k in dec)
    assert state["done"]["decoder"]["val_psnr"] > 0 and state["done"]["decoder"]["n_val"] == len(held)
    # clip2 trained the unet stage's text encoder on, and the teacher (finetune) carries it and the decoder
    te = lambda *p: load_file(os.path.join(out, *p, "text_encoder", "model.safetensors"))
    first, second, carried = te("unet"), te("clip2"), te("finetune")
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(second[k], carried[k]) for k in second)
    assert all(torch.equal(dec[k], t) for k, t in vae_weights(os.path.join(out, "finetune", "vae")).items())
    # the vae stage: the preset's shapes subset beside the emoji, mirrored, EMA, validated on the held-out emoji
    with open(os.path.join(out, "vae", "run_config.json")) as f:
        vae_run = json.load(f)
    pr = recipe.PRESETS["tiny"]
    assert vae_run["data"][0].endswith(f"shapes-{pr.vae_shapes}") and vae_run["hflip"] is True
    with open(os.path.join(vae_run["data"][0], "metadata.jsonl")) as f:
        assert sum(1 for _ in f) == pr.vae_shapes
    assert state["done"]["vae"]["n_val"] == len(held) and state["done"]["vae"]["val_psnr"] > 0
    assert all(state["cpu_seconds"][s] > 0 for s in recipe.STAGES)
    assert all(0 <= state["active_seconds"][s] <= state["seconds"][s] + 1 for s in recipe.STAGES)
    # word-level text states: the extra colours feed the text-conditioned stages only, CLIP (both sittings) learns
    # with the token loss, the UNet (both sittings) on shuffled summaries
    extra = os.path.join(out, "data", "shapes-extra")
    with open(os.path.join(extra, "metadata.jsonl")) as f:
        assert sum(1 for _ in f) == pr.extra_color_shapes
    runs = {}
    for stage in ("vae", "decoder", "clip", "unet", "clip2", "finetune"):
        with open(os.path.join(out, stage, "run_config.json")) as f:
            runs[stage] = json.load(f)
    assert [extra in runs[s]["data"] for s in ("vae", "decoder", "clip", "clip2")] == [False, False, True, True]
    def rows(folder):
        with open(os.path.join(out, "data", folder, "metadata.jsonl"), encoding="utf-8") as f:
            return sum(1 for _ in f)

    assert runs["unet"]["examples"] == rows("shapes") + rows("shapes-extra") + rows("emoji")
    # the 2-object scenes: the finetune stage and the distillation of its teacher only, none a held-out pair
    assert rows("shapes-2obj") == pr.two_object_shapes
    assert runs["finetune"]["examples"] == runs["unet"]["examples"] + pr.two_object_shapes
    with open(os.path.join(out, "data", "shapes-2obj", "metadata.jsonl")) as f:
        assert all(len(json.loads(line)["objects"]) == 2 for line in f)
    with open(os.path.join(out, "distill", "stage1", "run_config.json")) as f:
        assert json.load(f)["examples"] == runs["finetune"]["examples"]
    assert not any(os.path.join(out, "data", "shapes-2obj") in runs[s]["data"] for s in ("vae", "decoder", "clip",
                                                                                       "clip2"))
    assert runs["clip"]["token_loss"] == runs["clip2"]["token_loss"] == 1.0
    assert runs["unet"]["shuffle_summary"] == runs["finetune"]["shuffle_summary"] == 1.0
    # a second run (from the flags) finds every stage done and trains nothing
    capsys.readouterr()
    recipe.main(["--out", out, "--preset", "tiny", "--no-progress"])
    assert capsys.readouterr().out.count(": done") == len(recipe.STAGES)


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    from latentgen.train import recipe

    out = str(tmp_path_factory.mktemp("tiny") / "recipe")
    recipe.run(recipe.RecipeConfig(out=out, preset="tiny", progress=False))
    return out


def test_bundle_fp16_loads_fp32_in_both_pipelines(tiny_recipe, tmp_path):
    """train.bundle on the tiny recipe: fp16 storage, fp32 load, same images as the unbundled folders."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from latentgen import LatentGenPipeline
    from latentgen.data.notice import notice_text
    from latentgen.pipeline import read_model_card_defaults
    from latentgen.train import bundle

    out = tiny_recipe
    weights = str(tmp_path / "weights")
    res = bundle.run(bundle.BundleConfig(recipe=out, out=weights, steps=4, guidance=3.0))
    teacher, student = os.path.join(weights, "default"), os.path.join(weights, "default-4step")
    half = os.path.join(weights, "default-2step")  # the recipe's distill2 student
    assert set(res["folders"].values()) == {teacher, student, half}
    assert read_model_card_defaults(half)["num_inference_steps"] == 2
    with open(os.path.join(half, "README.md"), encoding="utf-8") as f:
        assert "2-step student" in f.read()
    with open(os.path.join(weights, "NOTICE"), encoding="utf-8") as f:
        notice = f.read()
    assert notice == notice_text() and all(s in notice for s in ("OpenMoji", "Noto Color Emoji", "Twemoji"))
    assert bundle.run(bundle.BundleConfig(recipe=out, out=str(tmp_path / "w2"), half_student="off"))["folders"].keys() \
        == {"default", "default-4step"}
    assert read_model_card_defaults(teacher) == {"sampler": "dpm++2m", "num_inference_steps": 4,
                                                 "guidance_scale": 3.0}
    assert read_model_card_defaults(student)["num_inference_steps"] == 4
    assert os.path.isdir(os.path.join(teacher, "clip")) and not os.path.exists(os.path.join(teacher, "cache"))
    # the teacher's scorer is the recipe's scorer stage (image tower trained on, text tower frozen), stored in fp16
    from latentgen.train.bundle import tensors

    scorer, before, shipped = (tensors(os.path.join(d, "clip")) for d in (os.path.join(out, "scorer"),
                                                                             os.path.join(out, "finetune"), teacher))
    assert shipped.keys() == scorer.keys() and all(torch.equal(shipped[k], scorer[k].half()) for k in scorer)
    assert any(not torch.equal(scorer[k], before[k]) for k in scorer if k.startswith("vision_model."))
    assert all(torch.equal(scorer[k], before[k]) for k in scorer if k.startswith("text_model."))
    stored = load_file(os.path.join(teacher, "unet", "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    g = lambda: torch.Generator().manual_seed(0)
    for bundled, original in ((teacher, os.path.join(out, "finetune")), (student, os.path.join(out, "distill", "round-4"))):
        ours = LatentGenPipeline.from_pretrained(bundled)
        assert {m.dtype for m in (ours.unet, ours.vae, ours.text_encoder)} == {torch.float32}
        a = ours("a large red circle at center", num_inference_steps=4, guidance_scale=3.0, generator=g(),
                 output_type="np").images
        ref = LatentGenPipeline.from_pretrained(original)("a large red circle at center", num_inference_steps=4,
                                                         guidance_scale=3.0, generator=g(), output_type="np").images
        stock = StableDiffusionPipeline.from_pretrained(bundled, safety_checker=None, requires_safety_checker=False)
        assert stock.text_encoder.dtype == torch.float32
        b = stock("a large red circle at center", num_inference_steps=4, guidance_scale=3.0, generator=g(),
                  output_type="np").images
        assert abs(a - b).max() < 1e-3 and abs(a - ref).max() < 0.02  # fp16 rounding of the weights only


def test_recipe_curve_measures_the_teacher_at_each_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    """bench.recipe_curve puts each checkpoint's EMA weights in the teacher (snapshots included) and places it
    on the recipe's minutes; a second run keeps the points it has. Emoji are ranked among the recipe's own 32
    (not every OpenMoji render: minutes of features)."""
    from safetensors.torch import load_file

    from bench import recipe_curve
    from latentgen import LatentGenPipeline
    from latentgen.eval.emoji import folder_renders

    monkeypatch.setattr(recipe_curve, "style_renders",
                        lambda style, size: folder_renders(os.path.join(tiny_recipe, "data", "emoji-all"), size))

    snaps = tmp_path / "snap" / "unet" / "checkpoints" / "checkpoint-20"
    shutil.copytree(os.path.join(tiny_recipe, "unet", "checkpoints", "checkpoint-40"), snaps)  # as if kept
    argv = ["--recipe", tiny_recipe, "--snapshots", str(tmp_path / "snap"), "--every", "20", "--n", "1",
            "--emoji-n", "2", "--steps", "2", "--results", str(tmp_path / "curve")]
    result = recipe_curve.main(argv)
    points = result["points"]
    assert sorted(points) == ["finetune:10", "unet:20", "unet:40"]
    assert points["unet:20"]["minutes"] < points["unet:40"]["minutes"] < points["finetune:10"]["minutes"]
    assert all(0 <= p[g] <= 1 for p in points.values() for g in recipe_curve.SHAPES)
    assert all(p["openmoji"]["median_rank"] >= 1 for p in points.values())
    assert "| finetune | 10 |" in (tmp_path / "curve.md").read_text()
    assert recipe_curve.main(argv)["points"] == points  # nothing measured again

    pipe = LatentGenPipeline.from_pretrained(os.path.join(tiny_recipe, "unet"))
    ckpt = os.path.join(tiny_recipe, "finetune", "checkpoints", "checkpoint-10")
    recipe_curve.load_ema(pipe.unet, ckpt)
    ema = load_file(os.path.join(ckpt, "ema.safetensors"))
    assert all(torch.equal(p, ema[f"p{i}"]) for i, p in enumerate(pipe.unet.parameters()))


def test_bundle_swaps_in_a_frozen_text_clip_and_a_decoder_only_vae(tiny_recipe, tmp_path):
    """--clip / --vae take parts improved with the UNet's inputs kept, and refuse any other."""
    from safetensors.torch import load_file

    from latentgen.train import bundle, clip, vae
    from latentgen.train.config import TrainerError

    out, teacher = tiny_recipe, os.path.join(tiny_recipe, "finetune")
    fast = {"data": (os.path.join(out, "data", "shapes"),), "model": teacher, "max_steps": 2, "batch_size": 8,
            "lr": 1e-2, "warmup_steps": 0, "progress": False}
    clip.run(clip.Config(out=str(tmp_path / "clip"), freeze_text=True, **fast))
    clip.run(clip.Config(out=str(tmp_path / "clip-all"), **fast))
    vae.run(vae.Config(out=str(tmp_path / "dec"), decoder_only=True, validate_every=0, **fast))
    vae.run(vae.Config(out=str(tmp_path / "vae-all"), validate_every=0, **fast))
    weights = str(tmp_path / "weights")
    with pytest.raises(TrainerError, match="text tower differs.*--freeze-text"):
        bundle.run(bundle.BundleConfig(recipe=out, out=weights, clip=str(tmp_path / "clip-all")))
    with pytest.raises(TrainerError, match="encoder or scaling factor differs.*--decoder-only"):
        bundle.run(bundle.BundleConfig(recipe=out, out=weights, vae=str(tmp_path / "vae-all")))
    assert not os.path.exists(weights)  # refused before anything was written
    bundle.run(bundle.BundleConfig(recipe=out, out=weights, clip=str(tmp_path / "clip"), vae=str(tmp_path / "dec"),
                                   student_runs=(str(tmp_path / "vae-all"),)))  # any run folder: only its note is read

    def half(path):
        return {k: v.half() for k, v in load_file(path).items()}

    clip_old, clip_new = half(os.path.join(teacher, "clip", "model.safetensors")), \
        half(os.path.join(weights, "default", "clip", "model.safetensors"))
    changed = {k for k in clip_old if not torch.equal(clip_old[k], clip_new[k])}
    assert changed and not any(k.startswith("text_model.") for k in changed)
    vae_file = os.path.join("vae", "diffusion_pytorch_model.safetensors")
    vae_old = half(os.path.join(teacher, vae_file))
    for name in ("default", "default-4step"):
        vae_new = half(os.path.join(weights, name, vae_file))
        changed = {k for k in vae_old if not torch.equal(vae_old[k], vae_new[k])}
        assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), name
    with open(os.path.join(weights, "default", "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "`train.clip --freeze-text`: 2 steps" in card and "`train.vae --decoder-only`: 2 steps" in card
    with open(os.path.join(weights, "default-4step", "README.md"), encoding="utf-8") as f:
        student_card = f.read()
    assert "--decoder-only" in student_card and "--freeze-text" not in student_card
    assert "`train.vae`: 2 steps" in student_card and "`train.vae`: 2 steps" not in card


def test_raised_step_count_reopens_stage_and_moves_later_ones_aside(tmp_path):
    from dataclasses import asdict, replace

    from latentgen.train.config import TrainerError
    from latentgen.train.recipe import PRESETS, reopen_stages

    pr = PRESETS["tiny"]
    for stage in ("unet", "distill"):
        os.makedirs(tmp_path / stage / "checkpoints")
    done = {s: {"finished": True} for s in ("data", "vae", "clip", "unet", "distill")}
    state = {"preset": "tiny", "done": dict(done), "seconds": {s: 60.0 for s in done}, "config": asdict(pr)}

    assert reopen_stages(str(tmp_path), state, pr) == []  # same preset: nothing reopens
    assert set(state["done"]) == set(done)

    raised = replace(pr, unet_steps=pr.unet_steps * 2)
    assert reopen_stages(str(tmp_path), state, raised) == ["unet", "distill"]
    assert set(state["done"]) == {"data", "vae", "clip"}
    assert (tmp_path / "unet" / "checkpoints").is_dir()  # resumes from its own checkpoints
    assert not (tmp_path / "distill").exists()  # trained on the old teacher: moved aside, starts over
    assert [p.name.startswith("distill.before-") for p in tmp_path.iterdir()].count(True) == 1
    assert "unet" in state["seconds"] and "distill" not in state["seconds"]

    # a data field cannot reopen anything: every stage trained on the data, so it is an error
    with pytest.raises(TrainerError, match="emoji_holdout 8 then, 0 now.*new --out"):
        reopen_stages(str(tmp_path), state, replace(pr, emoji_holdout=0))
    old = dict(state["config"])
    del old["emoji_holdout"]  # a recipe folder made before the field existed held nothing out
    assert reopen_stages(str(tmp_path), {**state, "config": old}, replace(pr, emoji_holdout=0)) == []


def test_data_stage_refuses_an_old_folder_whose_captions_name_a_held_out_pair(tmp_path):
    from dataclasses import replace

    from latentgen.train.config import TrainerError
    from latentgen.train.recipe_data import stage_data
    from latentgen.train.recipe_presets import PRESETS

    pr = replace(PRESETS["tiny"], emoji_holdout=0)
    for folder, text in (("shapes", "a large red circle at center"), ("emoji", "green circle")):
        os.makedirs(tmp_path / "data" / folder)
        (tmp_path / "data" / folder / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": text}))
    with pytest.raises(TrainerError, match="1 caption.*'green circle'.*delete the folder"):
        stage_data(str(tmp_path), pr, seed=0, include_heldout=False)
    folders = stage_data(str(tmp_path), pr, seed=0, include_heldout=True)["folders"]
    assert [os.path.basename(f) for f in folders] == ["shapes", "shapes-extra", "emoji", "shapes-2obj"]


def test_emoji_styles_draw_the_names_openmoji_trains_on(tmp_path, monkeypatch):
    """A style folder holds the OpenMoji training folder's names only (no held-out emoji), captioned with the
    style word, and joins OpenMoji in the data folders; an unknown style is refused."""
    from dataclasses import replace

    from latentgen.data import emoji_sources
    from latentgen.train.recipe_data import _write_style, data_dirs
    from latentgen.train.recipe_presets import PRESETS

    styles = os.path.join(os.path.dirname(__file__), "data", "emoji")
    monkeypatch.setenv(emoji_sources.TWEMOJI_ENV, os.path.join(styles, "twemoji"))
    monkeypatch.setenv(emoji_sources.NOTO_ENV, os.path.join(styles, "noto"))
    openmoji = tmp_path / "data" / "emoji"
    openmoji.mkdir(parents=True)
    rows = [{"file_name": "1F680.png", "text": "rocket", "emoji": "\U0001F680"},
            {"file_name": "1F600.png", "text": "grinning face", "emoji": "\U0001F600"}]  # cat face: held out
    (openmoji / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pr = replace(PRESETS["tiny"], emoji_styles="noto, twemoji")
    dirs = data_dirs(str(tmp_path), pr)
    assert [os.path.basename(d) for d in dirs] == ["shapes", "emoji", "emoji-noto", "emoji-twemoji"]
    for style, folder in zip(pr.styles(), dirs[2:]):
        _write_style(str(openmoji), folder, style, 16, include_heldout=False)
        with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
            got = [json.loads(line) for line in f]
        assert sorted(r["text"] for r in got) == [f"grinning face, {style} style", f"rocket, {style} style"]
        assert all(os.path.isfile(os.path.join(folder, r["file_name"])) for r in got)
        with open(os.path.join(folder + "-all", "metadata.jsonl"), encoding="utf-8") as f:
            assert "cat face" in f.read()  # the style has it; the training folder leaves it out
    with pytest.raises(ValueError, match="emoji_styles.*'fluent'.*noto, twemoji"):
        replace(pr, emoji_styles="noto,fluent")


def test_ship_preset_distillation_settings(tmp_path, monkeypatch):
    """The ship preset distils with guidance 1-5 and a 1000-step last round; presets without those fields keep
    the distiller's defaults (no last_round_steps)."""
    from latentgen.train import distill, recipe

    seen = []
    monkeypatch.setattr(distill, "run", lambda cfg: seen.append(cfg) or {"finished": True})
    cfg = recipe.RecipeConfig(out=str(tmp_path), progress=False)
    for name in ("ship", "tiny"):
        recipe.stage_distill(cfg, recipe.PRESETS[name])
    ship, tiny = seen

    assert isinstance(ship, distill.DistillConfig) and ship.resume == "latest" and ship.progress is False
    assert ship.out == os.path.join(str(tmp_path), "distill") and ship.model == os.path.join(str(tmp_path), "finetune")
    assert ship.guidance_max == 5.0 and ship.last_round_steps == 1000 and ship.lr_schedule == "linear"
    assert ship.stage1_steps == 2000 and ship.steps_per_round == ship.max_steps == 500
    assert (ship.teacher_steps, ship.min_steps, ship.batch_size) == (16, 4, 32)
    assert tiny.guidance_max == 8.0 and tiny.last_round_steps is None
    # raising the last round reopens the distill stage and the halving from its student, not the scorer
    from dataclasses import asdict, replace
    pr = recipe.PRESETS["ship"]
    state = {"preset": "ship", "done": {s: {} for s in recipe.STAGES}, "seconds": {}, "config": asdict(pr)}
    assert recipe.reopen_stages(str(tmp_path), state, replace(pr, last_round_steps=2000)) == ["distill", "distill2"]
    state = {"preset": "ship", "done": {s: {} for s in recipe.STAGES}, "seconds": {}, "config": asdict(pr)}
    assert recipe.reopen_stages(str(tmp_path), state, replace(pr, half_round_steps=2000)) == ["distill2"]
    # the scorer stage trains on the teacher alone: raising it reopens it, and a reopened distill leaves it be
    state = {"preset": "ship", "done": {s: {} for s in recipe.STAGES}, "seconds": {}, "config": asdict(pr)}
    assert recipe.reopen_stages(str(tmp_path), state, replace(pr, scorer_steps=6000)) == ["scorer"]


def test_finetune_stage_without_clip2_keeps_the_unet_s_own_text_encoder(tmp_path, monkeypatch):
    """A preset with a finetune stage and no clip2 fine-tunes on the unet stage's text encoder; the word-level
    fields reach their trainers (token loss: clip; shuffled summaries: unet and finetune), and the card says
    what the extra colours are."""
    from dataclasses import asdict, replace

    from latentgen.train import clip, finetune, recipe, unet
    from latentgen.train.bundle_card import model_card

    seen = {}
    for mod in (clip, unet, finetune):
        monkeypatch.setattr(mod, "run", lambda cfg, name=mod.__name__: seen.setdefault(name, cfg) and {})
    pr = replace(recipe.PRESETS["tiny"], clip2_steps=0, clip_token_loss=0.5, shuffle_summary=0.25)
    cfg = recipe.RecipeConfig(out=str(tmp_path), progress=False)
    for stage in (recipe.stage_clip, recipe.stage_unet, recipe.stage_finetune):
        stage(cfg, pr)
    ft = seen["latentgen.train.finetune"]
    assert isinstance(ft, finetune.FinetuneConfig) and ft.text_encoder is None
    assert ft.model == os.path.join(str(tmp_path), "unet") and ft.lora_rank == 0 and ft.lr == pr.finetune_lr
    assert (ft.tune_decoder, ft.prior, ft.lr_schedule, ft.ema_decay) == ("off", "off", "linear", 0.999)
    # the teacher keeps learning its unconditional prediction, as in the unet stage (a user's fine-tune does not)
    assert ft.caption_dropout == seen["latentgen.train.unet"].caption_dropout == 0.1
    assert finetune.FinetuneConfig(model="m", data=("d",), out="o").caption_dropout == 0.0
    assert seen["latentgen.train.clip"].token_loss == 0.5
    assert seen["latentgen.train.unet"].shuffle_summary == ft.shuffle_summary == 0.25
    assert seen["latentgen.train.unet"].text_encoder == os.path.join(str(tmp_path), "clip")
    assert all(c.shuffle_summary_multi is None for c in (ft, seen["latentgen.train.unet"]))
    seen.clear()
    recipe.stage_finetune(cfg, replace(pr, finetune_shuffle_multi=0.0))
    assert seen["latentgen.train.finetune"].shuffle_summary_multi == 0.0
    assert all(os.path.join(str(tmp_path), "data", "shapes-extra") in c.data for c in seen.values())
    plain = replace(pr, extra_color_shapes=0, clip_token_loss=0.0, shuffle_summary=0.0)
    seen.clear()
    for stage in (recipe.stage_clip, recipe.stage_unet, recipe.stage_finetune):
        stage(cfg, plain)
    assert seen["latentgen.train.clip"].token_loss == 0.0
    assert all(c.shuffle_summary == 0.0 for n, c in seen.items() if n != "latentgen.train.clip")
    assert not any("shapes-extra" in d for c in seen.values() for d in c.data)
    card = lambda p: model_card("teacher", {}, {"config": asdict(p)}, [], [])
    assert "16 more scenes" in card(pr) and "outside the palette" not in card(plain)
    assert "16 more scenes of exactly 2 objects" in card(pr)
    assert "exactly 2 objects" not in card(replace(pr, two_object_shapes=0))
    with pytest.raises(ValueError, match="set finetune_steps > 0"):
        replace(pr, finetune_steps=0)


def test_active_clock_leaves_out_the_time_the_process_was_stopped(monkeypatch):
    """A stop the ticking thread sees as a late wake is not counted; on-time wakes are."""
    import time

    from latentgen.train import recipe
    from latentgen.train.recipe import ActiveClock

    now = iter([0.0, 1.0, 2.0, 302.0, 303.0] + [303.0] * 100)  # a 300 s stop between the 2nd and 3rd wake
    monkeypatch.setattr(recipe.time, "monotonic", lambda: next(now))
    clock = ActiveClock(tick=0.001, late=5.0)
    with clock:
        while clock.seconds < 3.0:
            time.sleep(0.001)
    assert clock.seconds == 3.0  # 1 + 1 + 1, the 300 s left out


def test_a_stage_begun_before_active_time_was_kept_gets_none(tmp_path, monkeypatch):
    """Active seconds of a stage are kept only when they cover all its sittings."""
    from latentgen.train import recipe

    monkeypatch.setitem(recipe.RUNNERS, "data", lambda cfg, pr: {"finished": True})
    cfg = recipe.RecipeConfig(out=str(tmp_path), preset="tiny")
    path = str(tmp_path / "recipe.json")
    old = {"preset": "tiny", "done": {}, "seconds": {"data": 50.0}}
    assert recipe._run_stage("data", cfg, recipe.PRESETS["tiny"], old, path)
    assert old["seconds"]["data"] >= 50.0 and "data" not in old.get("active_seconds", {})
    new = {"preset": "tiny", "done": {}, "seconds": {}}
    assert recipe._run_stage("data", cfg, recipe.PRESETS["tiny"], new, path)
    assert 0 <= new["active_seconds"]["data"] <= new["seconds"]["data"] + 1


def test_recipe_curve_minutes_are_active_ones_where_kept_and_none_for_a_running_stage():
    from bench import recipe_curve

    state = {"config": {"unet_steps": 100, "finetune_steps": 200},
             "done": {"data": {}, "unet": {}},
             "seconds": {"data": 60.0, "unet": 6000.0, "finetune": 900.0},
             "active_seconds": {"unet": 3000.0, "finetune": 600.0}}
    assert recipe_curve.stage_seconds(state) == ({"data": 60.0, "unet": 3000.0, "finetune": 600.0}, {"data"})
    assert recipe_curve.recipe_minutes(state, "unet", 50) == (60.0 + 1500.0) / 60
    assert recipe_curve.recipe_minutes(state, "finetune", 100) is None  # still running: its seconds are partial
