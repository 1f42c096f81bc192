"""Micro-benchmark of the hot path of broker/protocol: one syscall and its answer.

Run with `python -m bench.protocol_bench`. Figures are µs per operation, best of several
repeats, beside raw msgpack on the same dicts in the same run, so the cost of framing,
validation and state tracking can be read off directly.
"""

from __future__ import annotations

from itertools import count

import msgpack

from bench.timing import best_us
from broker.protocol import (
    PROTOCOL_VERSION,
    Call,
    Connection,
    FrameDecoder,
    Hello,
    Syscall,
    SyscallResult,
    encode_frame,
    parse_message,
)

ARGS = {"path": "/work/notes/todo.md", "offset": 0, "length": 4096}
VALUE = {"data": "- [ ] write the report\n", "eof": True, "size": 24}




def _pair() -> tuple[Connection, Connection]:
    broker, sandbox = Connection("broker"), Connection("sandbox")
    broker.receive_data(sandbox.send(Hello(PROTOCOL_VERSION, "deno")))
    broker.next_event()
    sandbox.receive_data(broker.send(Call(1, "notes", {})))
    sandbox.next_event()
    return broker, sandbox


def run(number: int = 20_000, repeat: int = 5) -> dict[str, float]:
    """µs per operation; keys ending in _raw are plain msgpack.packb/unpackb of the same dicts."""
    syscall = Syscall(1, 0, "fs.read", ARGS)
    wire = syscall.to_wire()
    sysret_wire = SyscallResult.success(1, 0, VALUE).to_wire()
    decoder = FrameDecoder()

    def encode_decode() -> None:
        decoder.feed(encode_frame(syscall.to_wire()))
        parse_message(decoder.next_frame())

    def encode_decode_raw() -> None:
        msgpack.unpackb(msgpack.packb(wire))

    broker, sandbox = _pair()
    seqs = count()

    def round_trip() -> None:
        seq = next(seqs)
        broker.receive_data(sandbox.send(Syscall(1, seq, "fs.read", ARGS)))
        got = broker.next_event()
        sandbox.receive_data(broker.send(SyscallResult.success(1, got.seq, VALUE)))  # type: ignore[union-attr]
        sandbox.next_event()

    def round_trip_raw() -> None:
        msgpack.unpackb(msgpack.packb(wire))
        msgpack.unpackb(msgpack.packb(sysret_wire))

    return {
        "syscall_frame_bytes": float(len(encode_frame(wire))),
        "encode_decode_us": best_us(encode_decode, number, repeat),
        "encode_decode_raw_us": best_us(encode_decode_raw, number, repeat),
        "round_trip_us": best_us(round_trip, number, repeat),
        "round_trip_raw_us": best_us(round_trip_raw, number, repeat),
    }


def main() -> None:
    for name, value in run().items():
        print(f"{name:24} {value:8.2f}")


if __name__ == "__main__":
    main()
