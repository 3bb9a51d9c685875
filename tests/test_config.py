"""Settings from flags, the environment and config.toml, as a user writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pdist import config
from p2pdist.errors import ConfigError


@pytest.fixture
def config_toml(p2p_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("P2PDIST_CONFIG", str(path))
    for name in ("P2PDIST_UPLOAD_LIMIT", "P2PDIST_SSRF_MITIGATION", "P2PDIST_LISTEN"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_numbers_and_booleans_are_written_as_toml_has_them(config_toml: Path) -> None:
    config_toml.write_text("upload_limit = 1000\nssrf_mitigation = false\n")
    assert config.upload_rate_limit() == 1000
    assert config.ssrf_mitigation() is False
    config_toml.write_text("ssrf_mitigation = 0\n")
    assert config.ssrf_mitigation() is False
    config_toml.write_text('[p2pdist]\nupload_limit = "2000"\nssrf_mitigation = "on"\n')
    assert config.upload_rate_limit() == 2000
    assert config.ssrf_mitigation() is True


def test_the_environment_wins_over_the_file(
    config_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_toml.write_text("upload_limit = 1000\n")
    monkeypatch.setenv("P2PDIST_UPLOAD_LIMIT", "5")
    assert config.upload_rate_limit() == 5
    assert config.upload_rate_limit(7) == 7


@pytest.mark.parametrize(
    ("line", "call", "expected"),
    [
        ("upload_limit = true", config.upload_rate_limit, "a string or an integer, not True"),
        ("ssrf_mitigation = 3", config.ssrf_mitigation, "a string, true/false or 0/1, not 3"),
        ("listen = 5", config.listen_interface, "listen must be a string, not 5"),
        ('upload_limit = "fast"', config.upload_rate_limit, "integer number of bytes/s"),
    ],
)
def test_a_wrong_type_is_one_config_error_naming_the_file(
    config_toml: Path, line: str, call: object, expected: str
) -> None:
    config_toml.write_text(line + "\n")
    with pytest.raises(ConfigError) as caught:
        call()  # type: ignore[operator]
    assert expected in str(caught.value)
