"""The Fine-tune and Distill tabs: start a background training run, watch it, stop and resume it.

Each tab builds the trainer's command line (``train.finetune`` / ``train.distill``, the
shared flags of ``train/common.py``) and hands it to the :class:`JobManager`. A timer
polls the run folder once a second while a run is going: progress bar, loss curve, the
newest sample image and the end of the log. The finished model is written to
``<models>/<name>/`` and shows up in the model lists (press ↻ there).
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from latentgen.ui.errors import readable_errors
from latentgen.ui.jobs import JobManager, JobStatus, check_run_name
from latentgen.ui.registry import ModelRegistry, is_lora_folder

PRIVATE = {"api_visibility": "private"}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_FILES = ("metadata.jsonl", "captions.jsonl", "metadata.csv", "captions.csv")
RESERVED_FLAGS = ("--out", "--resume", "--model", "--max-steps")


@dataclass(frozen=True)
class TrainerSpec:
    module: str
    title: str
    model_label: str
    default_steps: int
    steps_label: str
    intro: str


FINETUNE = TrainerSpec(
    "train.finetune",
    "Fine-tune",
    "Base model",
    500,
    "Max steps",
    "Teach a model your own images. LoRA trains small adapters (fast, a few MB); full fine-tuning "
    "trains the whole UNet. The result appears in the model list as the name you give.",
)
DISTILL = TrainerSpec(
    "train.distill",
    "Distill",
    "Teacher model",
    1000,
    "Steps per stage",
    "Guided, then progressive distillation: a student that samples in a few steps. Give the teacher's "
    "training images. Each halving is a model folder: `<name>/round-8`, ..., and `<name>/final`.",
)


def progress_html(st: JobStatus) -> str:
    pct = round(100 * st.fraction, 1)
    return (
        f"<div style='background:var(--neutral-200,#e5e7eb);border-radius:6px;height:14px'>"
        f"<div style='width:{pct}%;background:var(--color-accent,#f97316);height:14px;border-radius:6px'>"
        f"</div></div><div style='font-size:0.9em'>step {st.step} / {st.max_steps} ({pct}%)</div>"
    )


def loss_frame(st: JobStatus):
    import pandas as pd

    steps, losses = zip(*st.losses, strict=True) if st.losses else ((), ())
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "loss": pd.Series(losses, dtype="float64")})


def stage_uploads(files, caption: str, dest: Path) -> Path:
    """Copy uploaded images (and their .txt / metadata files) into ``dest``; caption the rest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    names = set()
    for f in files:
        src = Path(f)
        name = src.name
        if (
            name.lower().endswith(IMAGE_EXTS)
            or name.lower().endswith(".txt")
            or name.lower() in CAPTION_FILES
        ):
            shutil.copy(src, dest / name)
            names.add(name)
    images = [n for n in names if n.lower().endswith(IMAGE_EXTS)]
    if not images:
        raise ValueError(f"none of the uploaded files is an image ({', '.join(IMAGE_EXTS)})")
    has_meta = any(n.lower() in CAPTION_FILES for n in names)
    missing = [n for n in images if f"{Path(n).stem}.txt" not in names]
    if missing and not has_meta:
        if not (caption or "").strip():
            raise ValueError(
                f"{len(missing)} uploaded image(s) have no caption (e.g. {missing[0]}): upload "
                f"{Path(missing[0]).stem}.txt with them, or fill in 'Caption for uploaded images'"
            )
        for n in missing:
            (dest / f"{Path(n).stem}.txt").write_text(caption.strip())
    return dest


def build_training_tab(spec: TrainerSpec, registry: ModelRegistry, jobs: JobManager, model_lists=()):
    """The tab for ``spec``; ``model_lists`` (other tabs' model dropdowns) learn of a finished model."""
    gr.Markdown(f"### {spec.title}\n{spec.intro}")
    if not jobs.available(spec.module):
        gr.Markdown(
            f"**{spec.title} is not available in this version**: the trainer `{spec.module}` "
            f"is not installed in {jobs.repo_root}."
        )
        return
    finetune = spec.module == "train.finetune"
    key = spec.module.rsplit(".", 1)[-1]  # element ids: finetune-name, distill-steps, ...

    def ids(part: str) -> dict:
        return {"elem_id": f"{key}-{part}"}

    with gr.Row():
        with gr.Column():
            name = gr.Textbox(
                label="New model name",
                placeholder="my-model",
                **ids("name"),
                info=f"the result is saved as {registry.models_dir}/<name>",
            )
            base = gr.Dropdown(
                registry.choices(),
                value=registry.default_choice(),
                label=spec.model_label,
                allow_custom_value=True,
                **ids("model"),
            )
            data_dir = gr.Textbox(
                label="Image folder on the server",
                **ids("data"),
                info="images with .txt captions, or a metadata.jsonl / captions.csv",
            )
            uploads = gr.File(label="...or upload images (+ same-name .txt captions)", file_count="multiple")
            caption = gr.Textbox(label="Caption for uploaded images without one")
            with gr.Row():
                steps = gr.Number(
                    spec.default_steps, precision=0, label=spec.steps_label, minimum=1, **ids("steps")
                )
                batch = gr.Number(8, precision=0, label="Batch size", minimum=1, **ids("batch"))
                every = gr.Number(
                    100, precision=0, label="Checkpoint + sample every", minimum=1, **ids("every")
                )
            if finetune:
                own = [
                    gr.Radio(["LoRA", "Full"], value="LoRA", label="Method", **ids("method")),
                    gr.Textbox(label="Sample prompt (rendered at each sample step)", **ids("prompt")),
                ]
            else:
                own = [
                    gr.Radio(
                        [4, 2, 1],
                        value=4,
                        label="Student steps",
                        info="distil down to this many steps",
                        **ids("student"),
                    )
                ]
            extra = gr.Textbox(
                label="Extra trainer flags",
                placeholder="--lr 1e-4 --ema-decay 0.999",
                info=f"passed to python -m {spec.module}",
                **ids("flags"),
            )
            with gr.Row():
                start = gr.Button("Start", variant="primary", **ids("start"))
                stop = gr.Button("Stop", variant="stop", **ids("stop"))
                resume = gr.Button("Resume", **ids("resume"))
        with gr.Column():
            bar = gr.HTML(progress_html(JobStatus("", "", 0, 0)))
            status = gr.Markdown("No run yet.", **ids("status"))
            plot = gr.LinePlot(
                loss_frame(JobStatus("", "", 0, 0)), x="step", y="loss", title="Loss", height=220
            )
            sample = gr.Image(label="Newest sample", interactive=False, height=220)
            log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True)
    timer = gr.Timer(1.0, active=False)

    def view(job_name: str):
        st = jobs.status(job_name.strip()) if job_name and job_name.strip() else JobStatus("", "", 0, 0)
        live = st.state in ("running", "stopping")
        text = f"**{st.state}**: {st.message}" if st.name else "No run yet."
        lists = [
            gr.Dropdown(choices=registry.choices()) if st.state == "finished" else gr.skip()
            for _ in model_lists
        ]
        return (
            progress_html(st),
            text,
            loss_frame(st),
            st.sample,
            st.log_tail,
            gr.Timer(active=live),
            *lists,
        )

    outputs = [bar, status, plot, sample, log, timer, *model_lists]

    @readable_errors
    def on_start(job_name, base_model, folder, files, cap, max_steps, batch_size, ckpt_every, *rest):
        job_name = check_run_name(job_name)
        max_steps = int(_whole("max steps", max_steps))
        base_dir = registry.resolve(base_model)  # refuses paths outside the models folder
        if is_lora_folder(base_dir):
            raise ValueError(f"{base_model} holds LoRA weights, not a full model: choose a full model")
        argv = ["--model", str(base_dir), "--batch-size", _whole("batch size", batch_size),
                "--checkpoint-every", _whole("checkpoint every", ckpt_every), "--no-progress",
                "--log-every", str(max(1, max_steps // 200))]
        if folder and folder.strip():
            path = Path(folder.strip()).expanduser()
            if not path.is_dir():
                raise ValueError(f"the image folder {folder!r} does not exist on the server")
            argv += ["--data", str(path.resolve())]
        elif files:
            argv += ["--data", str(stage_uploads(files, cap, jobs.models_dir / ".uploads" / job_name))]
        else:
            raise ValueError("give an image folder on the server, or upload images")
        if finetune:
            method, sample_prompt, flags = rest
            argv += ["--lora-rank", "8" if method == "LoRA" else "0"]
            if sample_prompt and sample_prompt.strip():
                every_n = _whole("every", ckpt_every)
                argv += ["--val-prompt", sample_prompt.strip(), "--validate-every", every_n]
        else:
            student_steps, flags = rest
            argv += ["--min-steps", str(int(student_steps))]
        argv += _extra_flags(flags)
        jobs.start(spec.module, job_name, max_steps, argv)
        return view(job_name)

    inputs = [name, base, data_dir, uploads, caption, steps, batch, every]
    inputs += [*own, extra]
    start.click(on_start, inputs, outputs, concurrency_id="jobs", **PRIVATE)
    stop.click(
        readable_errors(lambda n: (jobs.stop(check_run_name(n)), view(n))[1]),
        name,
        outputs,
        concurrency_id="jobs",
        **PRIVATE,
    )
    resume.click(
        readable_errors(lambda n: (jobs.resume(check_run_name(n)), view(n))[1]),
        name,
        outputs,
        concurrency_id="jobs",
        **PRIVATE,
    )
    name.blur(view, name, outputs, queue=False, **PRIVATE)
    timer.tick(view, name, outputs, queue=False, **PRIVATE)


def _whole(label: str, value) -> str:
    try:
        ok = value is not None and float(value) >= 1 and float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{label} must be a whole number >= 1, got {value!r}")
    return str(int(value))


def _extra_flags(text: str | None) -> list[str]:
    try:
        flags = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"could not read the extra flags ({e}): check the quotes") from None
    for f in flags:
        if f.split("=", 1)[0] in RESERVED_FLAGS:
            raise ValueError(f"{f} is set by the app; remove it from the extra flags")
    return flags
