"""The Generate and Edit tabs: controls, a streaming gallery, cancel, and settings read from PNGs.

Every event here is private: not in the API page and not callable through ``gradio_client``,
though any HTTP client that loads the page can still call it, so the handlers check every
value (``check_request``). The public API is in ``latentgen.ui.api``. Generation events share the ``gpu`` concurrency group, so
``--concurrency`` bounds the page and the API together.
"""

from __future__ import annotations

import logging

import gradio as gr

from latentgen.diffusion import SAMPLERS
from latentgen.examples import EXAMPLE_PROMPTS
from latentgen.ui.errors import input_image, readable_errors
from latentgen.ui.generation import (
    AUTO_SAMPLER,
    MAX_BATCH,
    MAX_GUIDANCE,
    MAX_SIDE,
    MAX_STEPS,
    Generator,
    check_edit_request,
    check_request,
)
from latentgen.ui.limits import PRIVATE
from latentgen.ui.registry import ModelRegistry
from latentgen.ui.streaming import Sessions, canceller, status_html, stream

log = logging.getLogger("latentgen.ui")
SAMPLER_CHOICES = [AUTO_SAMPLER, *SAMPLERS]
FALLBACK = {"sampler": AUTO_SAMPLER, "steps": 25, "guidance": 5.0, "height": 64, "width": 64, "factor": 8}


def model_defaults(registry: ModelRegistry, choice: str | None) -> dict:
    """Control values for ``choice``; the fallback when no model is installed or it cannot load."""
    if not choice:
        return dict(FALLBACK)
    try:
        return registry.defaults(choice)
    except Exception as e:  # the banner says so on the page; the app must still start
        log.warning("could not load %s: %s", choice, e)
        return dict(FALLBACK)


def build_generate_tab(registry: ModelRegistry, gen: Generator, sessions: Sessions, d: dict):
    """The Generate tab; ``d``: the default model's settings (``model_defaults``)."""
    default = registry.default_choice()
    with gr.Row():
        with gr.Column(scale=2):
            c = _generate_controls(registry, default, d)
        with gr.Column(scale=3):
            status = gr.HTML(status_html("Ready." if default else ""))
            gallery = gr.Gallery(label="Images", format="png", columns=4, height="auto", elem_id="gallery",
                                 buttons=["download", "fullscreen"])
            seed_used = gr.Textbox(label="Seed used", interactive=False)
            files = gr.File(label="Download PNGs (settings embedded)", file_count="multiple", interactive=False)
    ui_inputs = [c[k] for k in ("prompt", "negative", "model", "sampler", "steps", "guidance", "seed", "width",
                                "height", "batch")]
    _wire_generate(gen, sessions, c, ui_inputs, [gallery, seed_used, files, status])
    c["dice"].click(lambda: -1, None, c["seed"], queue=False, **PRIVATE)
    c["reuse"].click(lambda s: int(s) if s and s.isdigit() else -1, seed_used, c["seed"], queue=False, **PRIVATE)
    _wire_model(registry, c, status)
    c["png"].upload(_read_png, c["png"], [*ui_inputs, status], queue=False, **on_status(status))
    return {"model": c["model"], "status": status, "prompt": c["prompt"], "gallery": gallery}


def on_status(status) -> dict:
    """Progress shown on the status line, not over the controls; the event kept private."""
    return {"show_progress_on": status, "show_progress": "minimal", **PRIVATE}


def _generate_controls(registry: ModelRegistry, default: str | None, d: dict) -> dict:
    """The Generate tab's controls (prompt, example prompts, model, sampling, size, a PNG to read), by name."""
    f, c = d["factor"], {}
    c["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle left of a blue square",
                             elem_id="prompt")
    c["negative"] = gr.Textbox("", label="Negative prompt", lines=1, placeholder="what to steer away from")
    with gr.Row():
        c["go"] = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
        c["stop"] = gr.Button("Cancel", variant="stop", scale=1)
    gr.Examples([[p] for p in EXAMPLE_PROMPTS], [c["prompt"]], label="Example prompts the bundled model draws (click one)",
                examples_per_page=len(EXAMPLE_PROMPTS), api_visibility="private")
    with gr.Row():
        c["model"] = gr.Dropdown(registry.choices(), value=default, label="Model", allow_custom_value=True,
                                 info="a name from the list, or a folder inside the models folder", scale=4,
                                 elem_id="model")
        c["refresh"] = gr.Button("↻", scale=0, min_width=40, elem_id="refresh")
        c["fast"] = gr.Button("Fast (4-step student)", scale=2)
    with gr.Row():
        c["sampler"] = gr.Dropdown(SAMPLER_CHOICES, value=d["sampler"], label="Sampler",
                                   info="auto: the model's own")
        c["steps"] = gr.Slider(1, MAX_STEPS, value=d["steps"], step=1, label="Steps", elem_id="steps")
    c["guidance"] = gr.Slider(0, MAX_GUIDANCE, value=d["guidance"], step=0.5, label="Guidance",
                              info="1 or less turns classifier-free guidance off")
    with gr.Row():
        c["seed"] = gr.Number(value=-1, precision=0, label="Seed", info="-1: a new random seed each time", scale=3)
        c["dice"] = gr.Button("Random", scale=0, min_width=80)
        c["reuse"] = gr.Button("Reuse last", scale=0, min_width=80)
    with gr.Row():
        c["width"] = gr.Slider(f, MAX_SIDE, value=d["width"], step=f, label="Width")
        c["height"] = gr.Slider(f, MAX_SIDE, value=d["height"], step=f, label="Height")
    c["batch"] = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size")
    c["png"] = gr.File(label="Read settings from a PNG", file_types=[".png"], type="filepath", height=80)
    return c


def _wire_generate(gen: Generator, sessions: Sessions, c: dict, ui_inputs: list, outputs: list):
    """Generate (button or Enter in the prompt) streams into ``outputs``; Cancel stops it."""

    @readable_errors
    def generate_ui(prompt, negative_prompt, model, sampler, steps, guidance, seed, width, height, batch_size,
                    request: gr.Request):
        req = check_request(prompt, negative_prompt, model, sampler, steps, guidance, seed, width, height,
                            batch_size)
        yield from stream(gen, sessions, req, request)

    status = outputs[-1]
    events = [trigger(generate_ui, ui_inputs, outputs, concurrency_id="gpu", **on_status(status))
              for trigger in (c["go"].click, c["prompt"].submit)]
    c["stop"].click(canceller(sessions), None, status, cancels=events, queue=False, **PRIVATE)


def _wire_model(registry: ModelRegistry, c: dict, status):
    """Choosing a model (or its 4-step student) loads it and sets the controls to its card's settings."""
    c["refresh"].click(lambda v: gr.Dropdown(choices=registry.choices(), value=v), c["model"], c["model"],
                       queue=False, **PRIVATE)

    @readable_errors
    def on_model(choice):
        dd = registry.defaults(choice)  # loads (cached): errors reach the page
        fct = dd["factor"]
        return (gr.Dropdown(value=dd["sampler"]), dd["steps"], dd["guidance"],
                gr.Slider(minimum=fct, step=fct, value=dd["width"]),
                gr.Slider(minimum=fct, step=fct, value=dd["height"]), status_html(f"Model {choice} ready."))

    model_controls = [c[k] for k in ("sampler", "steps", "guidance", "width", "height")] + [status]
    c["model"].input(on_model, c["model"], model_controls, concurrency_id="load", **on_status(status))

    @readable_errors
    def on_fast(choice):
        student = registry.student_of(choice)
        if student is None:
            gr.Warning("no 4-step student is installed; using the current model at 4 steps")
            return (*(gr.skip(),) * 2, 4, *(gr.skip(),) * 3, status_html("4 steps, same model."))
        return (student, *on_model(student))

    c["fast"].click(on_fast, c["model"], [c["model"], *model_controls], concurrency_id="load", **on_status(status))


@readable_errors
def _read_png(path):
    """The settings a latentgen PNG holds, into the Generate controls (batch size 1)."""
    from latentgen.pngmeta import read_png_params

    if not path:
        return (gr.skip(),) * 11
    try:
        p = read_png_params(path)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"could not read that PNG ({e}); drop a PNG made by latentgen") from None
    if not p:
        raise ValueError("that PNG has no latentgen settings in it (no 'parameters' chunk)")
    keys = ("prompt", "negative_prompt", "model", "sampler", "steps", "guidance", "seed", "width", "height")
    return (*(p[k] if k in p else gr.skip() for k in keys), 1,
            status_html(f"Settings read from the PNG (seed {p.get('seed')}); press Generate to make it again."))


def build_edit_tab(registry: ModelRegistry, gen: Generator, sessions: Sessions, d: dict):
    """The Edit tab (image to image); ``d``: the default model's settings."""
    default = registry.default_choice()
    with gr.Row():
        with gr.Column(scale=2):
            image = input_image(label="Image", type="filepath", sources=["upload", "clipboard"], height=256)
            prompt = gr.Textbox(label="Prompt", lines=2)
            negative = gr.Textbox("", label="Negative prompt")
            strength = gr.Slider(
                0, 1, value=0.6, step=0.05, label="Strength", info="0 keeps the image, 1 ignores it"
            )
            with gr.Row():
                go = gr.Button("Edit", variant="primary", scale=3)
                stop = gr.Button("Cancel", variant="stop", scale=1)
            with gr.Row():
                model = gr.Dropdown(registry.choices(), value=default, label="Model", allow_custom_value=True)
                sampler = gr.Dropdown(SAMPLER_CHOICES, value=d["sampler"], label="Sampler")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=d["steps"], step=1, label="Steps")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=d["guidance"], step=0.5, label="Guidance")
            seed = gr.Number(value=-1, precision=0, label="Seed", info="-1: random")
        with gr.Column(scale=3):
            status = gr.HTML(status_html(""))
            gallery = gr.Gallery(label="Result", format="png", columns=2, height="auto")
            seed_used = gr.Textbox(label="Seed used", interactive=False)
            files = gr.File(label="Download PNGs", file_count="multiple", interactive=False)

    @readable_errors
    def edit_ui(
        image, prompt, negative_prompt, strength, steps, guidance, seed, sampler, model, request: gr.Request
    ):
        req = check_edit_request(image, prompt, negative_prompt, strength, steps, guidance, seed, sampler,
                                 model)
        yield from stream(gen, sessions, req, request)

    inputs = [image, prompt, negative, strength, steps, guidance, seed, sampler, model]
    event = go.click(
        edit_ui,
        inputs,
        [gallery, seed_used, files, status],
        concurrency_id="gpu",
        show_progress_on=status,
        show_progress="minimal",
        **PRIVATE,
    )
    stop.click(canceller(sessions), None, status, cancels=[event], queue=False, **PRIVATE)

    return {"model": model}
