"""Token scopes of the Docker token authentication spec: `repository:<name>:<actions>`, `registry:catalog:*`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    def format(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scopes(values: list[str]) -> list[Scope]:
    """Parse repeated and space-separated scope parameters; malformed items are skipped, as the spec allows."""
    scopes: dict[tuple[str, str], set[str]] = {}
    for value in values:
        for item in value.split():
            resource_type, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            if not resource_type or not name or not actions:
                continue
            resource_type = resource_type.split("(", 1)[0]  # "repository(plugin)" names the same resource type.
            scopes.setdefault((resource_type, name), set()).update(a for a in actions.split(",") if a)
    return [Scope(t, n, frozenset(a)) for (t, n), a in scopes.items()]
