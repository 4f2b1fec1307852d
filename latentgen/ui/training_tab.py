"""The Fine-tune and Distill tabs: start a background training run, watch it, stop and resume it.

Each tab builds the flags of an installed trainer (``latentgen.train.finetune`` /
``latentgen.train.distill``, the loop's flags of ``latentgen.train.config``) and hands them to
the :class:`JobManager`, which runs the trainer as a background process. A timer
polls the run folder once a second while a run is going: progress bar, loss curve, the
newest sample image and the end of the log. The finished model is written to
``<models>/<name>/`` and shows up in the model lists (press ↻ on the Generate tab; the
training tabs read their list again each time it is opened).

The events are private (hidden from the API docs and ``gradio_client``) but, like every
Gradio event, callable over HTTP by anyone who can load the page; so ``start_run`` checks
every value itself: the caps of ``latentgen.ui.limits``, an image folder inside the data
root, the upload caps, and the extra flags against the trainer's allow-list (``flags``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from latentgen.limits import check_prompt
from latentgen.ui.errors import readable_errors
from latentgen.ui.flags import parse_extra_flags
from latentgen.ui.jobs import JobManager, JobStatus, check_run_name
from latentgen.ui.limits import (
    MAX_JOB_STEPS,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_FILES,
    PRIVATE,
    check_job_settings,
    check_uploads,
    data_folder,
    whole,
)
from latentgen.ui.registry import ModelRegistry, is_lora_folder
from latentgen.ui.uploads import stage_uploads


@dataclass(frozen=True)
class TabLimits:
    """Where server-side image folders may be (``--data-dir``) and how much may be uploaded per run."""

    data_root: Path
    max_upload_files: int = MAX_UPLOAD_FILES
    max_upload_bytes: int = MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class TrainerSpec:
    module: str
    title: str
    model_label: str
    default_steps: int
    steps_label: str
    intro: str

    @property
    def key(self) -> str:
        """The trainer's name (``finetune``): ``latentgen train <key>``, and the page's element ids."""
        return self.module.rsplit(".", 1)[-1]


FINETUNE = TrainerSpec(
    "latentgen.train.finetune",
    "Fine-tune",
    "Base model",
    700,  # the trainer's own default (latentgen.train.finetune.FinetuneConfig.max_steps)
    "Max steps",
    "Teach a model your own images. LoRA (the default) trains adapters of rank 32 on the UNet's attention "
    "and convolutions: it learns new colours and shapes and keeps more of what the model drew; Full trains "
    "the whole UNet. The result appears in the model list as the name you give.",
)
DISTILL = TrainerSpec(
    "latentgen.train.distill",
    "Distill",
    "Teacher model",
    1000,
    "Steps per stage",
    "Guided, then progressive distillation: a student that samples in a few steps. Give the teacher's "
    "training images; with no folder and no upload the run draws the bundled model's kinds of image itself "
    "(2000 shapes scenes and the OpenMoji emoji). Each halving is a model folder: `<name>/round-8`, ..., "
    "and `<name>/final`.",
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


def build_training_tab(spec: TrainerSpec, registry: ModelRegistry, jobs: JobManager, model_lists=(),
                       limits: TabLimits | None = None):
    """The tab for ``spec``; ``model_lists`` (other tabs' model dropdowns) learn of a finished model."""
    limits = limits or TabLimits(Path("data").absolute())
    gr.Markdown(f"### {spec.title}\n{spec.intro}")
    if not jobs.available(spec.module):
        gr.Markdown(
            f"**{spec.title} is not available in this version**: the trainer `{spec.module}` is not installed."
        )
        return
    with gr.Row():
        with gr.Column():
            inputs, buttons = _settings(spec, registry, limits)
        with gr.Column():
            shown = _progress_view(spec)
    timer = gr.Timer(1.0, active=False)
    _wire(spec, registry, jobs, limits, inputs, buttons, [*shown, timer], model_lists)


def _ids(spec: TrainerSpec, part: str) -> dict:
    return {"elem_id": f"{spec.key}-{part}"}  # finetune-name, distill-steps, ...


def _settings(spec: TrainerSpec, registry: ModelRegistry, limits: TabLimits) -> tuple[list, dict]:
    """The run's controls, in ``start_run``'s order, and the Start / Stop / Resume buttons."""
    name = gr.Textbox(label="New model name", placeholder="my-model", **_ids(spec, "name"),
                      info=f"the result is saved as {registry.models_dir.name}/<name> in the models folder")
    base = gr.Dropdown(registry.choices(), value=registry.default_choice(), label=spec.model_label,
                       allow_custom_value=True, **_ids(spec, "model"))
    data_dir = gr.Textbox(label="Image folder on the server", **_ids(spec, "data"),
                          info=f"a folder in the data folder {limits.data_root.name}/ (--data-dir): images with "
                          ".txt captions, or a metadata.jsonl / captions.csv")
    uploads = gr.File(label="...or upload images (+ same-name .txt captions)", file_count="multiple")
    caption = gr.Textbox(label="Caption for uploaded images without one")
    with gr.Row():
        steps = gr.Number(spec.default_steps, precision=0, label=spec.steps_label, minimum=1,
                          info=f"at most {MAX_JOB_STEPS:,}", **_ids(spec, "steps"))
        batch = gr.Number(8, precision=0, label="Batch size", minimum=1, **_ids(spec, "batch"))
        every = gr.Number(100, precision=0, label="Checkpoint + sample every", minimum=1, **_ids(spec, "every"))
    if spec.key == "finetune":
        own = [gr.Radio(["LoRA", "Full"], value="LoRA", label="Method", **_ids(spec, "method")),
               gr.Textbox(label="Sample prompt (rendered at each sample step)", **_ids(spec, "prompt"))]
    else:
        start = gr.Dropdown([TRAIN_ONE, *registry.choices()], value=TRAIN_ONE, label="Start from a student",
                            info="for a fine-tune: its base's student moved by what the fine-tune changed "
                            "(seconds; best with no images: refining on a fine-tune's few images, for the "
                            "steps above, costs prompts the model knew); or train a student",
                            **_ids(spec, "from"))
        start.focus(lambda: gr.Dropdown(choices=[TRAIN_ONE, *registry.choices()]), None, start, queue=False,
                    api_name=f"{spec.key}_students", **PRIVATE)
        own = [gr.Radio([4, 2, 1], value=4, label="Student steps", info="distil down to this many steps",
                        **_ids(spec, "student")), start]
    extra = gr.Textbox(label="Extra trainer flags", placeholder="--lr 1e-4 --ema-decay 0.999",
                       info=f"added to latentgen train {spec.key}'s flags", **_ids(spec, "flags"))
    with gr.Row():
        buttons = {"start": gr.Button("Start", variant="primary", **_ids(spec, "start")),
                   "stop": gr.Button("Stop", variant="stop", **_ids(spec, "stop")),
                   "resume": gr.Button("Resume", **_ids(spec, "resume"))}
    return [name, base, data_dir, uploads, caption, steps, batch, every, *own, extra], buttons


def _progress_view(spec: TrainerSpec) -> list:
    """Progress bar, status line, loss curve, newest sample and log tail (``_view``'s outputs, in order)."""
    idle = JobStatus("", "", 0, 0)
    return [
        gr.HTML(progress_html(idle), **_ids(spec, "progress")),
        gr.Markdown("No run yet.", **_ids(spec, "status")),
        gr.LinePlot(loss_frame(idle), x="step", y="loss", title="Loss", height=220),
        gr.Image(label="Newest sample", interactive=False, height=220, **_ids(spec, "sample")),
        gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True, **_ids(spec, "log")),
    ]


def _view(jobs: JobManager, registry: ModelRegistry, model_lists):
    """The handler that shows a run's state (and refreshes ``model_lists`` once it has finished)."""

    def view(job_name: str):
        job_name = job_name.strip() if isinstance(job_name, str) else ""
        st = jobs.status(job_name) if job_name else JobStatus("", "", 0, 0)
        live = st.state in ("running", "stopping")
        text = f"**{st.state}**: {st.message}" if st.name else "No run yet."
        lists = [gr.Dropdown(choices=registry.choices()) if st.state == "finished" else gr.skip()
                 for _ in model_lists]
        return (progress_html(st), text, loss_frame(st), st.sample, st.log_tail, gr.Timer(active=live), *lists)

    return view


def _wire(spec: TrainerSpec, registry: ModelRegistry, jobs: JobManager, limits: TabLimits, inputs: list,
          buttons: dict, shown: list, model_lists):
    """The tab's events: Start, Stop, Resume, the status on leaving the name box and on each tick, and
    the model list read again on opening it (a run of the other tab may have added a model)."""
    view = _view(jobs, registry, model_lists)
    outputs = [*shown, *model_lists]
    name, base, timer, key = inputs[0], inputs[1], shown[-1], spec.key

    @readable_errors
    def on_start(*values):
        start_run(spec, registry, jobs, limits, *values)
        return view(values[0].strip())

    buttons["start"].click(on_start, inputs, outputs, concurrency_id="jobs", api_name=f"{key}_start", **PRIVATE)
    for verb, action in (("stop", jobs.stop), ("resume", jobs.resume)):
        buttons[verb].click(_then(action, view), name, outputs, concurrency_id="jobs", api_name=f"{key}_{verb}",
                            **PRIVATE)
    name.blur(view, name, outputs, queue=False, api_name=f"{key}_status", **PRIVATE)
    timer.tick(view, name, outputs, queue=False, api_name=f"{key}_poll", **PRIVATE)
    base.focus(lambda: gr.Dropdown(choices=registry.choices()), None, base, queue=False,
               api_name=f"{key}_models", **PRIVATE)


def _then(action, view):
    """The Stop / Resume handler: ``action(name)``, then the run's status."""

    @readable_errors
    def handler(name):
        action(check_run_name(name))
        return view(name)

    return handler


DRAWN_SCENES = 2000  # shapes scenes a Distill run without a folder draws (beside every OpenMoji emoji)
TRAIN_ONE = "none: train a student"  # the Distill tab's "Start from a student" when there is none


def start_run(spec: TrainerSpec, registry: ModelRegistry, jobs: JobManager, limits: TabLimits, job_name, base_model,
              folder, files, caption, max_steps, batch_size, ckpt_every, *rest):
    """Check every value the Start button sent (the server's caps, whatever the page allowed) and start."""
    job_name = check_run_name(job_name)
    max_steps, batch_size, ckpt_every = check_job_settings(max_steps, batch_size, ckpt_every)
    base_dir = registry.resolve(base_model)  # refuses paths outside the models folder
    if is_lora_folder(base_dir) and spec.key != "distill":  # the distiller merges a LoRA into its base
        raise ValueError(f"{base_model} holds LoRA weights, not a full model: choose a full model")
    argv = [f"--model={base_dir}", f"--batch-size={batch_size}", f"--checkpoint-every={ckpt_every}",
            "--no-progress", f"--log-every={max(1, max_steps // 200)}", *trainer_flags(spec, ckpt_every, rest)]
    jobs.check_new(spec.module, job_name)  # before anything is staged
    staged = None
    student = rest[1] if spec.key == "distill" and rest[1] not in (None, "", TRAIN_ONE) else None
    if student:  # the student moved by the fine-tune (latentgen.train.distill_transfer); refined on images given
        argv.append(f"--from-student={registry.resolve(student)}")
        if (folder and folder.strip()) or files:
            argv.append(f"--refine-steps={max_steps}")
    if folder and folder.strip():
        argv.insert(0, f"--data={data_folder(folder, limits.data_root)}")
    elif files:
        uploads = check_uploads(files, limits.max_upload_files, limits.max_upload_bytes)
        staged = stage_uploads(uploads, caption, jobs.uploads_dir(job_name))
        argv.insert(0, f"--data={staged}")
    elif spec.key == "distill" and not student:  # the bundled model's own kinds of image, drawn by the trainer
        argv.insert(0, f"--draw-data={DRAWN_SCENES}")
    elif not student:
        raise ValueError("give an image folder on the server, or upload images")
    try:
        return jobs.start(spec.module, job_name, max_steps, argv)
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise


def trainer_flags(spec: TrainerSpec, ckpt_every: int, rest) -> list[str]:
    """The trainer's own controls (method, sample prompt / student steps) and the extra flags."""
    if spec.key == "finetune":
        method, sample_prompt, flags = rest
        argv = [] if method == "LoRA" else ["--lora-rank=0"]  # LoRA: the trainer's rank, lr and targets
        sample_prompt = check_prompt(sample_prompt, "sample prompt").strip()
        if sample_prompt:
            argv += [f"--val-prompt={sample_prompt}", f"--validate-every={ckpt_every}"]
    else:
        student_steps, _from_student, flags = rest  # the student to start from: start_run resolves it
        student_steps = whole("student steps", student_steps, 1, 4)
        if student_steps not in (1, 2, 4):
            raise ValueError(f"student steps must be 4, 2 or 1, got {student_steps}")
        argv = [f"--min-steps={student_steps}"]
    return argv + parse_extra_flags(flags, spec.module)

