"""The models the app can use, and the one place a model name becomes a folder on disk.

Choices are, in order: the bundled models (``latentgen/weights/default`` and its 4-step
student ``default-4step``, when installed), the model given with ``--model DIR`` (and its
``DIR-4step`` student beside it), then every model folder in the models folder (and one
level down, e.g. ``my-run/final`` of a distillation run).

A model typed into the app (a name or a path) must resolve inside the models folder or
the bundled weights folder: ``..`` is refused, and symlinks are followed before the
check, so a link pointing outside is refused too. Only the operator's ``--model`` may
point anywhere.

Loaded pipelines are cached (the last ``max_loaded``), so the model loads once and
switching back and forth needs no reload or restart. The default model is the first one
that passes the cheap completeness check (``check_model_folder``) and has not failed to
load (``mark_broken``), so one broken folder never makes every request fail. Messages name
the models folder by its name, never by its absolute path.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from latentgen.lora import LORA_FILE, LORA_INFO  # LORA_INFO: {"base": <base model folder>, ...}

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"
STUDENT_SUFFIX = "-4step"
SKIP_DIRS = {"checkpoints", "logs", "samples", "cache", "class_images"}  # parts of a run, never models
NO_MODEL_HELP = (
    "No model is installed. Train one with the recipe in the README (the last stage writes "
    "latentgen/weights/default), or start the app with: latentgen app --model DIR "
    "(a model folder with model_index.json), or put model folders in the models folder ({models_dir}/)."
)


def is_lora_folder(path: Path) -> bool:
    return (path / LORA_FILE).is_file() and (path / LORA_INFO).is_file()


def _is_model_folder(path: Path) -> bool:
    """A full model folder, or LoRA weights from ``latentgen train finetune`` (loaded on top of their base)."""
    return (path / "model_index.json").is_file() or is_lora_folder(path)


class LockedTokenizer:
    """A tokenizer that encodes one call at a time.

    Hugging Face tokenizers keep padding and truncation settings in shared state (the Rust
    backend), so two requests encoding prompts at once on one tokenizer can mix them up
    ("Unable to create tensor ..."). Generation shares the loaded pipeline's tokenizer
    between concurrent requests, so its calls go through a lock; everything else passes through.
    """

    def __init__(self, tokenizer):
        self._tokenizer, self._lock = tokenizer, threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


class ModelRegistry:
    """Lists, resolves (safely) and loads model folders; thread-safe."""

    def __init__(
        self,
        models_dir: str | os.PathLike,
        startup_model: str | os.PathLike | None = None,
        bundled_dir: str | os.PathLike = BUNDLED_DIR,
        max_loaded: int = 2,
        device: str | None = None,
    ):
        self.models_dir = Path(models_dir).expanduser().absolute()
        self.bundled_dir = Path(bundled_dir).expanduser().absolute()
        self.max_loaded = max(1, max_loaded)
        self.device = device
        self._pinned: dict[str, Path] = {}  # label -> folder, always offered
        for sub in sorted(self.bundled_dir.iterdir()) if self.bundled_dir.is_dir() else []:
            if sub.is_dir() and _is_model_folder(sub):
                self._pinned[sub.name] = sub
        self.startup_label = None
        if startup_model is not None:
            self.startup_label = self._pin(Path(startup_model).expanduser().absolute())
            student = Path(str(Path(startup_model).expanduser().absolute()) + STUDENT_SUFFIX)
            if _is_model_folder(student):
                self._pin(student)
        self._broken: set[str] = set()  # choices that failed to load (startup_message)
        self._loaded: OrderedDict[Path, object] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[Path, threading.Lock] = {}

    def _pin(self, path: Path) -> str:
        for label, p in self._pinned.items():
            if p.resolve() == path.resolve():
                return label
        label = path.name
        if label in self._pinned or (self.models_dir / label).exists():
            label = f"{label} (--model)"
        self._pinned[label] = path
        return label

    # -- listing
    def folder_models(self) -> list[str]:
        """Model folders in the models folder, and one level down (``run/final``, ``run/round-4``
        of a distillation run); links that leave the folder are left out."""
        if not self.models_dir.is_dir():
            return []
        root = self.models_dir.resolve()

        def subdirs(folder: Path) -> list[Path]:
            return [
                d
                for d in sorted(folder.iterdir())
                if d.is_dir()
                and not d.name.startswith(".")
                and d.name not in SKIP_DIRS
                and d.resolve().is_relative_to(root)
            ]

        names = []
        for sub in subdirs(self.models_dir):
            if _is_model_folder(sub):
                names.append(sub.name)
            else:
                names += [f"{sub.name}/{d.name}" for d in subdirs(sub) if _is_model_folder(d)]
        return names

    def choices(self) -> list[str]:
        pinned = list(self._pinned)
        return pinned + [n for n in self.folder_models() if n not in self._pinned]

    def default_choice(self) -> str | None:
        """The model the page starts on: ``--model``, else the bundled ``default``, else the first found
        (teachers before 4-step students); in each case only a usable one (``usable``)."""
        choices = self.choices()
        teachers = [c for c in choices if not c.endswith(STUDENT_SUFFIX)]
        order = [c for c in (self.startup_label, "default") if c in choices] + teachers + choices
        return next((c for c in dict.fromkeys(order) if self.usable(c)), None)

    def usable(self, choice: str) -> bool:
        """Whether ``choice`` passes the cheap completeness check and has not failed to load."""
        if choice in self._broken:
            return False
        try:
            path = self.resolve(choice)
            if is_lora_folder(path):
                path = self._lora_base(path)
            from latentgen.pipeline import check_model_folder

            check_model_folder(path)
        except Exception:  # noqa: BLE001 -- any reason at all: not the default
            return False
        return True

    def mark_broken(self, choice: str):
        """``choice`` failed to load: it is no longer the default (it stays in the lists)."""
        self._broken.add(choice)

    def no_model_message(self) -> str:
        names = ", ".join(sorted(self._broken)) or ", ".join(self.choices())
        if names:
            return (
                f"No usable model: {names} (incomplete, or failed to load). Fix or replace them, or start "
                "the app with: latentgen app --model DIR (a model folder with model_index.json)."
            )
        return NO_MODEL_HELP.format(models_dir=self.models_dir.name)

    def student_of(self, choice: str | None) -> str | None:
        """The 4-step student for ``choice``: ``<name>-4step``, else the bundled ``default-4step``."""
        choices = self.choices()
        if choice and choice.endswith(STUDENT_SUFFIX) and choice in choices:
            return choice
        for cand in (f"{choice}{STUDENT_SUFFIX}" if choice else None, f"default{STUDENT_SUFFIX}"):
            if cand and cand in choices:
                return cand
        return None

    # -- resolving
    def resolve(self, choice: str | None) -> Path:
        """The folder for a model list entry or a typed path; refuses anything outside the models folder."""
        value = (choice or "").strip() if isinstance(choice, str) else choice
        if not value:
            if not self.choices():
                raise ValueError(self.no_model_message())
            raise ValueError("no model chosen: pick one in the Model list")
        if value in self._pinned:
            return self._pinned[value]
        if "\x00" in value:
            raise ValueError("the model path contains a NUL character")
        p = Path(value).expanduser()
        if ".." in p.parts:
            raise ValueError(
                f"model path {value!r} contains '..': give a folder inside the models folder "
                f"({self.models_dir.name}/), e.g. a name from the Model list"
            )
        candidate = p if p.is_absolute() else self.models_dir / p
        real = candidate.resolve()  # follows symlinks: a link that leaves the folder is caught below
        roots = [r.resolve() for r in (self.models_dir, self.bundled_dir)]
        if not any(real.is_relative_to(r) and real != r for r in roots):
            raise ValueError(
                f"model path {value!r} is outside the models folder {self.models_dir.name}/: the app only loads "
                "models from there (move or copy the folder into it, or start the app with --model DIR)"
            )
        if not real.exists():
            raise FileNotFoundError(
                f"no model named {value!r} in the models folder {self.models_dir.name}/: "
                f"choose one of {', '.join(self.choices()) or '(none installed)'}"
            )
        if not is_lora_folder(real):
            from latentgen.pipeline import check_model_folder

            try:
                check_model_folder(real)
            except (ValueError, OSError) as e:  # its message names the folder by its absolute path
                raise type(e)(
                    str(e).replace(repr(str(real)), repr(value)).replace(str(real), value)
                ) from None
        return real

    def _lora_base(self, folder: Path) -> Path:
        """The base model of LoRA weights: the folder itself when the fine-tune wrote one there (a tuned
        decoder or another text encoder), else the operator's --model, or a folder the app may load."""
        import json

        if (folder / "model_index.json").is_file():
            return folder
        base = json.loads((folder / LORA_INFO).read_text()).get("base")
        if not base:
            raise ValueError(
                f"{folder.name}/{LORA_INFO} does not name its base model ('base'): fine-tune again"
            )
        for p in self._pinned.values():
            if p.resolve() == Path(base).resolve():
                return p
        return self.resolve(base)

    # -- loading
    def load(self, choice: str | None):
        """The cached pipeline for ``choice`` (loaded on first use, on the app's device)."""
        path = self.resolve(choice).resolve()
        with self._lock:
            if path in self._loaded:
                self._loaded.move_to_end(path)
                return self._loaded[path]
            lock = self._load_locks.setdefault(path, threading.Lock())
        with lock:  # one load per folder, even when several requests ask at once
            with self._lock:
                if path in self._loaded:
                    return self._loaded[path]
            pipe = self._from_disk(path)
            with self._lock:
                self._loaded[path] = pipe
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
            return pipe

    def _from_disk(self, path: Path):
        import torch

        from latentgen.pipeline import LatentGenPipeline

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        log.info("loading model %s on %s", path, device)
        if is_lora_folder(path):  # a fresh base (the cached one stays as it is) with the adapters fused in
            pipe = LatentGenPipeline.from_pretrained(str(self._lora_base(path)))
            pipe.load_lora_weights(str(path))
            pipe.fuse_lora()
            pipe = pipe.to(device)
        else:
            pipe = LatentGenPipeline.from_pretrained(str(path)).to(device)
        pipe.set_progress_bar_config(disable=True)
        # bypass DiffusionPipeline.__setattr__, which would record the wrapper in the pipeline's config
        object.__setattr__(pipe, "tokenizer", LockedTokenizer(pipe.tokenizer))
        return pipe

    def for_call(self, choice: str | None):
        """A per-request view of the cached pipeline: shares the weights, owns its cancel flag.

        The pipeline builds a fresh scheduler every call; a shallow copy also gives each
        request its own ``_interrupt``, so cancelling one request never stops another.
        """
        return copy.copy(self.load(choice))

    def defaults(self, choice: str | None) -> dict:
        """Settings for the controls: the model card's sampler/steps/guidance and the native size."""
        from latentgen.pipeline import read_model_card_defaults, sampling_defaults

        card = read_model_card_defaults(self.resolve(choice))
        pipe = self.load(choice)
        height, width = pipe.default_size()
        call = sampling_defaults(card, pipe.unet.config.time_cond_proj_dim is not None)
        return {
            "sampler": card.get("sampler", "auto"),
            "steps": call["num_inference_steps"],
            "guidance": call["guidance_scale"],
            "height": height,
            "width": width,
            "factor": pipe.vae_scale_factor,
        }
