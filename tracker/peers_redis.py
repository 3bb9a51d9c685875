"""Peers in Redis (``tracker serve --peers redis://…``): one swarm shared by tracker replicas.

As chihaya's Redis driver and Kraken's Redis peerstore: a peer announced to one replica is
handed out by every other, and a replica that restarts loses nothing. Needs the ``redis``
extra (redis-py's asyncio client): ``pip install 'p2pdist[redis]'``.

Layout per swarm (the ``{hex}`` hash tag keeps one swarm's keys in one Redis Cluster slot):
``p2pdist:{hex}:s`` and ``:l`` are sorted sets of seeders and leechers (member: the compact
address, score: the wall-clock time its entry expires), ``:id`` maps a member to its peer id
(so a late ``stopped`` of a re-added torrent does not drop the live entry), ``:d`` counts
completed downloads. Every key also carries a Redis TTL renewed by each announce, so a
swarm nobody announces to vanishes by itself. Entries live ``ttl`` seconds (the tracker
passes a little over two announce intervals), so a replica restart or a late announce loses
nothing.

One announce is one Lua script (one round trip): prune expired entries, record or remove
the peer, count, and sample. Sampling uses ``ZRANDMEMBER``: a seeder gets leechers; a
leecher gets seeders first, then leechers. Unlike the in-process store, peers per address
are not capped here (the per-swarm cap still holds). Scrapes are one pipeline of
``ZCOUNT``s. Expiry times are wall-clock (``time.time()``), shared by replicas on hosts with
synchronised clocks; the ``now`` the caller passes (monotonic, per process) is not used.

A Redis that cannot be reached makes ``record`` raise ``StoreError`` naming it; the
announce is refused with that line, and the next announce reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from p2pdist.errors import ConfigError, StoreError
from p2pdist.tracker.peers import MAX_PEERS_PER_SWARM, Peer, PeerSample, Recorded, SwarmCounts

_ANNOUNCE = """
local s, l, d, ids = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member, pid, seeder, event = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local numwant, now, ttl, maxp = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
for _, set in ipairs({s, l}) do
  local stale = redis.call('ZRANGEBYSCORE', set, '-inf', now)
  if #stale > 0 then
    redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
    redis.call('HDEL', ids, unpack(stale))
  end
end
local accepted = 1
if event == 'stopped' then
  if redis.call('HGET', ids, member) == pid then
    redis.call('ZREM', s, member)
    redis.call('ZREM', l, member)
    redis.call('HDEL', ids, member)
  end
else
  local was_seeder = redis.call('ZSCORE', s, member)
  local known = was_seeder or redis.call('ZSCORE', l, member)
  if not known and redis.call('ZCARD', s) + redis.call('ZCARD', l) >= maxp then
    accepted = 0
  else
    if seeder then
      redis.call('ZREM', l, member)
      redis.call('ZADD', s, now + ttl, member)
      if not was_seeder and event == 'completed' then redis.call('INCR', d) end
    else
      redis.call('ZREM', s, member)
      redis.call('ZADD', l, now + ttl, member)
    end
    redis.call('HSET', ids, member, pid)
  end
end
local ms = math.ceil(ttl * 1000)
for _, key in ipairs({s, l, ids, d}) do redis.call('PEXPIRE', key, ms) end
local peers = {}
if accepted == 1 and event ~= 'stopped' and numwant > 0 then
  local pools = seeder and {l} or {s, l}
  for _, pool in ipairs(pools) do
    for _, p in ipairs(redis.call('ZRANDMEMBER', pool, numwant + 1)) do
      if p ~= member and #peers < numwant then peers[#peers + 1] = p end
    end
  end
end
return {accepted, redis.call('ZCARD', s), redis.call('ZCARD', l),
        tonumber(redis.call('GET', d) or '0'), peers}
"""


def redacted(url: str) -> str:
    """``url`` without its password."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, auth = head.partition("://")
    user = auth.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}" if user else f"{scheme}://***@{tail}"


def _keys(info_hash: bytes) -> list[str]:
    base = f"p2pdist:{{{info_hash.hex()}}}"
    return [f"{base}:s", f"{base}:l", f"{base}:d", f"{base}:id"]


class RedisPeerStore:
    """The Redis peer store; every method answers with a coroutine."""

    def __init__(
        self, url: str, ttl: float, max_peers_per_swarm: int = MAX_PEERS_PER_SWARM
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError
        except ImportError:
            raise ConfigError(
                "--peers redis://… needs redis-py: pip install 'p2pdist[redis]'"
            ) from None
        self.location = redacted(url)
        self.ttl = ttl
        self.max_peers_per_swarm = max_peers_per_swarm
        self._errors: type[Exception] = RedisError
        self._redis: Any = aioredis.from_url(
            url, socket_connect_timeout=5, socket_timeout=5, health_check_interval=30
        )
        self._script = self._redis.register_script(_ANNOUNCE)
        self._total = 0
        self._counting: asyncio.Task[None] | None = None

    def _failure(self, error: Exception) -> StoreError:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return StoreError(f"peer store {self.location} is unreachable ({first})")

    async def record(
        self, info_hash: bytes, peer: Peer, event: str, numwant: int, now: float
    ) -> Recorded:
        args = [
            peer.compact, peer.peer_id, "1" if peer.seeder else "0", event, numwant,
            repr(time.time()), repr(self.ttl), self.max_peers_per_swarm,
        ]  # fmt: skip
        try:
            accepted, seeders, leechers, downloaded, found = await self._script(
                keys=_keys(info_hash), args=args
            )
        except self._errors as e:
            raise self._failure(e) from None
        counts = SwarmCounts(int(seeders), int(leechers), int(downloaded))
        v4 = b"".join(p for p in found if len(p) == 6)
        v6 = b"".join(p for p in found if len(p) == 18)
        return Recorded(bool(accepted), counts, PeerSample(v4, v6))

    async def scrape(self, info_hashes: Sequence[bytes]) -> list[SwarmCounts]:
        if not info_hashes:
            return []
        now = repr(time.time())
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for info_hash in info_hashes:
                    s, leech, d, _ = _keys(info_hash)
                    pipe.zcount(s, f"({now}", "+inf")
                    pipe.zcount(leech, f"({now}", "+inf")
                    pipe.get(d)
                found = await pipe.execute()
        except self._errors as e:
            raise self._failure(e) from None
        return [
            SwarmCounts(int(found[i]), int(found[i + 1]), int(found[i + 2] or 0))
            for i in range(0, len(found), 3)
        ]

    def expire(self, now: float) -> int:
        """Entries are pruned by each announce and keys expire in Redis; this only starts a
        recount of the live entries for ``total_peers`` (a SCAN, off the hot path)."""
        if self._counting is None or self._counting.done():
            self._counting = asyncio.get_running_loop().create_task(self._count())
        return 0

    def total_peers(self) -> int:
        """Live entries over all swarms, as last counted by ``expire``."""
        return self._total

    async def _count(self) -> None:
        now = repr(time.time())
        total = 0
        try:
            async for key in self._redis.scan_iter(match="p2pdist:{*}:[sl]", count=1000):
                total += await self._redis.zcount(key, f"({now}", "+inf")
        except self._errors:
            return  # unreachable now; the next sweep counts again
        self._total = total

    async def close(self) -> None:
        if self._counting is not None:
            self._counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counting
        await self._redis.aclose()


__all__ = ["RedisPeerStore"]
