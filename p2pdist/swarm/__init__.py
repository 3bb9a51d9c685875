"""Everything that moves bytes between hosts.

- ``session``: the one libtorrent session of the process (``Swarm``, ``get_swarm``);
- ``settings``: how that session is configured, from p2pdist's configuration;
- ``seeder``: serving the store's versions to the swarm;
- ``origin``: an HTTP origin (web seed, BEP 19) over the store;
- ``plan``: which torrents a fetch needs (a delta chain or the full version).

libtorrent's objects never leave this package: callers speak in torrents, folders and
manifests.
"""
