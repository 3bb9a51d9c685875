"""``p2pdist tracker backup`` against a running tracker process, and ``tracker restore``
into the folder a second tracker then serves: versions, manifests and tokens survive."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.harness import Tracker
from tests.tracker_world import make_version

pytestmark = pytest.mark.integration


def post(url: str, token: str, version: object) -> int:
    v = version.manifest  # type: ignore[attr-defined]
    request = urllib.request.Request(
        f"{url}/v1/models/{v.name}/versions/{v.version}",
        data=json.dumps(version.body()).encode(),  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def get(url: str, path: str) -> bytes:
    with urllib.request.urlopen(url + path, timeout=30) as response:
        return response.read()


def tracker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pdist.cli", "tracker", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_backup_while_serving_then_restore_and_serve(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    versions = [
        make_version(key, "org/m", f"v{i}", parent=f"v{i - 1}" if i > 1 else None)
        for i in range(1, 13)
    ]
    first = Tracker(tmp_path / "data")
    second = Tracker(tmp_path / "restored")
    try:
        first.start()
        token = first.token("org")
        for v in versions[:4]:
            assert post(first.url, token, v) == 201
        statuses: list[int] = []
        writer = threading.Thread(
            target=lambda: statuses.extend(post(first.url, token, v) for v in versions[4:10])
        )
        writer.start()  # publishes go on while the backup runs
        backup = tmp_path / "backup.sqlite3"
        made = tracker_cli("backup", str(backup), "--data", str(first.data_dir))
        writer.join()
        assert made.returncode == 0, made.stderr
        assert statuses == [201] * 6
        assert made.stdout.startswith(f"{backup}: ") and " tokens (" in made.stdout

        busy = tracker_cli("restore", str(backup), "--data", str(first.data_dir))
        assert busy.returncode == 1
        assert busy.stderr.startswith("Error: ") and "in use" in busy.stderr
        assert busy.stderr.count("\n") == 1

        restored = tracker_cli("restore", str(backup), "--data", str(second.data_dir))
        assert restored.returncode == 0, restored.stderr
        expected = json.loads(get(first.url, "/v1/models/org/m/versions"))["versions"]
        first.stop()

        second.start()
        listed = json.loads(get(second.url, "/v1/models/org/m/versions"))["versions"]
        names = [v["version"] for v in listed]
        assert 4 <= len(names) <= 10 and names == [f"v{i}" for i in range(1, len(names) + 1)]
        assert listed == expected[: len(listed)]
        for v in versions[: len(names)]:
            path = f"/v1/models/org/m/versions/{v.manifest.version}/manifest"
            assert get(second.url, path) == v.manifest_bytes
        # the token made before the backup still publishes on the restored registry
        assert post(second.url, token, versions[len(names)]) == 201
        assert post(second.url, "p2pt_unknown", versions[len(names) + 1]) == 401
    finally:
        first.close()
        second.close()
