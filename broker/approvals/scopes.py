"""The scopes a person may choose for an `always` answer, narrowest first: the asked
resource itself, then wider patterns up to the asking capability's own scope, and only those
that pass the answer rule (`check_standing_scope`), so a front end that offers these cannot
offer one the broker would refuse or one wider than what was asked. The broker checks the
answer again whatever a front end sent."""

from __future__ import annotations

from typing import Any

from broker.approvals.rules import check_standing_scope
from broker.errors import LibosError

MAX_CHOICES = 8
SEPARATORS = "./:@"  # where a name-like resource can be cut into a `prefix*` pattern


def _wider(resource: str) -> list[str]:
    """Patterns that cover `resource`, narrowest first."""
    if resource.startswith("/"):  # a path: each enclosing directory, with all below it
        parts = resource.rstrip("/").split("/")
        return ["/".join(parts[:n]) + "/**" for n in range(len(parts) - 1, 1, -1)] + ["/**"]
    cuts = [n + 1 for n, char in enumerate(resource) if char in SEPARATORS]
    return [resource[:n] + "*" for n in reversed(cuts)] + ["*"]


def scope_choices(row: dict[str, Any]) -> list[str]:
    """For a capability request as stored (`resource`, `cap_kind`, `cap_right`,
    `cap_scope`): the scopes an `always` answer may take, narrowest first; empty when none
    would pass (then only "once" and "deny" can be offered)."""
    if row.get("kind") != "capability" or not row.get("cap_kind"):
        return []
    resource = row["resource"] or ""
    if not isinstance(resource, str):  # (bytes a database writer stored: no scope covers it)
        return []
    choices: list[str] = []
    for scope in [resource, *_wider(resource), row["cap_scope"]]:
        if scope in choices or len(choices) >= MAX_CHOICES:
            continue
        try:
            check_standing_scope(row, scope, deny=False)
        except LibosError:
            continue
        choices.append(scope)
    return choices
