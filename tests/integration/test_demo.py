"""`p2pdist demo`, the README's first command, end to end as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_and_reports_measured_numbers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "140"}
    result = subprocess.run(
        [sys.executable, "-m", "p2pdist.cli", "demo", "--steps", "15"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for version in ("v1", "v2", "v3"):
        arrivals = re.findall(rf"consumer\d\s+{version} by (full|delta from v\d)", out)
        assert len(arrivals) >= 2, (version, out)
        assert all("=" in line for line in out.splitlines() if f" {version} by " in line)
    # the paused consumer gets v3 after the origin went offline: from the other consumers
    assert out.index("origin goes offline") < out.index("consumer3  v3 by"), out
    assert re.search(r"consumer3\s+v3 by delta from v2", out), out
    assert re.search(r"consumer[12]\s+v2 by delta from v1", out), out
    assert "perplexity" in out and "what moved" in out
    size = r"[\d.]+ (?:B|KiB|MiB|GiB)"  # one unit system: binary, as every display
    table_rows = re.findall(rf"│\s+(v[123]) │\s+({size}) │\s+(-|{size}) │", out)
    assert [r[0] for r in table_rows] == ["v1", "v2", "v3"], out
    assert table_rows[0][2] == "-" and table_rows[1][2] != "-"
    assert not any(tmp_path.glob("p2pdist-demo-*")), "the demo must clean up without --keep"
