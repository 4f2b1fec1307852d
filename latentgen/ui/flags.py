"""The "Extra trainer flags" box: an allow-list of harmless flags per trainer, values range-checked.

The app sets the paths (``--out``, ``--model``, ``--data``, ``--resume``) and the bounded
numbers (``--max-steps``, ``--batch-size``, ``--checkpoint-every``) itself; the box may add
only the flags listed here, by their exact names (``--flag value`` or ``--flag=value``; the
trainers refuse abbreviations too). Each flag is handed on as one ``--flag=value`` token, so
a value can never be read as another flag.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from latentgen.limits import MAX_PROMPT_CHARS
from latentgen.ui.limits import MAX_JOB_STEPS


@dataclass(frozen=True)
class Flag:
    kind: str  # "int" | "float" | "choice" | "switch" | "text"
    lo: float = 0
    hi: float = 0
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: str) -> str:
        """``value`` normalised, or a ValueError naming the flag and its range."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{name} must be one of {', '.join(self.choices)}, got {_short(value)}")
            return value
        if self.kind == "text":
            if len(value) > MAX_PROMPT_CHARS or "\x00" in value:
                raise ValueError(f"{name} must be text of at most {MAX_PROMPT_CHARS:,} characters")
            return value
        try:
            number = int(value) if self.kind == "int" else float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and self.lo <= number <= self.hi):
            what, lo, hi = (
                ("a whole number", f"{int(self.lo):,}", f"{int(self.hi):,}")
                if self.kind == "int"
                else ("a number", f"{self.lo:g}", f"{self.hi:g}")
            )
            raise ValueError(f"{name} must be {what} from {lo} to {hi}, got {_short(value)}")
        return str(number)


def _int(lo: float, hi: float) -> Flag:
    return Flag("int", lo, hi)


def _float(lo: float, hi: float) -> Flag:
    return Flag("float", lo, hi)


SWITCH = Flag("switch")
PROBABILITY = _float(0.0, 1.0)
GUIDANCE = _float(0.0, 30.0)

COMMON = {
    "--lr": _float(1e-8, 1.0),
    "--warmup-steps": _int(0, MAX_JOB_STEPS),
    "--lr-schedule": Flag("choice", choices=("constant", "linear", "cosine", "wsd")),
    "--ema-decay": PROBABILITY,
    "--seed": _int(0, 2**32 - 1),
    "--grad-accum": _int(1, 64),
    "--mixed-precision": Flag("choice", choices=("no", "bf16", "fp16")),
    "--keep-checkpoints": _int(1, 100),
    "--log-every": _int(1, MAX_JOB_STEPS),
    "--validate-every": _int(10, MAX_JOB_STEPS),
    "--max-bad-steps": _int(0, 1000),
}
ALLOWED = {
    "latentgen.train.finetune": {
        **COMMON,
        "--lora-alpha": _float(0.01, 1024.0),
        "--caption-dropout": PROBABILITY,
        "--val-steps": _int(1, 150),
        "--val-guidance": GUIDANCE,
        "--shuffle-summary": PROBABILITY,
        "--shuffle-summary-multi": PROBABILITY,
        "--train-text-encoder": SWITCH,
        "--instance-prompt": Flag("text"),
        "--tune-decoder": Flag("choice", choices=("auto", "on", "off")),
        "--decoder-steps": _int(1, 2000),
        "--prior": Flag("choice", choices=("on", "off")),
        "--prior-loss-weight": _float(0.0, 10.0),
    },
    "latentgen.train.distill": {
        **COMMON,
        "--teacher-steps": Flag("choice", choices=tuple(str(2**k) for k in range(1, 9))),
        "--guidance-min": GUIDANCE,
        "--guidance-max": GUIDANCE,
        "--guidance": GUIDANCE,
        "--val-prompts": _int(1, 16),
        "--lora-rank": _int(0, 128),
        "--freeze-text-kv": SWITCH,
        "--two-pass": SWITCH,
    },
}


def allowed_flags(module: str) -> dict[str, Flag]:
    """The flags the app lets a user add for ``module`` (only the loop's common ones for others)."""
    return ALLOWED.get(module, COMMON)


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def _refused(token: str, allowed: dict[str, Flag]) -> ValueError:
    return ValueError(
        f"{_short(token)} is not allowed in the extra flags (the app sets the paths, --max-steps, "
        f"--batch-size and --checkpoint-every itself, and abbreviations are not accepted): "
        f"use only {', '.join(allowed)}"
    )


def parse_extra_flags(text: str | None, module: str) -> list[str]:
    """The extra flags typed for ``module`` as ``--flag=value`` tokens; a ValueError for anything else."""
    try:
        tokens = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"could not read the extra flags ({e}): check the quotes") from None
    allowed = allowed_flags(module)
    out, i = [], 0
    while i < len(tokens):
        name, eq, value = tokens[i].partition("=")
        flag = allowed.get(name)
        if flag is None:
            raise _refused(name if name.startswith("--") else tokens[i], allowed)
        i += 1
        if flag.kind == "switch":
            if eq:
                raise ValueError(f"{name} takes no value: write {name} alone")
            out.append(name)
            continue
        if not eq:
            if i >= len(tokens):
                raise ValueError(f"{name} needs a value: write {name} VALUE")
            value, i = tokens[i], i + 1
        out.append(f"{name}={flag.check(name, value)}")
    return out
