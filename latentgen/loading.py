"""Model folders and LoRA weights on disk: checked before anything loads, loaded safetensors-first.

A model folder holds ``model_index.json`` and the five components ``vae/``, ``text_encoder/``,
``tokenizer/``, ``unet/`` and ``scheduler/``; a Stable Diffusion folder without
``model_index.json`` loads component by component (:func:`load_component_folders`).
Every check raises an error that names what is missing and the fix; pickle weights are
refused unless the caller trusts them; nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os

from latentgen.diffusion import SAMPLERS
from latentgen.modelcard import read_card_defaults

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "default")
DEFAULT_STEPS = 25  # a teacher's steps and guidance where its model card gives none
DEFAULT_STUDENT_STEPS = 4
DEFAULT_GUIDANCE = 5.0
FOLDER_CONTENTS = (
    "a model folder holds model_index.json and unet/, vae/ and text_encoder/ (each a config.json and "
    ".safetensors weights), tokenizer/ (tokenizer.json, or vocab.json and merges.txt) and scheduler/ "
    "(scheduler_config.json), as LatentGenPipeline.save_pretrained or the trainers write it"
)


def _has(folder: str, *names: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, n)) for n in names)


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
PICKLE_HELP = ("pickle files can run arbitrary code when loaded, so latentgen loads safetensors only: convert the "
               "weights to safetensors, or pass trust_pickle=True (CLI: --trust-pickle) if you trust whoever made "
               "them")


def _component_problem(folder: str, name: str, trust_pickle: bool = False) -> str | None:
    sub = os.path.join(folder, name)
    if not os.path.isdir(sub):
        return f"has no {name}/ folder"
    if name == "scheduler":
        return None if _has(sub, "scheduler_config.json") else "has no scheduler/scheduler_config.json"
    if name == "tokenizer":
        ok = _has(sub, "tokenizer.json") or (_has(sub, "vocab.json") and _has(sub, "merges.txt"))
        return None if ok else "has no tokenizer/tokenizer.json (nor vocab.json + merges.txt)"
    if not _has(sub, "config.json"):
        return f"has no {name}/config.json"
    files = os.listdir(sub)
    if not any(f.endswith(".safetensors") for f in files):
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickles and trust_pickle:
            return None
        if pickles:
            return f"holds only pickle weights in {name}/ ({', '.join(pickles)}): {PICKLE_HELP}"
        return f"has no .safetensors weights in {name}/ (latentgen loads safetensors only)"
    return None


def check_model_folder(path: str | os.PathLike, trust_pickle: bool = False) -> str:
    """``path`` as a str if it is a complete model folder, else a clear error saying what is missing.

    Pickle weights (.bin, .ckpt, .pt) are refused unless ``trust_pickle`` is set.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(PICKLE_SUFFIXES):
        raise ValueError(f"{path!r} is a single pickle checkpoint: {PICKLE_HELP}; and latentgen needs a model "
                         f"folder: {FOLDER_CONTENTS}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model folder at {path!r}: {FOLDER_CONTENTS} "
                                "(latentgen never downloads models)")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} is a file, not a model folder: {FOLDER_CONTENTS}")
    problems = [p for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
                if (p := _component_problem(path, n, trust_pickle))]
    if problems:
        raise FileNotFoundError(f"model folder {path!r} {'; '.join(problems)}: {FOLDER_CONTENTS}")
    return path


def check_weight_files(folder: str) -> None:
    """Refuse a corrupt or truncated .safetensors file of unet/, vae/ or text_encoder/ (header check only).

    The error names the file relative to ``folder``, as the loaders' own errors do not.
    """
    from safetensors import SafetensorError, safe_open

    for name in ("unet", "vae", "text_encoder"):
        sub = os.path.join(folder, name)
        for f in sorted(os.listdir(sub)):
            if not f.endswith(".safetensors"):
                continue
            try:
                with safe_open(os.path.join(sub, f), framework="pt"):
                    pass  # opening parses the header and checks it covers the whole file
            except (SafetensorError, RuntimeError) as e:
                raise ValueError(f"{folder}: could not read {name}/{f} (corrupt or truncated safetensors file: "
                                 f"{e}): copy the model folder again, or save it again with save_pretrained"
                                 ) from None
            except OSError as e:
                raise ValueError(f"{folder}: could not read {name}/{f} ({e.strerror or e}): check the file's "
                                 "permissions") from None


LORA_HELP = "LoRA weights are a .safetensors file, or a folder holding pytorch_lora_weights.safetensors"


def check_lora_source(path: str | os.PathLike, weight_name: str | None = None,
                      trust_pickle: bool = False) -> str:
    """``path`` as a str if it holds safetensors LoRA weights (a file, or a folder with one), else a clear error.

    Pickle weights (.bin, .pt, .ckpt) are refused unless ``trust_pickle`` is set; nothing is downloaded.
    """
    path = os.fspath(path)
    target = os.path.join(path, weight_name) if weight_name and os.path.isdir(path) else path
    if not os.path.exists(target):
        raise FileNotFoundError(f"no LoRA weights at {target!r}: {LORA_HELP} (latentgen never downloads)")
    if os.path.isdir(target):
        files = sorted(os.listdir(target))
        if any(f.endswith(".safetensors") for f in files):
            return path
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickles and trust_pickle:
            return path
        if pickles:
            raise ValueError(f"LoRA folder {path!r} holds only pickle weights ({', '.join(pickles)}): {PICKLE_HELP}")
        raise FileNotFoundError(f"LoRA folder {path!r} holds no .safetensors weights: {LORA_HELP}")
    if target.endswith(".safetensors") or trust_pickle:
        return path
    if target.endswith(PICKLE_SUFFIXES):
        raise ValueError(f"LoRA weights {target!r} are a pickle file: {PICKLE_HELP}")
    raise ValueError(f"LoRA weights {target!r} are not a .safetensors file: {LORA_HELP}")


class _UnetOnlyLoRA(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No LoRA keys associated to CLIPTextModel")


@contextlib.contextmanager
def quiet_unet_only_lora():
    """Drop diffusers' warning that a LoRA has no text-encoder keys: a UNet-only LoRA (the fine-tune's default)
    has none, and the warning's advice does not apply."""
    log, note = logging.getLogger("diffusers.loaders.lora_base"), _UnetOnlyLoRA()
    log.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)


def resolve_model_dir(model: str | os.PathLike | None, trust_pickle: bool = False) -> str:
    """``model``, or the bundled default model when it is None."""
    if model is not None:
        return check_model_folder(model, trust_pickle)
    if not os.path.isdir(DEFAULT_MODEL_DIR):
        raise FileNotFoundError(
            f"no model given and no bundled default model at {DEFAULT_MODEL_DIR}: pass --model DIR "
            "(a folder written by the trainers or LatentGenPipeline.save_pretrained), or train one with "
            "`latentgen train recipe --out DIR` (or `latentgen train unet --data DIR --out DIR`)"
        )
    return check_model_folder(DEFAULT_MODEL_DIR)


def read_model_card_defaults(folder: str | os.PathLike) -> dict:
    """:func:`latentgen.modelcard.read_card_defaults` knowing the pipeline's samplers (an unknown one is an
    error)."""
    return read_card_defaults(folder, SAMPLERS)


def sampling_defaults(card: dict, student: bool) -> dict:
    """The ``num_inference_steps`` and ``guidance_scale`` of a call that leaves them out: the model card's
    (:func:`read_model_card_defaults`), else 4 steps for a guidance-conditioned student or 25 for a
    teacher, and guidance 5."""
    return {"num_inference_steps": card.get("num_inference_steps",
                                            DEFAULT_STUDENT_STEPS if student else DEFAULT_STEPS),
            "guidance_scale": card.get("guidance_scale", DEFAULT_GUIDANCE)}


def diffusers_dtype(dtype) -> dict:
    """The keyword for loading in ``dtype`` that the installed diffusers takes: ``dtype``, or ``torch_dtype``
    in versions before ``dtype`` replaced it (the deprecated one prints a warning on every load)."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype": dtype}


def transformers_dtype(dtype) -> dict:
    """As :func:`diffusers_dtype` for transformers, where ``dtype`` replaced ``torch_dtype`` in 4.56."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def load_component_folders(folder: str, dtype, use_safetensors: bool | None = True) -> dict:
    """The five components of a folder without ``model_index.json`` (a Stable Diffusion layout), loaded
    one by one in ``dtype``, as ``LatentGenPipeline(**components)`` takes them."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    sub = functools.partial(os.path.join, folder)
    with open(os.path.join(sub("scheduler"), "scheduler_config.json")) as f:
        sched_cfg = json.load(f)
    sched_cls = getattr(diffusers, str(sched_cfg.get("_class_name")), None)
    if sched_cls is None or not hasattr(sched_cls, "set_timesteps"):
        raise ValueError(f"{sub('scheduler')}/scheduler_config.json names an unknown scheduler class "
                         f"{sched_cfg.get('_class_name')!r}: use a diffusers scheduler class name")
    kw = {"use_safetensors": use_safetensors, **diffusers_dtype(dtype)}
    return {
        "vae": AutoencoderKL.from_pretrained(sub("vae"), **kw),
        "text_encoder": CLIPTextModel.from_pretrained(sub("text_encoder"), use_safetensors=use_safetensors,
                                                      **transformers_dtype(dtype)),
        "tokenizer": CLIPTokenizer.from_pretrained(sub("tokenizer")),
        "unet": UNet2DConditionModel.from_pretrained(sub("unet"), **kw),
        "scheduler": sched_cls.from_config(sched_cfg),
    }
