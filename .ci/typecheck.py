"""Run mypy over p2pdist/, tracker/ and trainer/ as the one package users import.

The distribution maps tracker/ to p2pdist.tracker and trainer/ to p2pdist.trainer
(pyproject's package-dir); mypy resolves modules by folder, so it checks a tree of links that
has that shape. Settings are in pyproject.toml ([tool.mypy]). Exit status is mypy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="p2pdist-typecheck-") as tmp:
        package = Path(tmp) / "p2pdist"
        package.mkdir()
        for entry in (ROOT / "p2pdist").iterdir():
            if entry.name != "__pycache__":
                (package / entry.name).symlink_to(entry)
        (package / "tracker").symlink_to(ROOT / "tracker")
        (package / "trainer").symlink_to(ROOT / "trainer")
        cmd = [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--python-executable", sys.executable,
            "--cache-dir", str(ROOT / ".mypy_cache"),
            "-p", "p2pdist",
        ]  # fmt: skip
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        # name files as they are in the repository, not in the tree of links
        out = done.stdout.replace("p2pdist/tracker/", "tracker/").replace(
            "p2pdist/trainer/", "trainer/"
        )
        sys.stdout.write(out)
        sys.stderr.write(done.stderr)
        return done.returncode


if __name__ == "__main__":
    os.environ.setdefault("MYPY_FORCE_COLOR", "0")
    sys.exit(main())
