"""Replay payloads (`audit_detail.pack_payload`): a full value is kept beside its record up to
1 MiB; a value surely bigger is refused before it is packed. Packing an 8 MiB read only to
throw it away took the broker's thread tens of milliseconds three times per call (the
syscall's outcome, the tool call's, the stored observation), while every other process
waited (seen in bench/soak_bench.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from broker import AgentImage, CallTool, Kernel, ScriptedPlanner
from broker.kernel import audit_detail
from broker.kernel.audit_detail import MAX_REPLAY_PAYLOAD, pack_payload, surely_bigger
from broker.store.audit import args_hash, args_hash_sized, canonical_json


@pytest.fixture
def packed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of everything msgpack is asked to pack."""
    sizes: list[int] = []
    packer = audit_detail._packer

    class Spy:
        def pack(self, value: Any) -> bytes:
            out: bytes = packer().pack(value)
            sizes.append(len(out))
            return out

    monkeypatch.setattr(audit_detail, "_packer", Spy)
    return sizes


def test_threads_packing_at_once_each_get_their_own_value() -> None:
    """The kept Packer is per thread (WASM tools make syscalls on worker threads): one shared
    Packer's buffer would mix two threads' values. Also: a value that cannot be packed
    leaves nothing behind for the next."""
    assert pack_payload([1, object()]) is None and pack_payload({"a": 1}) == b"\x81\xa1a\x01"
    wrong: list[Any] = []

    def pack_many(n: int) -> None:
        value = {"thread": n, "data": [n] * 50}
        for _ in range(3000):
            payload = pack_payload(value)
            if payload is None or msgpack.unpackb(payload) != value:
                wrong.append(payload)

    threads = [threading.Thread(target=pack_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@pytest.mark.parametrize("value", [
    "x" * (8 << 20),
    {"body": b"\0" * (2 << 20), "status": 200},
    ["é" * 600_000, "é" * 600_000],
    list(range(MAX_REPLAY_PAYLOAD + 1)),
])
def test_a_value_surely_too_big_is_not_packed(value: Any, packed: list[int]) -> None:
    assert surely_bigger(value, MAX_REPLAY_PAYLOAD)
    assert pack_payload(value) is None
    assert packed == []


def test_values_near_the_limit_are_packed_and_judged_by_their_bytes(packed: list[int]
                                                                    ) -> None:
    fits = "x" * (MAX_REPLAY_PAYLOAD - 16)
    assert msgpack.unpackb(pack_payload(fits)) == fits  # type: ignore[arg-type]
    # Fewer characters than the limit, more bytes: packed, then refused by its size.
    wide = "é" * (MAX_REPLAY_PAYLOAD // 2 + 8)
    assert not surely_bigger(wide, MAX_REPLAY_PAYLOAD) and pack_payload(wide) is None
    assert len(packed) == 2


async def test_a_big_read_is_summarized_without_packing_it(tmp_path: Path,
                                                           packed: list[int]) -> None:
    async with Kernel.open(tmp_path / "k.db") as kernel:
        (Path(kernel.fs.root) / "big.txt").write_text("a" * (8 << 20))  # type: ignore[attr-defined]
        await kernel.register_image(AgentImage("reader", tools=("read_file",),
                                               needs=("fs:/**:read",)))
        pid = kernel.spawn("reader", caps=["fs:/**:read"], planner=ScriptedPlanner(
            [CallTool("read_file", {"path": "/big.txt"})]))
        assert (await kernel.wait(pid, timeout=60))["exit_code"] == 0
        step = kernel.process(pid).history[0]
        assert step.ok and step.result.startswith("a" * 256) and len(step.result) < 400
        outcomes = [r for r in kernel.audit(pid) if r["phase"] in ("outcome", "intent+outcome")]
        assert outcomes and all(r["detail"]["ok"] for r in outcomes)
    assert packed and max(packed) < 1024  # only the small values: arguments, nothing read


@pytest.mark.parametrize("args", [{}, {"name": "t", "args": {"n": 0}}, {"b": b"\0" * 10},
                                  {"s": "é" * 100, "n": [1, 2.5, None]}])
def test_the_arguments_hash_comes_with_its_texts_size(args: dict[str, Any]) -> None:
    assert args_hash_sized(args) == (args_hash(args), len(canonical_json(args)))


def test_a_value_whose_text_is_known_small_is_packed_without_the_walk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[Any] = []
    monkeypatch.setattr(audit_detail, "surely_bigger",
                        lambda value, limit: walked.append(value) or surely_bigger(value, limit))
    args = {"name": "t", "args": {"n": 0}}
    _, size = args_hash_sized(args)
    assert pack_payload(args, size) == msgpack.packb(args) and walked == []
    # A text past the limit (or none known): walked first, and refused unpacked when big.
    big = {"body": "x" * (2 << 20)}
    assert pack_payload(big, args_hash_sized(big)[1]) is None and walked == [big]
    assert pack_payload(args) is not None and walked == [big, args]
