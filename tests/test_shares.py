"""p2pdist.swarm.shares: how consumers of one swarm split its pieces without talking."""

from __future__ import annotations

import libtorrent as lt

from p2pdist.swarm.session import _ShareView, _update_share
from p2pdist.swarm.shares import (
    OTHER_PRIORITY,
    OWN_PRIORITY,
    Share,
    share_of,
    share_priorities,
)

CONSUMERS = ["10.0.0.12", "10.0.0.3", "10.0.0.101", "fd00::7"]


def test_consumers_with_one_view_get_disjoint_shares_covering_every_piece() -> None:
    shares = [share_of(me, [a for a in CONSUMERS if a != me]) for me in CONSUMERS]
    assert sorted(s.rank for s in shares) == [0, 1, 2, 3]
    assert {s.of for s in shares} == {4}
    # ranked by address, not as text: 10.0.0.3 < 10.0.0.12 < 10.0.0.101 < any IPv6
    assert [s.rank for s in shares] == [1, 0, 2, 3]
    wanted = [4] * 22
    firsts = [share_priorities(s, wanted) for s in shares]
    for piece in range(22):
        assert [p[piece] for p in firsts].count(OWN_PRIORITY) == 1


def test_a_peer_listed_twice_or_sharing_our_address_takes_no_extra_share() -> None:
    assert share_of("10.0.0.3", ["10.0.0.3", "10.0.0.12", "10.0.0.12"]) == Share(0, 2)


def test_alone_every_piece_is_ours() -> None:
    assert share_of("10.0.0.3", []) == Share(0, 1)
    assert share_priorities(Share(0, 1), [4, 4, 4]) == [OWN_PRIORITY] * 3


def test_pieces_of_unwanted_files_stay_unwanted() -> None:
    current = [4, 0, 4, 0, 7, 1]
    assert share_priorities(Share(1, 2), current) == [
        OTHER_PRIORITY,
        0,
        OTHER_PRIORITY,
        0,
        OTHER_PRIORITY,
        OWN_PRIORITY,
    ]


def test_a_name_that_is_not_an_address_still_ranks() -> None:
    assert share_of("host-b", ["host-a", "10.0.0.1"]) == Share(1, 3)  # names first


def test_an_ipv4_mapped_address_is_the_same_host() -> None:
    assert share_of("::ffff:10.0.0.3", ["10.0.0.3", "10.0.0.12"]) == Share(0, 2)
    assert share_of("10.0.0.12", ["::ffff:10.0.0.3"]) == Share(1, 2)


class FakePeer:
    """What `_update_share` reads of a libtorrent peer_info."""

    def __init__(self, ip: str, local: str, *, flags: int = 0, web: bool = False) -> None:
        self.ip = (ip, 6881)
        self._local = (local, 40000)
        self.flags = flags
        self.connection_type = lt.peer_info.web_seed if web else lt.peer_info.standard_bittorrent

    def local_endpoint(self) -> tuple[str, int]:
        return self._local


class FakeHandle:
    """A torrent handle with piece priorities and a peer list that tests change."""

    def __init__(self, pieces: int) -> None:
        self.peers: list[FakePeer] = []
        self.priorities = [4] * pieces
        self.prioritized = 0
        self.removed = False

    def get_peer_info(self) -> list[FakePeer]:
        if self.removed:
            raise RuntimeError("invalid torrent handle used")
        return list(self.peers)

    def get_piece_priorities(self) -> list[int]:
        return list(self.priorities)

    def prioritize_pieces(self, priorities: list[int]) -> None:
        self.prioritized += 1
        self.priorities = list(priorities)


ME = "10.0.0.5"


def test_the_hook_ranks_downloading_peers_only_and_keeps_ranks_of_peers_that_leave() -> None:
    handle, view = FakeHandle(6), _ShareView()
    handle.peers = [
        FakePeer("10.0.0.9", ME, flags=lt.peer_info.seed),  # the seed takes no share
        FakePeer("10.0.0.8", ME, web=True),  # nor does a web seed
        FakePeer("10.0.0.7", ME, flags=lt.peer_info.upload_only),  # nor a partial seed
        FakePeer("10.0.0.6", ME, flags=lt.peer_info.handshake),  # not counted yet
    ]
    _update_share(handle, view)
    assert view.share == Share(0, 1) and handle.prioritized == 0  # alone: untouched
    handle.peers.append(FakePeer("10.0.0.2", ME))
    _update_share(handle, view)
    assert view.share == Share(1, 2)
    assert handle.priorities == [4, 7, 4, 7, 4, 7]
    handle.peers.pop()  # it finished or dropped: it keeps its rank, nothing changes
    _update_share(handle, view)
    assert view.share == Share(1, 2) and handle.prioritized == 1
    handle.removed = True  # a handle removed meanwhile is no error here
    _update_share(handle, view)
    assert view.share == Share(1, 2)


def test_the_hook_keeps_our_address_once_chosen() -> None:
    handle, view = FakeHandle(4), _ShareView()
    handle.peers = [FakePeer("10.0.0.2", ME), FakePeer("10.0.0.9", ME, flags=lt.peer_info.seed)]
    _update_share(handle, view)
    assert view.own == ME and view.share == Share(1, 2)
    # more peers now see us under another address (a second interface): we keep ours
    handle.peers += [FakePeer(f"10.0.0.{i}", "10.1.0.5") for i in (20, 21, 22)]
    _update_share(handle, view)
    assert view.own == ME and view.share == Share(1, 5)
