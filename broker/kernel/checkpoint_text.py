"""A step's checkpoint state as JSON text, composed from text kept per process.

The scheduler saves two checkpoints a step (`recovery.save_step`; the one after a step is
mostly superseded by the next one's in its batch), and between two little of the state
changes: the usage counters, the pending action and the head of the audit. Building the
whole dict (`recovery.capture`) and encoding it again each time was most of what a
checkpoint cost the broker's thread. Here the parts that change rarely (cwd, requests,
image, labels...) are encoded once and kept on the process with what they were made from;
a checkpoint encodes only its pending action and planner state.

The text is exactly what the store would write for `recovery.capture`'s dict (the same
encoder, the same keys in the same order; pinned in tests/broker/kernel/test_checkpoint_text.py).
Whatever this does not cover returns None and goes the whole way: an exit request (its result
may be any value), a usage counter that is not a plain int, and text that is not ASCII (which
the store checks for lone surrogates), and a kept field whose value is not of its plain type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.json_text import encoder

if TYPE_CHECKING:
    from broker.kernel.process import AgentProcess

# As the store encodes a checkpoint's state (`broker.store.durable`): the same text.
_JSON = encoder(default=repr)


def _stable(proc: AgentProcess) -> tuple[Any, ...]:
    """What the kept text is made from: the fields of a checkpoint that are not counters,
    pending action or planner state (all immutable values: compared, never mutated)."""
    return (proc.cwd, proc.pause_requested, proc.pid, proc.image.name, proc.image.version,
            proc.history_from, proc.label)


def _same_objects(proc: AgentProcess, key: tuple[Any, ...]) -> bool:
    """The fields are the very objects the kept text was made from (`_stable`'s order): no
    equality asked of them, and their types were checked when it was made. Most steps."""
    image = proc.image
    cwd, pause, pid, name, version, history_from, label = key  # (cheaper than indexing)
    return (proc.cwd is cwd and proc.pause_requested is pause and proc.pid is pid
            and image.name is name and image.version is version
            and proc.history_from is history_from and proc.label is label)


# The kept text's parts that do not name the process, by what they are made from: most
# processes of a broker start alike (their first checkpoint makes its parts), so they are
# encoded once for all of them. Bounded: emptied when full.
_SHARED: dict[tuple[Any, ...], tuple[str, str, str]] = {}
_SHARED_MAX = 256


def _parts(key: tuple[Any, ...]) -> tuple[str, str, str]:
    cwd, pause, pid, name, version, history_from, label = key
    alike = (cwd, pause, name, version, history_from, label)
    # (Found by equality, as the kept text is: labels of a type not str, whose 1 would find
    # True's text, are encoded for this process alone.)
    plain = all(type(tag) is str for tag in label)
    shared = _SHARED.get(alike) if plain else None
    if shared is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        shared = (
            '{"cwd":' + _JSON(cwd) + ',"usage":',
            ',"exit_request":null,"pause_requested":' + _JSON(pause) + ',"planner":',
            ',"image":' + _JSON([name, version]) + ',"history_from":' + _JSON(history_from)
            + ',"labels":' + _JSON(sorted(label)))
        if plain:
            _SHARED[alike] = shared
    return shared[0], shared[1], ',"objects":' + _JSON(f"proc/{pid}") + shared[2]


def state_text(proc: AgentProcess, pending: dict[str, Any] | None,
               audit_from: int | None, *, pending_text: str | None = None) -> str | None:
    """`recovery.capture(proc, ...)` (with `audit_from` when given) as the store's JSON
    text, or None where the whole way must be taken. `pending`: the action, as JSON data;
    or `pending_text`, its text (`action_text`)."""
    if proc.exit_request is not None:
        return None
    usage = proc.usage
    steps, calls, syscalls, log_bytes = (usage.steps, usage.tool_calls, usage.syscalls,
                                         usage.log_bytes)
    if not (type(steps) is int and type(calls) is int and type(syscalls) is int
            and type(log_bytes) is int):
        return None
    kept = proc.checkpoint_text
    if kept is None or not _same_objects(proc, kept[0]):
        # The kept text is found by equality: a value whose type is not the plain one (a str
        # subclass whose `__eq__` says yes to anything, 1 against True) could find text made
        # from another value. Those go the whole way.
        if not (type(proc.cwd) is str and type(proc.pause_requested) is bool
                and type(proc.history_from) is int and type(proc.image.name) is str
                and type(proc.image.version) is str):
            return None
        key = _stable(proc)
        # (Kept with the objects it is now made from: the next step finds them the same.)
        proc.checkpoint_text = kept = (
            (key, *_parts(key)) if kept is None or kept[0] != key else (key, *kept[1:]))
    snapshot = getattr(proc.planner, "snapshot", None)
    text = (f'{kept[1]}{{"steps":{steps},"tool_calls":{calls},"syscalls":{syscalls},'
            f'"log_bytes":{log_bytes}}},"pending":'
            f'{pending_text or ("null" if pending is None else _JSON(pending))}{kept[2]}'
            f'{"null" if snapshot is None else _JSON(snapshot())}{kept[3]}')
    if audit_from is not None:
        text += f',"audit_from":{int(audit_from)}'
    text += "}"
    return text if text.isascii() else None


def pending_text(proc: AgentProcess, action: Any, data: dict[str, Any]) -> str:
    """The JSON text of a step's `action` (`data`, as JSON data) for its checkpoint before,
    kept on the process when ASCII (as the store writes it then: the encoder of
    `_storable_json`) for the checkpoint after (`observed_text`)."""
    text = _JSON(data)
    proc.step_action = (action, text) if text.isascii() else None
    return text


def observed_text(proc: AgentProcess, observation: Any) -> str | None:
    """The text the checkpoint before its step wrote of `observation`'s action (the same
    action object), taken once; None: the store encodes it."""
    kept, proc.step_action = proc.step_action, None
    return kept[1] if kept is not None and kept[0] is observation.action else None
