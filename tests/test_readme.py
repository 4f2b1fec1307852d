"""The README's commands, as a fresh user would type them.

Every command of its ```bash blocks is checked: the cheap ones run (``latentgen generate``, ``data shapes``,
``data check``, ``eval shapes``, ``train unet``) in one working folder, in README order, on a tiny model
(model paths, data and sizes substituted); every other one must at least parse (the command and its flags
exist). The Python blocks run against the tiny model; the HTTP block compiles and names only real endpoints.
Trainers not yet in the package (``latentgen.train.<name>``) are checked against their ``train/<name>.py``
entry point; a ``latentgen`` subcommand missing from the CLI falls back to the trainer or app module itself.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TIMEOUT = 600


# ---------------------------------------------------------------- the README's commands
def bash_commands(text: str = README) -> list[str]:
    """Every command of the ```bash blocks: continuation lines joined, comments dropped, `&&` split."""
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            out += [shlex.join(part) for part in _split_and(words)]
    return out


def _split_and(words: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for w in words:
        if w == "&&":
            parts.append([])
        else:
            parts[-1].append(w)
    return [p for p in parts if p]


def python_blocks(text: str = README) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


COMMANDS = bash_commands()


# ---------------------------------------------------------------- parsing without running
class Parsed(BaseException):  # BaseException: no `except Exception` in a main swallows it
    def __init__(self, namespace):
        super().__init__()
        self.namespace = namespace


def _delegates(parser: argparse.ArgumentParser, ns: argparse.Namespace, argv) -> bool:
    """Whether a parser with subcommands left the rest of ``argv`` to another parser (a trainer's, the app's)."""
    if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return False
    tail = list(argv or [])
    return any(isinstance(v, list) and v and v == tail[len(tail) - len(v):] for v in vars(ns).values())


def parse_only(main, argv: list[str]) -> argparse.Namespace:
    """Call ``main(argv)`` until an argument parser has parsed ``argv`` (nothing runs); an argparse error fails."""
    real = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        ns = real(self, args, namespace)
        if _delegates(self, ns, args):
            return ns
        raise Parsed(ns)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args):
        try:
            main(argv)
        except Parsed as p:
            return p.namespace
        except SystemExit as e:
            pytest.fail(f"the arguments {shlex.join(argv)!r} do not parse (exit {e.code}): see stderr")
    pytest.fail(f"{main.__module__}.main returned without parsing {argv}")


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):  # the module itself (or its package) is missing
            return None
        raise


def cli_commands() -> set[str]:
    from latentgen.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def trainer_main(name: str):
    """``main`` of the trainer ``name``: the package's, else its ``train/<name>.py`` entry point; None if neither."""
    for mod_name in (f"latentgen.train.{name}", f"train.{name}"):
        mod = _module(mod_name)
        if mod is not None and hasattr(mod, "main"):
            return mod.main
    return None


def check_parses(argv: list[str]) -> None:
    """``argv`` (a README command) names a command and flags that exist."""
    from latentgen import cli

    prog, *args = argv
    if prog == "latentgen" and args[:1] == ["train"]:
        name, rest = args[1], args[2:]
        from latentgen.train import TRAINERS

        assert name in TRAINERS, f"`latentgen train {name}`: no such trainer (there are {', '.join(TRAINERS)})"
        if "train" in cli_commands() and _module(f"latentgen.train.{name}") is not None:
            parse_only(cli.main, args)
        elif (main := trainer_main(name)) is not None:
            parse_only(main, rest)
        else:
            pytest.skip(f"no trainer {name!r} yet (latentgen.train.{name}, train/{name}.py)")
    elif prog == "latentgen" and args[:1] == ["app"]:
        if "app" in cli_commands():
            parse_only(cli.main, args)
        else:  # `latentgen app` takes app.py's flags
            sys.path.insert(0, str(ROOT))
            try:
                parse_only(importlib.import_module("app").main, args[1:])
            finally:
                sys.path.remove(str(ROOT))
    elif prog == "latentgen":
        assert args and args[0] in cli_commands(), f"`latentgen {args[:1]}`: no such command"
        parse_only(cli.main, args)
    elif prog in ("python", "python3") and args[:1] == ["-m"] and args[1].startswith("bench."):
        parse_only(importlib.import_module(args[1]).main, args[2:])
    elif prog == "accelerate" and args[:1] == ["launch"]:
        from accelerate.commands.launch import launch_command_parser

        ns = launch_command_parser().parse_args(args[1:])
        assert ns.module and ns.training_script.startswith("latentgen.train."), "launch a trainer module (-m)"
        name = ns.training_script.rsplit(".", 1)[1]
        if (main := trainer_main(name)) is None:
            pytest.skip(f"no trainer {name!r} yet")
        parse_only(main, ns.training_script_args)
    else:
        pytest.fail(f"this test does not know how to check {shlex.join(argv)!r}: teach it, or drop the command")


# ---------------------------------------------------------------- running the cheap ones
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model folder and tiny trainer parts (shapes data, VAE, CLIP)."""
    from tests.tiny_components import make_tiny_parts
    from tests.tiny_models import make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny")
    data, vae, clip = make_tiny_parts(root)
    return {"model": make_tiny_pipeline(root), "data": data, "vae": vae, "clip": clip}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The folder the README's commands run in, one for all of them (later commands use earlier outputs)."""
    return tmp_path_factory.mktemp("user")


def _set(argv: list[str], flag: str, value: str | None) -> list[str]:
    """``argv`` with every ``flag VALUE`` replaced by one ``flag value`` (``value`` None: removed)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out + ([flag, value] if value is not None else [])


FLAGS_RUN: dict[str, set[str]] = {}  # per command, the flags some README command already ran with


def _new_flags(cmd: str, args: list[str]) -> bool:
    """Whether ``args`` use a flag of ``cmd`` that no earlier run used (``--model`` aside: always the tiny one)."""
    flags = {a for a in args if a.startswith("--")} - {"--model"}
    seen = FLAGS_RUN.setdefault(cmd, set())
    new = cmd not in ("generate", "eval shapes") or not seen or bool(flags - seen)
    seen |= flags
    return new


def cheap_run(argv: list[str], tiny: dict) -> list[str] | None:
    """The command to run for a README command, on the tiny model (``python -m ...`` form), or None: parse only.
    A ``generate`` or ``eval shapes`` that differs from one already run only in its values is parsed only."""
    prog, *args = argv
    if prog != "latentgen" or not args:
        return None
    cmd = args[0] if args[0] not in ("data", "eval", "train") else " ".join(args[:2])
    if not _new_flags(cmd, args):
        return None
    if cmd == "generate":
        return ["latentgen.cli", *_set(args, "--model", tiny["model"])]
    if cmd == "data shapes":
        n = min(int(args[args.index("--n") + 1]), 24) if "--n" in args else 24
        return ["latentgen.cli", *_set(args, "--n", str(n))]
    if cmd == "data check":
        return ["latentgen.cli", *args]
    if cmd == "eval shapes":
        return ["latentgen.cli", *_set(_set(args, "--model", tiny["model"]), "--n", "2")]
    if cmd == "train unet":
        rest = list(args[2:])
        if "--data" in rest:
            rest = _set(rest, "--data", None) + ["--data", tiny["data"]]
        for flag, value in (("--vae", tiny["vae"]), ("--text-encoder", tiny["clip"]), ("--preset", "tiny"),
                            ("--size", "16"), ("--max-steps", "2"), ("--batch-size", "2"),
                            ("--validate-every", "0"), ("--val-steps", "2"), ("--checkpoint-every", "2"),
                            ("--log-every", "1")):
            rest = _set(rest, flag, value)
        rest.append("--no-progress")
        if "train" in cli_commands():
            return ["latentgen.cli", "train", "unet", *rest]
        return ["latentgen.train.unet", *rest]  # until the CLI has `latentgen train`
    return None


def run_in(workdir: Path, module_argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", *module_argv], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)


def _prepare(argv: list[str], workdir: Path) -> None:
    """Inputs a command needs that no earlier README command makes: a folder to check."""
    if argv[1:3] == ["data", "check"] and not (workdir / argv[3]).is_dir():
        from latentgen.data.shapes import write_shapes_folder

        write_shapes_folder(str(workdir / argv[3]), n=4, size=16, seed=0)


# ---------------------------------------------------------------- the tests
def test_readme_opens_with_the_two_setup_commands_and_ci_runs_its_test_command():
    first = bash_commands(README.split("\n## ", 1)[0])
    assert len(first) == 6, first  # two lines of three commands each
    install, app_install, launch, test_torch, test_install, test_cmd = first
    assert install == test_torch and install.startswith("pip install torch==")
    assert app_install == "pip install ." and launch == "latentgen app"
    assert test_install == "pip install -e '.[dev]'"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"pip install -q {install.split()[-1]}\n" in ci, "CI installs another torch than the README"
    assert f"\npython3 {test_cmd[len('python '):]}\n" in ci, "CI runs another test command than the README's"
    assert len(README.encode("utf-8")) <= 20_000, "the README is for users: keep it under 20 KB"


@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.startswith(("pip ", "python -m pytest"))],
                         ids=lambda c: c[:70])
def test_readme_command(command, tiny, workdir):
    argv = shlex.split(command)
    check_parses(argv)
    todo = cheap_run(argv, tiny)
    if todo is None:
        return
    _prepare(argv, workdir)
    res = run_in(workdir, todo)
    assert res.returncode == 0, f"{shlex.join(todo)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    if argv[1] == "generate":
        out = argv[argv.index("--out") + 1]
        assert (workdir / out).exists(), f"{command}: nothing written at {out}"


def test_readme_python_api_runs_on_a_tiny_model(tiny, workdir, monkeypatch):
    blocks = [b for b in python_blocks() if "gradio_client" not in b]
    assert blocks and "LatentGenPipeline.from_pretrained" in blocks[0]
    assert any("StableDiffusionPipeline.from_pretrained" in b for b in blocks)
    model_lines = re.findall(r"^model = .*$", blocks[0], re.MULTILINE)
    assert len(model_lines) == 1, "the first Python block sets `model = ...` once (the test substitutes it)"
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    for block in blocks:
        code = block.replace(model_lines[0], f"model = {tiny['model']!r}")
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
        assert namespace["image"].size == (16, 16)
    assert (workdir / "red.png").is_file()


def test_readme_http_api_names_every_endpoint_and_only_real_ones():
    (block,) = [b for b in python_blocks() if "gradio_client" in b]
    compile(block, "README.md", "exec")
    source = (ROOT / "latentgen" / "ui" / "api.py").read_text(encoding="utf-8")
    endpoints = set(re.findall(r"api_name=\"(\w+)\"", source))
    assert endpoints >= {"generate", "edit", "models", "png_params"}, endpoints
    used = set(re.findall(r"api_name=\"/(\w+)\"", block))
    assert used and used <= endpoints, used - endpoints
    for name in endpoints:
        assert f"`/{name}`" in README, f"the README's API table leaves out /{name}"
    # the keyword parameters the README passes exist on the endpoint's handler
    handlers = {f.name: [a.arg for a in f.args.args] for f in ast.walk(ast.parse(source))
                if isinstance(f, ast.FunctionDef)}
    calls = [c for c in ast.walk(ast.parse(block))
             if isinstance(c, ast.Call) and getattr(c.func, "attr", None) == "predict"]
    assert len(calls) == len(re.findall(r"\.predict\(", block))
    for call in calls:
        kws = {k.arg: k.value for k in call.keywords}
        name = kws.pop("api_name").value.lstrip("/")
        assert set(kws) <= set(handlers[f"api_{name}"]), f"/{name} takes no {set(kws) - set(handlers[f'api_{name}'])}"
