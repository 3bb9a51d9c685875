"""Model references: ``name``, ``name@v3``, ``name@latest``, ``org/Name@v3``.

A reference names a model and, optionally, one version of it. It is the one syntax every
interface accepts (CLI, ``p2pdist.load``, the registry), so it is parsed strictly here and
nowhere else.

Names are written as Hugging Face writes repo ids, case included (``meta-llama/Llama-3.1-8B``);
``Org/M`` and ``org/m`` are two models. On disk a name becomes one folder name that stays
distinct on case-insensitive filesystems (macOS, Windows): each upper-case letter is written
``!`` + its lower case, as Go's module cache does (``meta-llama--!llama-3.1-8!b``); names
without capitals keep the folder they always had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2pdist.errors import RefError

LATEST = "latest"

_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^(?:{_SEGMENT}/)?{_SEGMENT}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")

ACCEPTED_FORMS = "name, name@v3, name@latest, org/Name@v3 (letters, digits, '.', '_', '-')"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid model name (``name`` or ``org/name``), else raise."""
    # "--" is reserved: it joins org and name in folder names (org/name -> org--name).
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name or "--" in name:
        raise RefError(f"invalid model name {name!r}: expected {ACCEPTED_FORMS}, no '--'")
    return name


def validate_version(version: str) -> str:
    """Return ``version`` if it is a valid concrete version string (not ``latest``), else raise."""
    if (
        not isinstance(version, str)
        or not _VERSION_RE.match(version)
        or ".." in version
        or version == LATEST
        or version.endswith(".delta")  # v1.delta is the folder of v1's delta in torrents
    ):
        raise RefError(
            f"invalid version {version!r}: 1-64 characters of letters, digits, '.', '_', '-', "
            f"starting and ending with a letter or digit, not {LATEST!r}, not ending in .delta"
        )
    return version


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a model name and a version (``latest`` when none was given)."""

    name: str
    version: str = LATEST

    @property
    def org(self) -> str | None:
        """The namespace before the slash, or None for a bare name."""
        return self.name.split("/", 1)[0] if "/" in self.name else None

    @property
    def namespace(self) -> str:
        """The publish namespace: the org, or the name itself when there is no org."""
        return self.org or self.name

    @property
    def is_latest(self) -> bool:
        return self.version == LATEST

    @property
    def folder_name(self) -> str:
        """One path component for the model, distinct from every other model's even where
        the filesystem ignores case: ``org/Name`` -> ``org--!name`` (see the module doc)."""
        return _CAPITAL.sub(lambda m: "!" + m.group(0).lower(), self.name).replace("/", "--")

    def with_version(self, version: str) -> ModelRef:
        return ModelRef(self.name, validate_version(version))

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


_CAPITAL = re.compile(r"[A-Z]")
_ESCAPED = re.compile(r"!([a-z])")


def name_from_folder(folder: str) -> str:
    """The model name a ``folder_name`` stands for (its inverse); RefError if it is none."""
    name = _ESCAPED.sub(lambda m: m.group(1).upper(), folder.replace("--", "/", 1))
    validate_name(name)
    if ModelRef(name).folder_name != folder:  # "!" before a non-letter, a raw capital
        raise RefError(f"{folder!r} is not the folder name of a model")
    return name


def parse_ref(text: str) -> ModelRef:
    """Parse a reference string, raising RefError with the accepted forms when it is invalid."""
    if not isinstance(text, str) or not text.strip():
        raise RefError(f"empty model reference: expected {ACCEPTED_FORMS}")
    text = text.strip()
    if text.count("@") > 1:
        raise RefError(f"invalid model reference {text!r}: expected {ACCEPTED_FORMS}")
    name, _, version = text.partition("@")
    try:
        validate_name(name)
        if version and version != LATEST:
            validate_version(version)
    except RefError:
        raise RefError(f"invalid model reference {text!r}: expected {ACCEPTED_FORMS}") from None
    if "@" in text and not version:
        raise RefError(f"invalid model reference {text!r}: expected {ACCEPTED_FORMS}")
    return ModelRef(name, version or LATEST)
