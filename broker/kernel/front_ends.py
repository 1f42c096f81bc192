"""What shows approval requests to a person or a policy (`FrontEnd`), and the auto-policy
front end, which answers some by a rule of the host's."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from broker.errors import LibosError
from broker.kernel.foreign import passes

log = logging.getLogger("libos.approvals")


class Answering(Protocol):
    """What a front end may do with the queue (`ApprovalQueue`): answer."""

    def answer(self, approval_id: str, answer: str, *, scope: str | None = None,
               value: Any = None, who: str = "api") -> dict[str, Any]: ...


class FrontEnd(Protocol):
    """Something that shows requests to a person (or a policy) and may answer them."""

    def requested(self, request: dict[str, Any], queue: Answering) -> None: ...


class AutoPolicy:
    """An auto-policy front end: `decide(request)` returns an answer (`once`, `deny`, ... or
    ("answer", value) for a question), or None to leave the request to a person."""

    def __init__(self, decide: Callable[[dict[str, Any]], Any], who: str = "auto-policy"
                 ) -> None:
        self.decide = decide
        self.who = who

    def requested(self, request: dict[str, Any], queue: Answering) -> None:
        verdict = self.decide(request)
        if verdict is None:
            return
        if isinstance(verdict, tuple):
            queue.answer(request["id"], verdict[0], value=verdict[1], who=self.who)
        else:
            queue.answer(request["id"], verdict, who=self.who)


def tell(front_ends: Iterable[FrontEnd], request: dict[str, Any], queue: Answering) -> None:
    """Show a filed request to each front end. One that fails (an embedder's, with anything
    but a cancellation or a Ctrl-C) is logged and leaves the request to the others and to a
    person; a refused automatic answer (typed) leaves it too."""
    for front_end in front_ends:
        try:
            front_end.requested(request, queue)
        except LibosError:
            pass
        except BaseException as exc:
            if passes(exc):
                raise
            log.error("approval front end %r failed", front_end, exc_info=exc)
