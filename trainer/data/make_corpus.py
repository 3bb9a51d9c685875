"""Rebuild corpus.txt.xz from the docstrings of the Python standard library.

Run from the repository root with the interpreter whose stdlib should be read::

    .venv/bin/python trainer/data/make_corpus.py [STDLIB_DIR] [OUT]

The output is a pure function of the stdlib sources: files are visited in sorted order,
docstrings are taken from the syntax tree (nothing is imported), cleaned with
``inspect.cleandoc``, deduplicated, and joined by blank lines. See ORIGIN.md.
"""

from __future__ import annotations

import ast
import inspect
import lzma
import sys
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "_bundled", "turtledemo"}
MIN_CHARS = 40
MAX_BYTES = 2_500_000


def docstrings(path: Path) -> list[str]:
    """Every module, class and function docstring of one source file, in tree order."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append(inspect.cleandoc(doc))
    return found


def build(stdlib: Path) -> bytes:
    """The corpus bytes: unique docstrings of at least MIN_CHARS characters, capped in size."""
    seen: set[str] = set()
    parts: list[bytes] = []
    for path in sorted(stdlib.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(stdlib).parts[:-1]):
            continue
        if path.name.startswith("test_"):
            continue
        for doc in docstrings(path):
            if len(doc) < MIN_CHARS or doc in seen:
                continue
            seen.add(doc)
            data = doc.encode("utf-8") + b"\n\n"
            parts.append(data)
    return b"".join(parts)[:MAX_BYTES]


def main() -> None:
    stdlib = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sysconfig.get_paths()["stdlib"])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("corpus.txt.xz")
    text = build(stdlib)
    out.write_bytes(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME))
    print(f"{out}: {len(text)} bytes of text, {out.stat().st_size} compressed")


if __name__ == "__main__":
    main()
