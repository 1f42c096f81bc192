"""AgentImage: what a process is made from. Its capability needs are declarations only."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from broker.caps import CapSpec
from broker.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Budget:
    """Per-process budgets; a child's spending counts against every ancestor too."""

    steps: int | None = None
    tool_calls: int | None = None
    syscalls: int | None = None
    wall_seconds: float | None = None

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Budget:
        known = {f.name for f in fields(cls)}
        if not isinstance(value, dict) or set(value) - known:
            raise InvalidArgument(f"budget fields are {sorted(known)}")
        return cls(**value)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


@dataclass(frozen=True, slots=True)
class AgentImage:
    """name:version, the tools its processes start with, the capabilities it says it needs
    (a spawn may grant at most these), budgets, planner settings and object types.

    `denies` are deny rules every process of the image carries (a process that registers or
    commits an image passes its own on as these declared restrictions); `origin` says where
    the image came from (the process that registered it, or the process and checkpoint it
    was committed from)."""

    name: str
    version: str = "1"
    tools: tuple[Any, ...] = ()
    needs: tuple[CapSpec, ...] = ()
    budget: Budget = field(default_factory=Budget)
    planner: dict[str, Any] = field(default_factory=dict)
    types: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    denies: tuple[CapSpec, ...] = ()
    origin: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str) or len(self.name) > 128:
            raise InvalidArgument("an image needs a name of at most 128 characters")
        object.__setattr__(self, "needs", tuple(CapSpec.parse(n) for n in self.needs))
        object.__setattr__(self, "tools", tuple(self.tools))
        denies = tuple(CapSpec.parse(d) for d in self.denies)
        if any(d.effect != "deny" for d in denies):
            raise InvalidArgument("an image's denies are deny rules (effect deny)")
        object.__setattr__(self, "denies", denies)

    def allows(self, spec: CapSpec) -> bool:
        """Is `spec` within what the image declares? An image that declares nothing takes
        no capabilities at all."""
        return any(spec.within(need) for need in self.needs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "tools": list(self.tools),
            "needs": [n.to_wire() for n in self.needs],
            "budget": self.budget.to_json(),
            "planner": self.planner,
            "types": self.types,
            "description": self.description,
            # Only when present: an image registered before these existed reads the same.
            **({"denies": [d.to_wire() for d in self.denies]} if self.denies else {}),
            **({"origin": self.origin} if self.origin else {}),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> AgentImage:
        try:
            return cls(
                name=value["name"],
                version=str(value.get("version", "1")),
                tools=tuple(value.get("tools", ())),
                needs=tuple(CapSpec.parse(n) for n in value.get("needs", ())),
                budget=Budget.from_json(value.get("budget", {})),
                planner=dict(value.get("planner", {})),
                types=dict(value.get("types", {})),
                description=str(value.get("description", "")),
                denies=tuple(CapSpec.parse(d) for d in value.get("denies", ())),
                origin=dict(value.get("origin", {})),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidArgument(f"malformed image: {exc}") from None
