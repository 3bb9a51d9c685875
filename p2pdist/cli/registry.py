"""``p2pdist yank``, ``p2pdist tag``, ``p2pdist rotate-key``: a publisher's signed word on a
model after its versions are out (see ``formats.statement`` and ``tracker/lifecycle.py``).

Each signs a statement with the publisher's key (this host's signing key unless ``--key``)
and sends it with the registry token; the registry checks it against the model's pinned key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from p2pdist.cli.options import token_option, tracker_option
from p2pdist.ref import LATEST, parse_ref, validate_version

_key_option = click.option(
    "--key", "key_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The publisher's signing key (PEM) [default: this host's, `p2pdist keygen`].",
)  # fmt: skip


def _load_key(path: Path | None) -> Any:
    from p2pdist.formats.keys import load_signing_key, read_signing_key

    return load_signing_key() if path is None else read_signing_key(path)


def _send(kind: str, model: str, fields: dict[str, Any], key_file: Path | None,
          tracker: str | None, token: str | None) -> str:  # fmt: skip
    from p2pdist import config
    from p2pdist.client import RegistryClient
    from p2pdist.formats.statement import Statement

    statement = Statement(kind, model, fields).signed(_load_key(key_file))  # type: ignore[arg-type]
    client = RegistryClient(config.tracker_url(tracker), config.token(token))
    return str(client.post_statement(model, statement.to_bytes())["detail"])


@click.command()
@click.argument("ref")
@click.option("--reason", default=None, help="Why (one line; consumers see it).")
@_key_option
@tracker_option
@token_option
def yank(
    ref: str, reason: str | None, key_file: Path | None, tracker: str | None, token: str | None
) -> None:
    """Withdraw version REF (name@version): it leaves `latest`, followers skip it, and a
    fetch by its name is refused with REASON. Its bytes stay for delta chains."""
    parsed = parse_ref(ref)
    if parsed.version == LATEST:
        raise click.BadParameter("name the version to withdraw: name@version", param_hint="REF")
    fields: dict[str, Any] = {"version": parsed.version}
    if reason is not None:
        fields["reason"] = reason
    click.echo(_send("yank", parsed.name, fields, key_file, tracker, token))


@click.command()
@click.argument("ref")
@click.argument("tag_name", metavar="TAG")
@_key_option
@tracker_option
@token_option
def tag(
    ref: str, tag_name: str, key_file: Path | None, tracker: str | None, token: str | None
) -> None:
    """Point the movable TAG (e.g. stable) of a model at version REF (name@version);
    `p2pdist fetch name@TAG` then resolves it like latest."""
    parsed = parse_ref(ref)
    if parsed.version == LATEST:
        raise click.BadParameter("name the version to tag: name@version", param_hint="REF")
    validate_version(tag_name)
    fields = {"version": parsed.version, "tag": tag_name}
    click.echo(_send("tag", parsed.name, fields, key_file, tracker, token))


@click.command("rotate-key")
@click.argument("name")
@click.option(
    "--new-key", "new_key_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
    help="The new signing key (PEM); sign the model's next versions with it.",
)  # fmt: skip
@_key_option
@tracker_option
@token_option
def rotate_key(
    name: str, new_key_file: Path, key_file: Path | None, tracker: str | None, token: str | None
) -> None:
    """Move model NAME to a new publisher key, signed by the old one (--key). Consumers see
    the new key at their next fetch and accept it with `p2pdist trust`."""
    from p2pdist.formats.keys import public_key_of

    new_public = public_key_of(_load_key(new_key_file))
    click.echo(_send("rotate-key", name, {"new_key": new_public}, key_file, tracker, token))
    click.echo(f"consumers accept it with: p2pdist trust {name} {new_public}")


__all__ = ["rotate_key", "tag", "yank"]
