"""The delta kernel built without its x86-64 vector code, as on ARM or POWER hosts: it must
compile, and code the same bytes as the installed build."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from p2pdist.delta import _ans
from p2pdist.delta.codec import float_key

SOURCES = sorted(
    (Path(__file__).resolve().parent.parent / "p2pdist" / "delta" / "_ans").glob("*.c")
)


@pytest.fixture(scope="module")
def portable(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    compiler = shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0])
    if compiler is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("portable") / f"_ans{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = [compiler, "-O1", "-shared", "-fPIC", "-Wall",
           "-DP2PDIST_NO_VECTOR", f"-I{sysconfig.get_paths()['include']}", *map(str, SOURCES), "-o",
           str(out)]  # fmt: skip
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    spec = importlib.util.spec_from_file_location("_ans", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_portable_build_has_no_vector_code(portable: ModuleType) -> None:
    assert portable.set_simd(2) == 0


@pytest.mark.parametrize(
    ("dtype", "word", "row"), [("BF16", 2, 256), ("BF16", 2, 0), ("F32", 4, 0)]
)
def test_the_portable_build_codes_the_same_bytes(
    portable: ModuleType, dtype: str, word: int, row: int
) -> None:
    rng = np.random.default_rng(11)
    n = 1 << 17
    old = rng.integers(0, 256, n * word, dtype=np.uint8)
    moves = rng.integers(-40, 41, n).astype(np.int64)
    words = old.view({2: np.uint16, 4: np.uint32}[word])
    new = (words + moves.astype(words.dtype)).view(np.uint8)
    key = float_key(dtype)
    scratch = np.empty(_ans.scratch_size(new.size, word), np.uint8)
    ours = _ans.encode(new, old, word, key, scratch, row)
    theirs = portable.encode(new, old, word, key, scratch, row)
    assert ours and ours == theirs
    out = np.zeros_like(new)
    portable.decode(ours[1], old, out, word, (*key, ours[0]), scratch)
    assert out.tobytes() == new.tobytes()


if sys.platform == "win32":  # pragma: no cover - the project targets Linux and macOS
    pytestmark = pytest.mark.skip("builds with the Unix C toolchain")
