"""Red team (the channel): the containers and values of one frame are counted, both ways.

A body of 16 MiB holds 16 million one-byte empty maps; decoded in Python they took the
broker's thread over a minute and 1.2 GiB (tests/sandboxes/test_frame_items_redteam.py has
the tool that sent them). The decoder counts each container as msgpack builds it and stops
at `Limits.max_items`; the encoder refuses what the decoder would.
"""

from __future__ import annotations

import threading

import pytest

from broker.errors import ProtocolError
from broker.protocol import DEFAULT_LIMITS, Limits, decode_body, encode_frame
from broker.protocol.frames import FrameDecoder, body_decoder


def _maps_body(n: int) -> bytes:
    """A `result` frame's body whose value is `n` empty maps in arrays of 100,000 at most."""
    sizes = [100_000] * (n // 100_000) + ([n % 100_000] if n % 100_000 else [])
    arrays = b"".join(b"\xdd" + k.to_bytes(4, "big") + b"\x80" * k for k in sizes)
    return b"\x83\xa1t\xa6result\xa2id\x01\xa5value\xdc" + len(sizes).to_bytes(2, "big") + arrays


def test_a_body_of_many_empty_maps_is_refused_once_counted_past_the_bound() -> None:
    body = _maps_body(16 * 100_000)  # 1.6 million: far past the bound, 1.6 MB
    with pytest.raises(ProtocolError, match="containers and values"):
        decode_body(body)
    decoder = FrameDecoder()
    decoder.feed(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError, match="containers and values"):
        decoder.next_frame()


def test_the_bound_is_exact_and_counts_each_container_once() -> None:
    value = [{}, {}, []]  # the message map 1 + 3, the array 1 + 3, each empty one 1: 11
    msg = {"t": "result", "id": 1, "value": value}
    assert decode_body(encode_frame(msg, Limits(max_items=11))[4:], Limits(max_items=11)) == msg
    with pytest.raises(ProtocolError, match="more than 10 containers"):
        encode_frame(msg, Limits(max_items=10))
    with pytest.raises(ProtocolError, match="more than 10 containers"):
        decode_body(encode_frame(msg, Limits(max_items=11))[4:], Limits(max_items=10))


def test_a_frame_within_the_bound_decodes_and_the_count_starts_again_each_frame() -> None:
    n = DEFAULT_LIMITS.max_items // 2  # twice over, one frame after the other: each fits
    decoder = FrameDecoder()
    body = _maps_body(n - 10)
    for _ in range(2):
        decoder.feed(len(body).to_bytes(4, "big") + body)
        assert len([m for arr in decoder.next_frame()["value"] for m in arr]) == n - 10


def test_threads_count_their_own_frames() -> None:
    """A WASM tool's bodies are decoded on worker threads: each thread's count is its own."""
    decode = body_decoder()
    small = encode_frame({"t": "result", "id": 1, "value": [[]] * 1000})[4:]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                decode(small)
        except BaseException as exc:  # pragma: no cover (the failure shown)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
