#!/usr/bin/env bash
# Publish an existing Hugging Face model folder with p2pdist and fetch it on a second "host".
#
#   examples/publish_hf_folder.sh FOLDER [NAME] [OUTDIR]
#
#   FOLDER  a folder written by save_pretrained(..., safe_serialization=True): *.safetensors
#           (one file or shards + model.safetensors.index.json) and small side files
#           (config.json, tokenizer files, ...), published byte for byte.
#   NAME    model name, default the folder's name; must lie in your token's namespace
#           (org/name for a token made with `p2pdist tracker token --namespace org`).
#   OUTDIR  where the second host puts its copy, default ./<name>-fetched (must not exist
#           or be empty).
#
# Needs, in the environment:
#   P2PDIST_TRACKER  the registry/tracker URL, e.g. http://127.0.0.1:6969
#   P2PDIST_TOKEN    a token with publish right on NAME's namespace
# and optionally VERSION (default v1), P2PDIST_HOME / P2PDIST_CONFIG_DIR (the publishing
# host's store and signing key; default ~/.cache/p2pdist, ~/.config/p2pdist) and
# P2PDIST_LISTEN (127.0.0.1 to stay on loopback). Uses the `p2pdist` found on PATH.
#
# What it does: (1) `p2pdist publish` in the background: store, sign, register, then seed;
# (2) as a second host (its own P2PDIST_HOME and P2PDIST_CONFIG_DIR in a temporary folder,
# no token) `p2pdist fetch NAME@VERSION --out OUTDIR --json` from the swarm, then
# `p2pdist verify` (signature + blake3 of every file) and a byte comparison with FOLDER;
# (3) stops the publisher, whatever happened (trap EXIT).
set -euo pipefail

usage() { echo "usage: $0 FOLDER [NAME] [OUTDIR]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 3 ]] || usage
FOLDER=${1%/}
[[ -d "$FOLDER" ]] || { echo "error: $FOLDER is not a folder" >&2; exit 1; }
NAME=${2:-$(basename "$FOLDER")}
OUTDIR=${3:-./$(basename "$NAME")-fetched}
VERSION=${VERSION:-v1}
: "${P2PDIST_TRACKER:?set P2PDIST_TRACKER to the tracker URL (p2pdist tracker serve)}"
: "${P2PDIST_TOKEN:?set P2PDIST_TOKEN to a publish token (p2pdist tracker token)}"
command -v p2pdist >/dev/null || { echo "error: p2pdist is not on PATH" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/p2pdist-hf.XXXXXX")
PUBLISHER_PID=""
cleanup() {
    if [[ -n "$PUBLISHER_PID" ]] && kill -0 "$PUBLISHER_PID" 2>/dev/null; then
        kill "$PUBLISHER_PID" 2>/dev/null || true   # stops seeding (SIGINT is ignored in `&` jobs)
        wait "$PUBLISHER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. Publish and keep seeding, in the background; wait until it says it seeds.
echo "== publishing $FOLDER as $NAME@$VERSION (seeding in the background)"
p2pdist publish "$FOLDER" --name "$NAME" --version "$VERSION" >"$WORK/publish.log" 2>&1 &
PUBLISHER_PID=$!
for _ in $(seq 1 600); do   # up to 5 minutes: hashing a large model takes a while
    grep -q "^Seeding" "$WORK/publish.log" && break
    if ! kill -0 "$PUBLISHER_PID" 2>/dev/null; then
        cat "$WORK/publish.log" >&2
        echo "error: p2pdist publish exited before seeding" >&2
        exit 1
    fi
    sleep 0.5
done
grep -q "^Seeding" "$WORK/publish.log" || { cat "$WORK/publish.log" >&2; exit 1; }
cat "$WORK/publish.log"

# 2. A second host: its own store and config dir, read access only.
echo "== fetching $NAME@$VERSION on a second host into $OUTDIR"
consumer() {
    env -u P2PDIST_TOKEN P2PDIST_HOME="$WORK/consumer/home" \
        P2PDIST_CONFIG_DIR="$WORK/consumer/config" p2pdist "$@"
}
consumer fetch "$NAME@$VERSION" --out "$OUTDIR" --json
consumer verify "$NAME@$VERSION"
# Every file p2pdist publishes (hidden ones are skipped) must have arrived unchanged.
( cd "$FOLDER" && find . -type f -not -path '*/.*' ) | while read -r file; do
    cmp -s "$FOLDER/$file" "$OUTDIR/$file" || { echo "error: $file differs" >&2; exit 1; }
done
echo "== $OUTDIR holds $NAME@$VERSION, byte for byte; load it with from_pretrained(\"$OUTDIR\")"
