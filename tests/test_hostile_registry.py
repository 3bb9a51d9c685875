"""A hostile registry's catalogue: what a compromised or impersonated registry can send a
consumer, and what the consumer does with it (docs/SECURITY.md, "Registry").

Each test runs a real tracker in-process on loopback, publishes a real version to it, and puts
``tests.hostile_registry.HostileRegistry`` between it and a consumer with a real libtorrent
session; the registry forwards everything and alters the answers a test names. Add a test
here for each new way a registry can lie.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pdist.client import RegistryClient
from p2pdist.errors import SignatureError
from p2pdist.formats.bencode import bdecode, bencode
from p2pdist.formats.manifest import WEB_SEEDS_KEY
from p2pdist.formats.torrent import read_torrent
from p2pdist.store.cache import Store
from p2pdist.swarm.origin import create_origin_app
from p2pdist.swarm.seeder import seed_version
from tests.conftest import make_version_folder, small_state_dict
from tests.hostile_registry import (
    MANIFEST_PATH,
    NAME,
    TORRENT_PATH,
    CallRecorder,
    HostileRegistry,
    LoopbackApp,
    World,
    loopback_swarm,
    with_announce,
    with_web_seeds,
)


def test_web_seeds_the_registry_adds_are_never_dialed(swarm_world: World) -> None:
    """Finding 8: the registry adds a web seed (outside the info dict, so the infohash the
    manifest signs still matches) pointing at an internal service; the consumer must not
    send it a single request, and fetches from the peer instead."""
    manifest = swarm_world.publish()
    with (
        CallRecorder() as internal,
        HostileRegistry(swarm_world.tracker) as registry,
        loopback_swarm() as seeder,
        loopback_swarm() as swarm,
    ):
        registry.alter(TORRENT_PATH, with_web_seeds(internal.url))
        seed_version(Store(swarm_world.publisher_home), NAME, "v1", swarm=seeder)
        result = swarm_world.consumer(registry.url, swarm, stall_timeout=30).fetch(f"{NAME}@v1")
        assert any(p.endswith("/torrent") for p in registry.requests)
    assert internal.calls == []
    assert result.bytes_from_web_seeds == 0
    assert result.bytes_from_peers >= manifest.total_size
    stored = Store(swarm_world.consumer_home).torrent(NAME, "v1")
    assert stored is not None and read_torrent(stored).web_seeds == ()  # nor seeded onwards


def test_web_seeds_the_publisher_signed_are_used_even_when_the_registry_drops_them(
    swarm_world: World,
) -> None:
    """The publisher's origin is signed into the manifest: a registry that strips it from the
    torrent cannot take it away (the fetch completes from the origin alone, no peer up)."""
    with LoopbackApp(create_origin_app(Store(swarm_world.publisher_home))) as origin:
        manifest = swarm_world.publish(web_seeds=[origin.url])
        assert manifest.web_seeds == (origin.url,)
        assert manifest.metadata[WEB_SEEDS_KEY] == origin.url
        with HostileRegistry(swarm_world.tracker) as registry, loopback_swarm() as swarm:
            registry.alter(TORRENT_PATH, with_web_seeds())
            result = swarm_world.consumer(registry.url, swarm, stall_timeout=30).fetch(f"{NAME}@v1")
    assert result.bytes_from_web_seeds >= manifest.total_size
    assert result.bytes_from_peers == 0


def test_a_consumers_own_web_seed_setting_is_used(
    swarm_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host may name origins it trusts itself (P2PDIST_WEB_SEEDS): used although neither
    the manifest nor the registry names them."""
    with LoopbackApp(create_origin_app(Store(swarm_world.publisher_home))) as origin:
        manifest = swarm_world.publish()
        assert manifest.web_seeds == ()
        monkeypatch.setenv("P2PDIST_WEB_SEEDS", origin.url)
        with loopback_swarm() as swarm:
            result = swarm_world.consumer(swarm_world.tracker, swarm, stall_timeout=30).fetch(
                f"{NAME}@v1"
            )
    assert result.bytes_from_web_seeds >= manifest.total_size


def test_a_manifest_altered_after_signing_is_refused_before_any_download(
    swarm_world: World,
) -> None:
    swarm_world.publish()

    def grow(status: int, body: bytes) -> tuple[int, bytes]:
        return status, body.replace(b'"metadata":{}', b'"metadata":{"x":"y"}')

    with HostileRegistry(swarm_world.tracker) as registry, loopback_swarm() as swarm:
        registry.alter(MANIFEST_PATH, grow)
        with pytest.raises(SignatureError, match="altered after signing"):
            swarm_world.consumer(registry.url, swarm).fetch(f"{NAME}@v1")
        assert not any(p.endswith("/torrent") for p in registry.requests)
    assert not Store(swarm_world.consumer_home).has(NAME, "v1")


def test_a_torrent_other_than_the_signed_one_is_refused(swarm_world: World) -> None:
    """A registry that swaps the info dict (other pieces, same files) is caught by the
    infohash the manifest signs, before libtorrent sees the torrent."""
    swarm_world.publish()

    def other_pieces(status: int, body: bytes) -> tuple[int, bytes]:
        top = bdecode(body)
        pieces = top[b"info"][b"pieces"]
        top[b"info"][b"pieces"] = bytes([pieces[0] ^ 1]) + pieces[1:]
        return status, bencode(top)

    with HostileRegistry(swarm_world.tracker) as registry, loopback_swarm() as swarm:
        registry.alter(TORRENT_PATH, other_pieces)
        with pytest.raises(SignatureError, match="not the one the signed manifest names"):
            swarm_world.consumer(registry.url, swarm).fetch(f"{NAME}@v1")
    assert not Store(swarm_world.consumer_home).has(NAME, "v1")


def test_trackers_the_registry_names_in_a_torrent_are_never_announced_to(
    swarm_world: World,
) -> None:
    """The consumer announces to the tracker it is configured with, whatever announce URLs
    the registry's torrent carries (they lie outside the info dict)."""
    manifest = swarm_world.publish()
    with (
        CallRecorder() as internal,
        HostileRegistry(swarm_world.tracker) as registry,
        loopback_swarm() as seeder,
        loopback_swarm() as swarm,
    ):
        registry.alter(TORRENT_PATH, with_announce(f"{internal.url}announce"))
        seed_version(Store(swarm_world.publisher_home), NAME, "v1", swarm=seeder)
        fetcher = swarm_world.consumer(registry.url, swarm, stall_timeout=30)
        result = fetcher.fetch(f"{NAME}@v1")
        assert any(p.endswith("/announce") for p in registry.requests)  # announced here
    assert internal.calls == []
    assert result.bytes_from_peers >= manifest.total_size
    stored = Store(swarm_world.consumer_home).torrent(NAME, "v1")
    assert stored is not None and read_torrent(stored).announce == (f"{registry.url}/announce",)


def test_a_manifest_of_another_version_is_refused(swarm_world: World, tmp_path: Path) -> None:
    """A replay: asked for v2, the registry answers with v1's manifest (genuinely signed)."""
    swarm_world.publish("v1")
    v2 = make_version_folder(tmp_path / "v2", small_state_dict(2))
    swarm_world.publish("v2", folder=v2)
    with HostileRegistry(swarm_world.tracker) as registry, loopback_swarm() as swarm:
        v1_manifest = RegistryClient(swarm_world.tracker).manifest_bytes(NAME, "v1")
        registry.answer(r"/versions/v2/manifest$", 200, v1_manifest)
        with pytest.raises(SignatureError, match="answered org/model@v2 with the manifest of"):
            swarm_world.consumer(registry.url, swarm).fetch(f"{NAME}@v2")
    assert not Store(swarm_world.consumer_home).has(NAME, "v2")
