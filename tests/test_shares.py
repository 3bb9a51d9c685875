"""p2pdist.swarm.shares: how consumers of one swarm split its pieces without talking."""

from __future__ import annotations

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
