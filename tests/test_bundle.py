"""The bundle's parts that need no recipe run: its flags, its cards, its NOTICE (the whole bundle of a tiny
recipe is tested in test_recipe.py)."""

import json
import os

import pytest


def test_notice_carries_every_emoji_source_s_attribution():
    from latentgen.data.notice import notice_text
    from latentgen.pipeline import DEFAULT_MODEL_DIR

    text = notice_text()
    for source, licence in (("OpenMoji", "CC BY-SA 4.0"), ("Noto Color Emoji", "SIL Open Font License"),
                            ("Twemoji", "CC BY 4.0")):
        assert source in text and licence in text, source
    with open(os.path.join(os.path.dirname(DEFAULT_MODEL_DIR), "NOTICE"), encoding="utf-8") as f:
        assert f.read() == text  # what `latentgen train bundle` writes is what ships


def test_bundle_flags_make_its_config_and_the_command_gives_it_back():
    from latentgen.train.bundle import BundleConfig
    from latentgen.train.config import command_for, config_argv, parse_config

    argv = ["--recipe", "runs/r", "--teacher-runs", "runs/a", "runs/b", "--student-runs", "runs/c",
            "--guidance", "3", "--fp32"]
    cfg = parse_config(BundleConfig, "", argv)
    assert cfg == BundleConfig(recipe="runs/r", teacher_runs=("runs/a", "runs/b"), student_runs=("runs/c",),
                               guidance=3.0, fp32=True)
    assert cfg.out == os.path.join("latentgen", "weights") and cfg.sampler == "dpm++2m" and cfg.steps == 25
    assert parse_config(BundleConfig, "", config_argv(cfg)) == cfg
    assert command_for(cfg).startswith("latentgen train bundle --recipe runs/r --guidance 3.0 --teacher-runs "
                                       "runs/a runs/b")
    assert BundleConfig(recipe="r", extra_data=["d1", "d2"]).extra_data == ("d1", "d2")  # a list from Python


def test_bundle_refuses_a_folder_that_is_no_recipe_or_no_model_before_writing(tmp_path, capsys):
    from latentgen.train import bundle
    from latentgen.train.config import TrainerError

    weights = tmp_path / "weights"
    with pytest.raises(SystemExit):
        bundle.main(["--recipe", str(tmp_path), "--out", str(weights)])
    assert "has no recipe.json" in capsys.readouterr().err
    (tmp_path / "recipe.json").write_text(json.dumps({"preset": "tiny", "config": {}, "done": {}}))
    with pytest.raises(TrainerError, match="--teacher: no model folder"):
        bundle.run(bundle.BundleConfig(recipe=str(tmp_path), out=str(weights)))
    assert bundle.teacher_dir(str(tmp_path), {}) == str(tmp_path / "unet")
    assert bundle.teacher_dir(str(tmp_path), {"finetune_steps": 10}) == str(tmp_path / "finetune")
    assert not weights.exists()


def test_card_says_which_held_out_pairs_the_recipe_s_data_kept_out():
    from latentgen.train.bundle_card import heldout_note

    note = lambda kept: heldout_note({"done": {"data": {} if kept is None else {"heldout_pairs": kept}}})
    assert "appear in no training image" in note("excluded") and "left out" in note("excluded")
    assert "do not measure" in note("included")
    assert "U+1F7E2" in note(None) and "only **orange triangle**" in note(None)  # a recipe older than the key


def test_bundle_run_note_sums_the_time_of_each_sitting_not_the_gap_between_them(tmp_path):
    from latentgen.train.bundle_card import run_note

    run = tmp_path / "vaedec"
    (run / "logs").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"trainer": "vae", "decoder_only": True,
                                                     "data": ["/x/emoji", "/x/shapes4k/"]}))
    times = [60.0 * i for i in range(10)] + [20_000 + 60.0 * i for i in range(5)]  # 9 + 4 minutes, hours apart
    (run / "logs" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": 10 * (i + 1), "time": t, "loss": 1.0}) + "\n" for i, t in enumerate(times)))
    note = run_note(str(run))
    assert note.startswith("`train.vae --decoder-only`: 150 steps on emoji, shapes4k (13 min"), note

    (run / "run_config.json").write_text(json.dumps({"trainer": "finetune", "lora_rank": 0, "data": ["/x/shapes"],
                                                     "text_encoder": "/runs/clipt/"}))
    assert run_note(str(run)).startswith("`train.finetune --lora-rank 0 --text-encoder clipt`: 150 steps on shapes")
    (run / "run_config.json").write_text(json.dumps({"trainer": "distill", "stage": "round-4", "teacher_steps": 8,
                                                     "student_steps": 4, "data": ["/x/shapes"]}))
    assert run_note(str(run)).startswith("`train.distill round-4: 8 -> 4 steps`: 150 steps on shapes")


def test_bundle_card_lists_the_later_runs_data_and_times_only_the_stages_the_recipe_finished(tmp_path):
    from latentgen.train.bundle_card import extra_data_note, model_card
    from latentgen.train.config import TrainerError

    folder = tmp_path / "shapes-2obj"
    folder.mkdir()
    rows = [{"file_name": f"{i}.png", "text": f"caption {i}"} for i in range(3)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = extra_data_note(str(folder))
    assert line.startswith("- `shapes-2obj`: 3 more image-caption pairs") and "`caption 0`" in line
    with pytest.raises(TrainerError, match="no metadata.jsonl"):
        extra_data_note(str(tmp_path))
    # distill was started and stopped by the recipe (seconds, no done entry); clip2 skipped
    recipe = {"preset": "ship", "config": {}, "seconds": {"unet": 600.0, "clip2": 0.0, "distill": 1200.0},
              "done": {"unet": {"finished": True}, "clip2": {"skipped": True}}}
    card = model_card("teacher", {}, recipe, [], [], ["- a later run"], [line])
    assert "nor sharing the cores: unet 10.0* (total 10.0). *: wall clock" in card and line in card
    # with active seconds kept, those are the stage's minutes
    card = model_card("teacher", {}, {**recipe, "active_seconds": {"unet": 300.0}}, [], [], [], [line])
    assert "nor sharing the cores: unet 5.0 (total 5.0)." in card and "*: wall clock" not in card


def test_bundle_names_a_student_s_guidance_range_in_its_run_note_and_card(tmp_path):
    from latentgen.train.bundle_card import guidance_note, run_note

    run = tmp_path / "round-4"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.jsonl").write_text(json.dumps({"step": 1000, "time": 0.0}) + "\n")
    cfg = {"trainer": "distill", "stage": "round-4", "teacher_steps": 8, "student_steps": 4}
    (run / "run_config.json").write_text(json.dumps({**cfg, "guidance": [1.0, 5.0]}))
    assert run_note(str(run)).startswith("`train.distill --guidance-max 5 round-4: 8 -> 4 steps`: 1000 steps")
    assert guidance_note(str(run))[-1] == ("The guidance scale is an input the student learned for scales 1 to 5 "
                                           "(`--guidance-max 5`); above 5 it extrapolates.")
    (run / "run_config.json").write_text(json.dumps({**cfg, "guidance": [1.0, 8.0]}))  # the default: no flag
    assert run_note(str(run)).startswith("`train.distill round-4: 8 -> 4 steps`")
    assert "scales 1 to 8" in guidance_note(str(run))[-1]
    assert guidance_note(str(tmp_path)) == []  # a folder without a run_config.json (a recipe's final/)
    # a distill run's record as `latentgen train distill` writes it: the config's fields and the round's keys
    (run / "run_config.json").write_text(json.dumps({
        "config_version": 1, "trainer": "distill", "teacher_steps": 16, "guidance_min": 1.0, "guidance_max": 5.0,
        "guidance": 4.0, "stage": "round-4", "stage_teacher_steps": 8, "student_steps": 4}))
    assert run_note(str(run)).startswith("`train.distill --guidance-max 5 round-4: 8 -> 4 steps`: 1000 steps")
    assert "scales 1 to 5" in guidance_note(str(run))[-1]


def test_bundle_eval_codec_puts_the_vae_table_in_both_cards_and_clip_probing_in_the_teacher_s(tmp_path):
    from latentgen.train.bundle_card import codec_figures

    res = {"vae": [{"data": "shapes, fresh scenes", "images": 150, "target_db": 32, "psnr": 38.6636}],
           "clip": {"shapes_probing": {"color": 0.999, "shape": 0.941, "size": 0.997, "position": 0.996,
                                       "swap": 0.991}}}
    path = tmp_path / "codec.json"
    path.write_text(json.dumps(res))
    teacher = "\n".join(codec_figures(str(path), with_clip=True))
    student = "\n".join(codec_figures(str(path), with_clip=False))
    assert "| shapes, fresh scenes | 150 | 38.66 | 32 |" in teacher and "| shapes, fresh scenes | 150 | 38.66 | 32 |" in student
    assert "shape 94.1%" in teacher and "probing" not in student
    assert codec_figures(None, with_clip=True) == []
