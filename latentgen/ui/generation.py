"""One generation request, from raw control values to PNG files with their settings inside.

``check_request`` turns what the page or the API sent into a :class:`Request`, raising a
``ValueError`` that names the control and the fix for anything out of range;
``Generator.run`` loads the model (cached), checks the size against its VAE factor, runs
the pipeline with a step callback for progress, previews and cancelling, and writes each
image as a PNG whose ``parameters`` chunk reproduces it (one seed per image: seed + i; A1111's
form, the sampler by its name even when the model's own was used). A prompt with words the
model never learned is still drawn; ``Result.warning`` names those words.

Bounds, whatever the client sends: prompts of at most ``MAX_PROMPT_CHARS`` (checked before
anything touches the tokenizer); sides of at most ``MAX_SIDE_FACTOR`` x the model's native
side; a compute budget, ``steps x batch x (width x height) / native area`` at most
``max_cost`` (in native-image-steps); and a timeout, after which the request's cancel flag
is set and it ends with an error (API requests cannot be cancelled by their clients).
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from latentgen.diffusion import SAMPLERS
from latentgen.limits import check_prompt

AUTO_SAMPLER = "auto"  # the model's own (saved) scheduler
MAX_STEPS = 150
MAX_BATCH = 8
MAX_SIDE = 1024
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1
MAX_UPLOAD_PIXELS = 40_000_000
MAX_SIDE_FACTOR = 8  # a side at most 8 x the model's native side
MAX_COST = 400  # native-image-steps per request: e.g. 50 steps x batch 2 at 4 x the native area
REQUEST_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str
    model: str
    sampler: str  # AUTO_SAMPLER or one of SAMPLERS
    steps: int
    guidance: float
    seed: int  # resolved: never -1
    width: int | None  # None: the model's native size
    height: int | None
    batch_size: int = 1
    strength: float | None = None  # image-to-image only
    image: Image.Image | None = field(default=None, compare=False, repr=False)

    def params(self, index: int = 0) -> dict:
        """What goes into image ``index``'s PNG: enough to make that one image again."""
        p = {k: v for k, v in asdict(self).items() if k not in ("image", "batch_size", "strength")}
        p.update(
            seed=self.seed + index, batch_size=1, mode="img2img" if self.image is not None else "txt2img"
        )
        if self.image is not None:
            p["strength"] = self.strength
        return p


@dataclass
class Result:
    paths: list[str]
    seed: int
    interrupted: bool
    steps_done: int
    seconds: float
    warning: str = ""  # e.g. the prompt's words the model never learned; "" when none


EXAMPLES_HINT = "the example prompts under the prompt box"


def unknown_words_warning(pipe, prompt: str) -> str:
    """A line naming the words of ``prompt`` that ``pipe``'s model never learned; "" when there are none."""
    from latentgen.prompts import unknown_words, unknown_words_message

    if not (words := unknown_words(pipe.tokenizer, prompt)):
        return ""
    text = unknown_words_message(words, EXAMPLES_HINT)
    return f"{text[0].upper()}{text[1:]}."


def png_sampler(req: Request, pipe) -> str:
    """The sampler a PNG records: the request's, or for ``auto`` the name of the model's own scheduler
    (``auto`` still, when that scheduler is none of ``SAMPLERS``)."""
    from latentgen.diffusion import sampler_name

    name = req.sampler if req.sampler != AUTO_SAMPLER else sampler_name(pipe.scheduler)
    return name if name in SAMPLERS else AUTO_SAMPLER


def _int(name: str, value, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}") from None
    if not math.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    return int(f)


def _float(name: str, value, lo: float, hi: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}")
    return f


def resolve_seed(seed) -> int:
    """The seed to use: ``seed``, or a fresh random one for -1, None or empty."""
    if seed is None or seed == "" or (isinstance(seed, (int, float)) and seed == -1):
        return secrets.randbelow(MAX_SEED + 1)
    return _int("seed", seed, 0, MAX_SEED)


def open_image(path_or_image) -> Image.Image:
    """An uploaded image as RGB, or a ValueError saying why it cannot be used."""
    if isinstance(path_or_image, Image.Image):
        return path_or_image
    if not path_or_image:
        raise ValueError("no input image: upload one (PNG, JPEG or WebP) in the Image box")
    name = Path(str(path_or_image)).name
    try:
        with Image.open(path_or_image) as img:
            if img.width * img.height > MAX_UPLOAD_PIXELS:
                raise ValueError(
                    f"the image {name} is {img.width} x {img.height}: more than "
                    f"{MAX_UPLOAD_PIXELS // 1_000_000} MP; scale it down first"
                )
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"could not read the image {name} ({type(e).__name__}); upload a valid PNG, JPEG or WebP file"
        ) from None


def check_request(prompt, negative_prompt, model, sampler, steps, guidance, seed, width, height, batch_size=1,
                  image=None, strength=None) -> Request:
    """Validate raw control values (anything the page or the API may send); None sizes: native."""
    prompt = check_prompt(prompt, "prompt")  # first: a huge prompt never reaches the tokenizer
    negative_prompt = check_prompt(negative_prompt, "negative prompt")
    sampler = (sampler or AUTO_SAMPLER).strip()
    if sampler not in (AUTO_SAMPLER, *SAMPLERS):
        raise ValueError(f"unknown sampler {sampler!r}: choose {AUTO_SAMPLER} (the model's own) or one of "
                         f"{', '.join(SAMPLERS)}")
    width, height = (None if v in (None, "", 0) else _int(n, v, 8, MAX_SIDE)
                     for n, v in (("width", width), ("height", height)))
    return Request(
        prompt=prompt, negative_prompt=negative_prompt or "",
        model=model.strip() if isinstance(model, str) else "", sampler=sampler,
        steps=_int("steps", steps, 1, MAX_STEPS), guidance=_float("guidance", guidance, 0.0, MAX_GUIDANCE),
        seed=resolve_seed(seed), width=width, height=height,
        batch_size=_int("batch size", batch_size, 1, MAX_BATCH),
        strength=None if image is None else _float("strength", 0.8 if strength is None else strength, 0., 1.),
        image=None if image is None else open_image(image),
    )


def check_edit_request(image, prompt, negative_prompt, strength, steps, guidance, seed, sampler,
                       model) -> Request:
    """An image-to-image request; the result has the model's native size (the input is resized)."""
    if not image:
        raise ValueError("no input image: upload one (PNG, JPEG or WebP) in the Image box")
    return check_request(prompt, negative_prompt, model, sampler, steps, guidance, seed, None, None, 1,
                         image=open_image(image), strength=strength)


def request_cost(steps: int, batch: int, width: int, height: int, native_w: int, native_h: int) -> float:
    """Native-image-steps: the work of one step on one image at the model's native size is 1."""
    return steps * batch * (width * height) / (native_w * native_h)


def check_budget(steps: int, batch: int, width: int, height: int, native: tuple[int, int], max_cost: float):
    """A ValueError that says what to lower when a request is above the sides' cap or the budget."""
    nh, nw = native
    for name, side, limit in (("width", width, nw * MAX_SIDE_FACTOR), ("height", height, nh * MAX_SIDE_FACTOR)):
        if side > limit:
            raise ValueError(f"{name} {side} is more than {MAX_SIDE_FACTOR} x this model's native {nw} x {nh}: "
                             f"use at most {limit}")
    cost = request_cost(steps, batch, width, height, nw, nh)
    if cost > max_cost:
        fit = int(max_cost // (batch * width * height / (nw * nh)))
        hint = f" (at this size and batch, at most {fit} steps)" if fit >= 1 else ""
        raise ValueError(
            f"this request is too large for the server: {steps} steps x batch {batch} at {width} x {height} is "
            f"{cost:,.0f} image-steps at the model's native {nw} x {nh}, and at most {max_cost:,.0f} are allowed: "
            f"lower the steps, the batch size or the width/height{hint}"
        )


class Cancelled(Exception):
    """The request was cancelled before it finished."""


class TimedOut(ValueError):
    """The request ran past the server's timeout (a ValueError: the page shows it as it is)."""


class Generator:
    """Runs requests against the registry's cached pipelines; writes PNGs under ``out_dir``."""

    def __init__(self, registry, out_dir: str | None = None, preview_every_s: float = 0.5,
                 keep_s: float = 3600.0, max_cost: float = MAX_COST, timeout_s: float = REQUEST_TIMEOUT_S):
        self.registry = registry
        self.max_cost, self.timeout_s = max_cost, timeout_s
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="latentgen-app-"))
        self.preview_every_s, self.keep_s = preview_every_s, keep_s
        self._last_prune = time.monotonic()

    def prune(self):
        """Delete result folders older than ``keep_s`` (Gradio serves its own copies); once a minute."""
        if time.monotonic() - self._last_prune < 60:
            return
        self._last_prune = time.monotonic()
        cutoff = time.time() - self.keep_s
        for sub in self.out_dir.iterdir():
            try:
                if sub.stat().st_mtime < cutoff:
                    shutil.rmtree(sub, ignore_errors=True)
            except OSError:
                pass

    def check(self, req: Request):
        """Load the model (cached), check the size against its VAE factor and the request against the
        budget: errors before any work."""
        pipe = self.registry.for_call(req.model)
        f = pipe.vae_scale_factor
        nh, nw = pipe.default_size()
        height, width = req.height or nh, req.width or nw
        for name, side in (("width", width), ("height", height)):
            if side % f:
                near = max(f, round(side / f) * f)
                raise ValueError(f"{name} {side} is not a multiple of this model's VAE factor {f}: "
                                 f"use {near}")
        check_budget(self.total_steps(req), req.batch_size, width, height, (nh, nw), self.max_cost)
        return pipe, height, width

    @staticmethod
    def total_steps(req: Request) -> int:
        """Denoising steps the request runs (image to image runs ``steps x strength`` of them)."""
        return req.steps if req.image is None else min(req.steps, int(req.steps * req.strength))

    def run(
        self,
        req: Request,
        on_step: Callable[[int, int, Image.Image | None], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Generate; ``on_step(done, total, preview_or_None)`` after every step (previews throttled).

        After ``timeout_s`` the cancel flag is set and the request ends with ``TimedOut``."""
        pipe, height, width = self.check(req)
        cancel = cancel if cancel is not None else threading.Event()
        timed_out = threading.Event()

        def expire():
            timed_out.set()
            cancel.set()

        timer = threading.Timer(self.timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            return self._run(req, pipe, height, width, on_step, cancel, timed_out)
        finally:
            timer.cancel()

    def _run(self, req: Request, pipe, height: int, width: int, on_step, cancel: threading.Event,
             timed_out: threading.Event) -> Result:
        import torch

        total = self.total_steps(req)
        last_preview = [0.0]

        def callback(p, i, t, kw):
            if cancel.is_set():
                p._interrupt = True
            if on_step is not None:
                preview = None
                now = time.monotonic()
                if now - last_preview[0] >= self.preview_every_s and i + 1 < total:
                    preview = p.latents_preview(kw["denoised"][:1])[0]
                    last_preview[0] = now
                on_step(i + 1, total, preview)
            return {}

        device = pipe._execution_device
        gens = [torch.Generator(device).manual_seed(req.seed + i) for i in range(req.batch_size)]
        t0 = time.perf_counter()
        out = pipe(
            req.prompt,
            negative_prompt=req.negative_prompt or None,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance,
            generator=gens,
            height=height,
            width=width,
            num_images_per_prompt=req.batch_size,
            image=req.image,
            strength=req.strength if req.strength is not None else 0.8,
            callback_on_step_end=callback,
            sampler=None if req.sampler == AUTO_SAMPLER else req.sampler,
        )
        seconds = time.perf_counter() - t0
        if timed_out.is_set():
            raise TimedOut(f"the request timed out after {self.timeout_s:g} s (at step {out.steps_done} of "
                           f"{total}): lower the steps, the batch size or the width/height")
        if out.interrupted or cancel.is_set():
            raise Cancelled(f"cancelled after {out.steps_done} of {total} steps")
        paths = self.save(req, out.images, width, height, png_sampler(req, pipe))
        return Result(paths, req.seed, out.interrupted, out.steps_done, seconds,
                      warning=unknown_words_warning(pipe, req.prompt))

    def save(self, req: Request, images, width: int, height: int, sampler: str | None = None) -> list[str]:
        """The PNGs of ``images``, each with the settings that make it again (``sampler``: the one used)."""
        from latentgen.pngmeta import save_png_with_params

        self.prune()
        folder = self.out_dir / uuid.uuid4().hex[:12]
        paths = []
        for i, img in enumerate(images):
            params = dict(req.params(i), width=width, height=height, sampler=sampler or req.sampler)
            paths.append(save_png_with_params(img, folder / f"latentgen-{req.seed + i}.png", params))
        return paths
