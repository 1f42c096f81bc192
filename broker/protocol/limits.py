"""Explicit bounds on what one peer may make the other decode or remember.

Every bound is checked before or while decoding, so a hostile sandbox cannot make the broker
hold more than a constant factor of `max_frame_bytes`. Exceeding any bound is a
`ProtocolError`, which kills the sandbox (docs/DESIGN.md, invariants 2 and 8).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection bounds. Lengths of str and bin are in bytes (UTF-8 for str)."""

    max_frame_bytes: int = 16 * MIB  # body length, not counting the 4-byte prefix
    max_array_len: int = 100_000
    max_map_len: int = 100_000
    max_str_len: int = 16 * MIB
    max_bin_len: int = 16 * MIB
    # Nested containers; the frame's top-level map is depth 1.
    max_depth: int = 32
    # Containers and the values in them, in all, in one frame (each array or map counts one,
    # plus its length): every byte can be an empty map, and 16 MiB of them, decoded in
    # Python, held the broker's thread for over a minute and 1.2 GiB (a red team's tool made
    # one from a few shared arrays).
    max_items: int = 1 << 18
    # Syscalls a sandbox may leave unanswered at once: the only state it can make us grow.
    max_pending_syscalls: int = 1024

    def __post_init__(self) -> None:
        # A bad limit is a configuration bug, not a peer's fault: ValueError, not ProtocolError.
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"limit {f.name} must be a positive int, got {value!r}")
        if self.max_frame_bytes > 0xFFFF_FFFF:
            raise ValueError("max_frame_bytes must fit the u32 length prefix")


DEFAULT_LIMITS = Limits()
