"""The controls: kill, pause and resume, from the host or the operator (audited in the chain,
see `holds.Holds.control`), from a process (`proc.signal`, checked by the dispatcher first),
and the requests `libos` commands leave in the store for the broker to apply (a fork too),
each only if it counts (signed by a trusted key, fresh, not applied before:
`broker.kernel.control_requests`)."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from broker.errors import Conflict, InvalidArgument, LibosError
from broker.kernel.control_requests import ControlRequests
from broker.kernel.faults import STORE_FAULTS, Streak
from broker.kernel.holds import OPERATOR, holder

if TYPE_CHECKING:
    from broker.kernel.ports import ControlsNeeds

log = logging.getLogger("libos.kernel")

CONTROL_POLL = 0.2


class Controls:
    def __init__(self, kernel: ControlsNeeds) -> None:
        self.kernel = kernel
        self.requests = ControlRequests(kernel)  # which requests left in the store count

    async def watch(self) -> None:
        streak = Streak("reading the controls")  # (one of many brokers: it connects again)
        while True:
            await trio.sleep(CONTROL_POLL)
            try:
                self.apply()
            except STORE_FAULTS as exc:
                streak.failed(exc)
            else:
                streak.worked()

    def apply(self) -> None:
        """Apply the pause/resume/kill/fork requests that `libos` commands left in the store.
        What each gave goes back in its row (`finish_controls`, one commit for the batch): a
        refusal (a resume of a process that is not paused) is told to the command that
        asked, not only logged; and the answers of those applied are written even when a
        later one fails."""
        leasing = self.kernel.leasing
        answers: list[tuple[int, dict[str, Any]]] = []
        # One broker of many takes those of the processes it runs, and of those it found held
        # for an unsigned end (`leasing.unrun`: nobody runs them, and the operator may kill
        # one: `tree_kill`; a pause or resume of it is answered `Held`).
        try:
            for control in self.kernel.store.take_controls(
                    set(leasing.held) | leasing.unrun if leasing.active else None):
                answers.append((control["id"], self._applied(control)))
        finally:
            if answers:
                self.kernel.store.finish_controls(answers)

    def _applied(self, control: dict[str, Any]) -> dict[str, Any]:
        """What applying one request gave, if it counts at all (signed by a trusted key, for
        this store, fresh, not applied before: `ControlRequests`; else the typed refusal).
        One that fails untyped (a store fault in a fork, a hostile checkpoint row it forks
        from) is answered with why: it was taken with the rest of its batch, so raising here
        would leave those after it taken and never applied nor answered (a `libos kill`
        lost), and end the broker."""
        try:
            self.requests.admit(control)
            return self._fork(control) if control["verb"] == "fork" else self._signal(control)
        except LibosError as exc:  # (refused: on the record)
            return {"error": exc.code, "message": exc.message}
        except Exception as exc:
            log.exception("control %s for %s failed", control["verb"], control["pid"])
            return {"error": Conflict.code,
                    "message": f"the broker failed applying it ({type(exc).__name__})"}

    def _signal(self, control: dict[str, Any]) -> dict[str, Any]:
        # Who asked, as another broker's embedding API says (`broker.kernel.remote`):
        # a name for the record, never authority.
        arg = control["arg"] if isinstance(control["arg"], dict) else {}
        who, via = str(arg.get("who", "cli"))[:128], "store" if "who" in arg else None
        verbs = {"pause": partial(self.pause, who=who, via=via),
                 "resume": partial(self.resume, who=who, via=via),
                 "kill": partial(self.kill, who=who, via=via, reason=str(arg.get(
                     "reason", "killed by operator"))[:1000])}
        verb = verbs.get(control["verb"])
        if verb is None:  # (a row written by hand)
            return {"error": InvalidArgument.code, "message": "not a control verb"}
        try:
            verb(control["pid"])
        except LibosError as exc:
            log.warning("control %s for %s refused: %s", control["verb"], control["pid"], exc)
            return {"error": exc.code, "message": exc.message}
        return {"applied": True}

    def _fork(self, control: dict[str, Any]) -> dict[str, Any]:
        """`libos fork PID [--checkpoint ID]`: the new pid, or the typed error (the fork
        itself is an audit record)."""
        arg = control["arg"] if isinstance(control["arg"], dict) else {}
        checkpoint = arg.get("checkpoint")
        try:
            if checkpoint is not None and (type(checkpoint) is not int or checkpoint < 1):
                raise InvalidArgument(f"checkpoint {checkpoint!r} is not a checkpoint id")
            return {"pid": self.kernel.spawner.fork(control["pid"], checkpoint=checkpoint,
                                                    who="cli")}
        except LibosError as exc:
            return {"error": exc.code, "message": exc.message}

    def kill(self, pid: int, reason: str = "killed", *, who: str = "host",
             via: str | None = None) -> None:
        """Kill a process and its live descendants; their in-flight calls are cancelled and
        their pending requests die with them. An operator's control: audited."""
        self.kernel.holds.control(
            "kill", pid, who, None, via=via,
            recorded_by=lambda record: self.kernel.terminate(pid, reason, record))

    def pause(self, pid: int, *, who: str = "host", via: str | None = None) -> None:
        """Hold a process and everything below it: each stops at its next step boundary (at
        once, if between steps) until the operator resumes it; no process can lift this
        hold (see `broker.kernel.holds`). An operator's control: audited."""
        self.kernel.holds.control("pause", pid, who, lambda: self.kernel.holds.place(pid, OPERATOR),
                                  via=via)

    def resume(self, pid: int, *, who: str = "host", via: str | None = None) -> None:
        """Let a paused process go, whoever held it, and lift the operator's holds below it.
        An operator's control: audited."""
        self.kernel.holds.control("resume", pid, who, lambda: self.kernel.holds.lift(pid, OPERATOR),
                                  via=via)

    def signal(self, sender: int, pid: int, signal: str) -> dict[str, Any]:
        """Deliver a signal; `proc.signal`'s check has already allowed it. A pause is the
        sender's hold, which only it (or a process above it, or the operator) lifts."""
        # Checked live, then killed before this ran (a threaded call's signal, checked on its
        # worker thread, runs here after a hop to trio's): a dead process signals nobody.
        self.kernel.require_live(self.kernel.process(sender))
        {"kill": lambda: self.kernel.terminate(pid, f"killed by {sender}"),
         "pause": lambda: self.kernel.holds.place(pid, holder(sender)),
         "resume": lambda: self.kernel.holds.lift(pid, holder(sender))}[signal]()
        return self.kernel.status(self.kernel.process(pid))

    def check_resume(self, sender: int, pid: int) -> None:
        """`NotCapable` if `pid` is held by someone `sender` may not overrule (the operator,
        or a process above the sender)."""
        self.kernel.holds.check_lift(pid, holder(sender))
