"""The delta format's zstd window limit (docs/FORMAT_DELTA.md: at most 16 MiB) is enforced on
decoding, not only on the streaming path that zstd checks by itself."""

from __future__ import annotations

import io

import numpy as np
import pytest
import zstandard

from p2pdist.delta.codec import MAX_WINDOW_SIZE, decode_plane, encode_plane
from p2pdist.errors import FormatError


def _frame_with_window(data: bytes, window_log: int) -> bytes:
    """A zstd frame of ``data`` whose header declares a 2**window_log window and the content
    size (zstd itself shrinks the window to the content when it knows the size up front, so
    the size field is spliced into a streamed frame's header by hand)."""
    params = zstandard.ZstdCompressionParameters(
        window_log=window_log, write_content_size=False, write_checksum=False
    )
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
        buf, closefd=False
    ) as writer:
        writer.write(data)
    frame = buf.getvalue()
    descriptor = frame[4]
    assert descriptor & 0xE0 == 0, "expected a frame with a window byte and no size field"
    size_field = len(data).to_bytes(4, "little")  # frame content size flag 2: four bytes
    return frame[:4] + bytes([descriptor | 0x80]) + frame[5:6] + size_field + frame[6:]


def test_a_plane_whose_frame_declares_a_window_above_the_limit_is_refused() -> None:
    data = bytes(range(256)) * 64
    frame = _frame_with_window(data, 25)
    params = zstandard.get_frame_parameters(frame)
    assert params.window_size == 1 << 25 > MAX_WINDOW_SIZE
    assert params.content_size == len(data)
    # the frame itself is sound: zstd decodes it, the limit is the format's
    assert zstandard.ZstdDecompressor().decompress(frame) == data
    with pytest.raises(FormatError, match="window"):
        decode_plane("zstd", frame, len(data))


def test_a_frame_at_the_limit_and_our_own_frames_still_decode() -> None:
    data = bytes(range(256)) * 64
    at_limit = _frame_with_window(data, MAX_WINDOW_SIZE.bit_length() - 1)
    assert zstandard.get_frame_parameters(at_limit).window_size == MAX_WINDOW_SIZE
    decoded = decode_plane("zstd", at_limit, len(data))
    assert decoded is not None and decoded.tobytes() == data
    plane = np.frombuffer(bytes(3 << 20), dtype=np.uint8)  # compressible: coded as zstd
    coded = encode_plane(plane)
    assert coded.codec == "zstd"
    decoded = decode_plane(coded.codec, coded.payload, plane.size)
    assert decoded is not None and np.array_equal(decoded, plane)
