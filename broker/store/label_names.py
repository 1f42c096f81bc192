"""Label names wherever the store finds them named: in a walked record's label lists
(`NamedLabels`, kept by the links' walk), in a label column, in a capability's policy. What
the label ceiling unions (`broker.store.label_ceiling`, docs/DESIGN.md invariant 19): a name
found in text a writer made only adds to it (over-labelling), so nothing here is trusted,
only kept to a label's shape."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from broker.caps.labels import ANY, parse_labels

# A list's text seen is not parsed again; the set forgets past this (parsing again is all).
_MAX_TEXTS = 4096


def label_names(value: Any) -> set[str]:
    """The label names in `value` (a list as read, or its JSON text); none for anything else
    (a writer's text: what it names could only add)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return set()
    if not isinstance(value, list):
        return set()
    found = set()
    for name in value:
        try:
            found |= parse_labels([name])
        except Exception:  # (not a label's shape: `*`, junk)
            continue
    return found


def policy_names(text: Any) -> set[str]:
    """The labels a capability's policy column names: those it attaches and those its flow
    bound names (`*` is no label)."""
    try:
        policy = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return set()
    if not isinstance(policy, dict):
        return set()
    flows = policy.get("flows")
    bound = [name for name in flows if name != ANY] if isinstance(flows, dict) else []
    return label_names(policy.get("labels")) | label_names(bound)


class NamedLabels:
    """Every label name the label lists of the records seen name."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._texts: set[str] = set()

    def see(self, lists: list[str]) -> None:
        """A record's label lists' texts (`chain_labels.LISTS`, found once per record)."""
        for listed in lists:
            if listed not in self._texts:
                if len(self._texts) >= _MAX_TEXTS:
                    self._texts.clear()
                self._texts.add(listed)
                self._names |= label_names(listed)

    def names(self) -> frozenset[str]:
        return frozenset(self._names)


def names_in(values: Iterable[Any]) -> set[str]:
    """The label names in each of `values` (label columns as read)."""
    found: set[str] = set()
    for value in values:
        found |= label_names(value)
    return found
