"""The one strict JSON reader (p2pdist/formats/jsonio.py) and every reader that uses it.

Hostile documents (nested 100,000 deep, 5,000-digit numbers, NaN, repeated keys) must be a
one-line FormatError wherever p2pdist reads JSON from someone else: manifests, delta
indexes (delta.json), codec tables in a delta file's header, shard indexes, registry
answers. Before, they escaped as RecursionError / ValueError tracebacks.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from p2pdist.delta.codec import META_KEY
from p2pdist.delta.file import read_table
from p2pdist.delta.table import DeltaIndex
from p2pdist.errors import FormatError
from p2pdist.formats import jsonio
from p2pdist.formats.manifest import Manifest
from p2pdist.formats.shards import index_shard_names

DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE = [
    (DEEP, "nested too deeply"),
    ('{"a":' * 70 + "1" + "}" * 70, "nested too deeply"),  # under Python's limit, over ours
    ('{"size": ' + "9" * 5000 + "}", "5000 characters"),
    ('{"size": 1' + "0" * 100 + ".5}", "characters"),
    ('{"size": 1e999}', "out of range"),
    ('{"size": NaN}', "NaN is not JSON"),
    ('{"size": -Infinity}', "Infinity is not JSON"),
    ('{"a": 1, "a": 2}', "'a' appears twice"),
    ('{"a": 1', "line 1 column 8"),
    (b'{"a": "\xff"}', "not UTF-8 at byte 7"),
]


@pytest.mark.parametrize(("text", "reason"), HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_json_is_one_format_error(text: str | bytes, reason: str) -> None:
    with pytest.raises(FormatError) as refused:
        jsonio.loads(text, what="thing")
    message = str(refused.value)
    assert message.startswith("thing is not valid UTF-8 JSON (") and reason in message
    assert "\n" not in message and len(message) < 300


def test_ordinary_json_reads_as_json_does() -> None:
    doc = {"a": [1, 2.5, -3, None, True, "é"], "b": {"c": {"d": 2**63 - 1}}, "e": 1e300}
    text = json.dumps(doc)
    assert jsonio.loads(text, what="x") == json.loads(text)
    assert jsonio.loads(text.encode(), what="x") == doc
    nested = '{"a":' * 64 + "1" + "}" * 64
    assert jsonio.loads(nested, what="x") is not None  # exactly at the limit


@pytest.mark.parametrize(("text", "reason"), HOSTILE[:4], ids=range(4))
def test_manifests_delta_indexes_and_shard_indexes_refuse_it(text: str, reason: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for parse in (
        lambda: Manifest.from_bytes(data, source="m"),
        lambda: DeltaIndex.from_bytes(data, source="delta.json"),
        lambda: index_shard_names(data, source="model.safetensors.index.json"),
    ):
        with pytest.raises(FormatError, match=reason):
            parse()


def test_a_hostile_codec_table_in_a_delta_header_is_a_format_error(tmp_path: Path) -> None:
    for table, reason in ((DEEP, "nested too deeply"), ('{"size": ' + "9" * 5000 + "}", "5000")):
        header = json.dumps({"__metadata__": {META_KEY: table}}, separators=(",", ":")).encode()
        path = tmp_path / "model.safetensors.delta"
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        with pytest.raises(FormatError, match=reason):
            read_table(path, "model.safetensors", 10)
