"""Bytes on disk and on the wire: what p2pdist writes, reads and signs.

- ``header``: safetensors headers, parsed and checked as strictly as safetensors itself;
- ``shards``: a Hugging Face folder of safetensors shards and its index;
- ``manifest``: the signed ``p2pdist.json`` (every file's size and blake3);
- ``digest``: blake3 of files and buffers;
- ``keys``: the publisher's ed25519 key and the consumer's pins;
- ``torrent``: .torrent files (v1, hybrid, v2) made from and checked against a folder;
- ``bencode``: BitTorrent's encoding, strict both ways;
- ``jsonio``: the one strict JSON reader (depth, number, key limits) for all of the above
  and for whatever a registry or a client sends.

Nothing here opens a socket or starts a thread; the flows (fetch, publish) and the tracker
import these as their shared vocabulary (docs/FORMAT.md is the specification).
"""
