"""The consumer's own web seeds (``config.web_seeds``): argument > environment > file > none."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pdist import config
from p2pdist.errors import ConfigError

ORIGIN = "http://127.0.0.1:8000/"
OTHER = "http://127.0.0.2:8000/"


@pytest.fixture
def config_toml(p2p_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("P2PDIST_CONFIG", str(path))
    monkeypatch.delenv("P2PDIST_WEB_SEEDS", raising=False)
    return path


def test_none_by_default(config_toml: Path) -> None:
    assert config.web_seeds() == ()


def test_the_file_takes_a_list_or_a_string(config_toml: Path) -> None:
    config_toml.write_text(f'web_seeds = ["{ORIGIN}", "{OTHER}"]\n')
    assert config.web_seeds() == (ORIGIN, OTHER)
    config_toml.write_text(f'[p2pdist]\nweb_seeds = "{ORIGIN} {OTHER}"\n')
    assert config.web_seeds() == (ORIGIN, OTHER)
    config_toml.write_text("web_seeds = 3\n")
    with pytest.raises(ConfigError, match="web_seeds must be a string or a list"):
        config.web_seeds()


def test_the_environment_beats_the_file_and_an_argument_beats_both(
    config_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_toml.write_text(f'web_seeds = ["{OTHER}"]\n')
    monkeypatch.setenv("P2PDIST_WEB_SEEDS", f"{ORIGIN},{OTHER}")
    assert config.web_seeds() == (ORIGIN, OTHER)
    assert config.web_seeds([OTHER]) == (OTHER,)
