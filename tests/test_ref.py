from __future__ import annotations

import pytest

from p2pdist.errors import P2PDistError, RefError
from p2pdist.ref import ModelRef, parse_ref, validate_version


@pytest.mark.parametrize(
    ("text", "name", "version"),
    [
        ("gpt", "gpt", "latest"),
        ("gpt@v3", "gpt", "v3"),
        ("gpt@latest", "gpt", "latest"),
        ("org/gpt-2.small@v3", "org/gpt-2.small", "v3"),
        ("org/gpt@2026-11-28_step.100", "org/gpt", "2026-11-28_step.100"),
    ],
)
def test_valid_refs(text: str, name: str, version: str) -> None:
    ref = parse_ref(text)
    assert ref == ModelRef(name, version)
    assert str(ref) == f"{name}@{version}"


@pytest.mark.parametrize(
    "text",
    [
        "", "@v1", "gpt@", "gpt@@v1", "a/b/c@v1", "../etc@v1", "gpt@../v1",
        "gpt@v1/../x", "/abs@v1", "gpt@-v1", "x" * 200, "gpt@v 1", "org/@v1", "gpt; drop table@v1",
        "a--b@v1", "org/a--b", "org--x/gpt@v1",
    ],
)  # fmt: skip
def test_invalid_refs_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(RefError) as info:
        parse_ref(text)
    assert "name@v3" in str(info.value)
    assert isinstance(info.value, (P2PDistError, ValueError))


def test_namespace_and_folder_name() -> None:
    assert parse_ref("org/gpt@v1").namespace == "org"
    assert parse_ref("gpt@v1").namespace == "gpt"
    assert parse_ref("org/gpt").folder_name == "org--gpt"


def test_a_version_cannot_be_named_like_another_versions_delta_folder() -> None:
    """The torrent root of org/gpt@v1's delta is ``org--gpt@v1.delta``: a version named
    v1.delta would have that folder too (and a web seed could not tell them apart)."""
    with pytest.raises(RefError, match=r"not ending in \.delta"):
        validate_version("v1.delta")
    with pytest.raises(RefError, match="invalid model reference"):
        parse_ref("org/gpt@v1.delta")
    assert validate_version("v1.deltas") == "v1.deltas"
