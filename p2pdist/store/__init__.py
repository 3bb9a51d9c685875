"""The local store: content-addressed blobs, one committed folder per version, and what
p2pdist remembers about files it already proved.

- ``cache``: the store itself (``Store``): blobs, snapshots, staging, locks, gc;
- ``records``: verify-once records (a file's identity when it last hashed right);
- ``verified``: checking files against a manifest, once or every time.
"""
