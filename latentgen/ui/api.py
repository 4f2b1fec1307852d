"""The public API: ``/generate``, ``/edit``, ``/models`` and ``/png_params`` (the README's "Over HTTP").

Each endpoint takes named parameters and returns when the images are ready, e.g.
``Client(url).predict(prompt="a red circle", seed=1, api_name="/generate")`` gives
``(images, seed_used)``. The inputs are hidden components with no range checks of their
own, so every bad value is answered by ``check_request`` with a message naming the
parameter and the fix. Generation shares the ``gpu`` concurrency group with the page.
"""

from __future__ import annotations

import gradio as gr

from latentgen.ui.errors import input_image, readable_errors
from latentgen.ui.generation import Generator, check_edit_request, check_request
from latentgen.ui.registry import ModelRegistry


def api_inputs(d: dict, model: str | None) -> list:
    """Hidden inputs of the API endpoints: no range checks of their own, so ``check_request``
    answers every bad value with a message naming the parameter. Order: prompt,
    negative_prompt, steps, guidance, seed, width, height, sampler, model, batch_size."""
    hide = {"visible": False}
    return [
        gr.Textbox(None, label="Prompt", **hide),
        gr.Textbox("", label="Negative prompt", **hide),
        gr.Number(d["steps"], label="Steps", **hide),
        gr.Number(d["guidance"], label="Guidance", **hide),
        gr.Number(-1, label="Seed (-1: random)", **hide),
        gr.Number(d["width"], label="Width", **hide),
        gr.Number(d["height"], label="Height", **hide),
        gr.Textbox(d["sampler"], label="Sampler", **hide),
        gr.Textbox(model or "", label="Model", **hide),
        gr.Number(1, label="Batch size", **hide),
    ]


def build_api(registry: ModelRegistry, gen: Generator, d: dict, default: str | None):
    """Register the endpoints; ``d`` holds the default model's settings (the parameters' defaults)."""

    @readable_errors
    def api_generate(prompt, negative_prompt, steps, guidance, seed, width, height, sampler, model,
                     batch_size):
        """Text to image; seed -1 picks a random seed. Returns the PNGs (settings inside), the seed used."""
        req = check_request(prompt, negative_prompt, model, sampler, steps, guidance, seed, width, height,
                            batch_size)
        res = gen.run(req)
        return res.paths, res.seed

    @readable_errors
    def api_edit(image, prompt, negative_prompt, strength, steps, guidance, seed, sampler, model):
        """Image to image (SDEdit) at the model's size: returns the PNGs and the seed used."""
        req = check_edit_request(image, prompt, negative_prompt, strength, steps, guidance, seed, sampler,
                                 model)
        res = gen.run(req)
        return res.paths, res.seed

    def results():
        return [gr.Gallery(visible=False, format="png", label="Images"),
                gr.Number(visible=False, precision=0, label="Seed used")]

    prompt, negative, steps, guidance, seed, width, height, sampler, model, batch = api_inputs(d, default)
    gen_inputs = [prompt, negative, steps, guidance, seed, width, height, sampler, model, batch]
    gr.Button(visible=False).click(api_generate, gen_inputs, results(), api_name="generate",
                                   concurrency_id="gpu")
    image = input_image(visible=False, type="filepath", label="Image")
    strength = gr.Number(0.6, visible=False, label="Strength")
    gr.Button(visible=False).click(
        api_edit, [image, prompt, negative, strength, steps, guidance, seed, sampler, model], results(),
        api_name="edit", concurrency_id="gpu")

    def api_models() -> list[str]:
        """The model names the app offers (bundled, --model, and the models folder)."""
        return registry.choices()

    gr.api(api_models, api_name="models", queue=False)

    @readable_errors
    def api_png_params(path):
        """The generation settings stored in a PNG made by latentgen ({} if none)."""
        from latentgen.pngmeta import read_png_params

        return read_png_params(path)

    png = gr.File(visible=False, type="filepath", label="PNG")
    gr.Button(visible=False).click(api_png_params, png, gr.JSON(visible=False, label="Settings"),
                                   api_name="png_params", queue=False)
