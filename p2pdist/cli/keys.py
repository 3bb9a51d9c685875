"""``p2pdist keygen`` and ``p2pdist trust``: the publisher's key and the consumer's pins."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--force", is_flag=True, help="Replace an existing key (consumers must accept the rotation)."
)
def keygen(force: bool) -> None:
    """Create this host's ed25519 signing key in the config dir."""
    from p2pdist.formats.keys import generate_signing_key, load_signing_key, public_key_of

    path = generate_signing_key(overwrite=force)
    click.echo(f"Signing key: {path} (mode 600)")
    click.echo(f"Public key:  {public_key_of(load_signing_key())}")


@click.command()
@click.argument("name")
@click.argument("public_key")
def trust(name: str, public_key: str) -> None:
    """Pin (or deliberately rotate) the publisher key of model NAME."""
    from p2pdist.formats.keys import TrustStore

    store = TrustStore()
    previous = store.get(name)
    store.trust(name, public_key)
    verb = "Rotated" if previous and previous != public_key.lower() else "Pinned"
    click.echo(f"{verb} publisher key of {name}: {public_key.lower()}")
