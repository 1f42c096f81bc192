"""Progress of long operations (`libos setup`, `resume --all`): a status line on a terminal,
rewritten in place, and nothing at all when the output goes to a pipe or a file (where only
the result is wanted). It is written to stderr, so stdout keeps only results (and JSON)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console

from broker.render import inert


class Progress:
    """`with Progress() as progress: progress.update("step …")`."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.shown = self.console.is_terminal
        self._status: Any = None

    def __enter__(self) -> Progress:
        if self.shown:
            self._status = self.console.status("")
            self._status.start()
        return self

    def update(self, text: str) -> None:
        """The status line says `text` now (inert: it may name things a tool wrote)."""
        if self._status is not None:
            self._status.update(inert(text, 200))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
