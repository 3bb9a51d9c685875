"""Choosing how to get a version: already here, a chain of deltas from a stored version, or full.

The plan is a pure function of the target manifest, what the store holds, and the manifests
of the versions between them; it picks whichever moves the fewest bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from p2pdist.formats.manifest import Manifest

MAX_CHAIN = 64
"""Longest delta chain considered; beyond it a full download is cheaper to reason about."""


@dataclass(frozen=True)
class FetchPlan:
    """How a fetch gets ``target``.

    ``kind`` is ``local`` (nothing to move), ``delta`` (apply ``chain`` in order, starting from
    ``base``, a version in the store), or ``full``. ``bytes`` is what the plan downloads;
    ``full_bytes`` what a full download would.
    """

    kind: Literal["local", "delta", "full"]
    target: Manifest
    bytes: int
    full_bytes: int
    base: str | None = None
    chain: tuple[Manifest, ...] = ()

    def describe(self) -> str:
        if self.kind == "local":
            return "already in the store"
        if self.kind == "full":
            return f"full download ({self.bytes} bytes)"
        steps = " -> ".join([self.base or "?", *(m.version for m in self.chain)])
        return f"delta chain {steps} ({self.bytes} of {self.full_bytes} bytes)"


def make_plan(
    target: Manifest,
    has_version: Callable[[str], bool],
    manifest_of: Callable[[str], Manifest],
) -> FetchPlan:
    """The cheapest way to ``target``: ``has_version`` asks the store, ``manifest_of`` the registry.

    ``manifest_of`` must return verified manifests (signature and trusted key): the chain's
    manifests name the delta torrents that will be trusted.
    """
    full = target.total_size
    if has_version(target.version):
        return FetchPlan("local", target, 0, full)
    chain = [target]
    current = target
    seen = {target.version}
    while current.parent is not None and len(chain) <= MAX_CHAIN:
        if current.delta_torrent is None:
            break
        if has_version(current.parent):
            cost = sum(m.delta_size for m in chain)
            if cost < full:
                return FetchPlan("delta", target, cost, full, current.parent, tuple(chain))
            break
        if current.parent in seen:
            break
        seen.add(current.parent)
        current = manifest_of(current.parent)
        if sum(m.delta_size for m in chain) + current.delta_size >= full:
            break
        chain.insert(0, current)
    return FetchPlan("full", target, full, full)
