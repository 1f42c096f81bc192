"""Shell environment benchmark: what naming every variable in the checked resource costs.

* building a command's resource and checking it against a process holding 20 shell
  capabilities (each naming a few variables), for `git status` with no variable, with two
  default ones, and with the largest environment `shell_env` allows (every character a `'`,
  the worst case for quoting);
* parsing that largest resource back from plain text (what answering an approval does once).

Run with `python -m bench.shell_env_bench` (or `python -m bench`).
"""

from __future__ import annotations

from typing import Any

from bench.timing import best_us
from broker.caps import Capability, CapabilityTable
from broker.caps.shell_env import MAX_ENV_BYTES, MAX_ENV_VALUE, command_resource
from broker.caps.shell_scope import _split

ARGV = ["git", "status"]


def _table(caps: int) -> CapabilityTable:
    table = CapabilityTable(1)
    for i in range(caps - 1):
        table.add(Capability("shell", f"X{i}=* Y{i}=* git log{i} *", frozenset({"run"})))
    names = " ".join(f"V{i}=*" for i in range(MAX_ENV_BYTES // MAX_ENV_VALUE))
    table.add(Capability("shell", f"{names} git status", frozenset({"run"})))
    return table


def run() -> dict[str, Any]:
    table = _table(20)
    largest = {f"V{i}": "'" * (MAX_ENV_VALUE - 2) for i in range(MAX_ENV_BYTES // MAX_ENV_VALUE)}
    envs = {"no variable": {}, "two default": {"TZ": "UTC", "LC_ALL": "C"}, "largest": largest}
    figures: dict[str, Any] = {}
    for label, env in envs.items():
        figures[f"check_us.{label}"] = best_us(
            lambda env=env: table.check("shell", "run", command_resource(env, ARGV), now=0.0),
            200 if label == "largest" else 5000)
    text = str(command_resource(largest, ARGV))
    figures["largest_resource_chars"] = len(text)
    figures["parse_plain_text_us.largest"] = best_us(lambda: _split(text), 50)
    return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:40} {value:12,.1f}")
