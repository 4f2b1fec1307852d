"""Sizes a reader can hold: no module of the library, the entry points or the app over 400 lines, no
function over 80, and the library never imports the entry points (``train/``) or ``app.py``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*ROOT.glob("latentgen/**/*.py"), *ROOT.glob("train/*.py"), ROOT / "app.py"])


def test_files_and_functions_stay_short():
    long_files, long_functions = [], []
    for path in FILES:
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > 400:
            long_files.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not long_files and not long_functions, long_files + long_functions


def test_the_library_never_imports_the_entry_points():
    offenders = []
    for path in ROOT.glob("latentgen/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "train" or n.startswith("train.")
                          or n == "app"]
    assert not offenders, offenders
