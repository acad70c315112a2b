"""Permissions of principals on instances and repositories; no I/O.

A sub-user's policy is a list of statements `{"effect": "allow"|"deny", "actions": [...], "resources": [...]}`.
Actions are pull, push, delete and manage, or `*`. Resources are `instance/<id>` (the instance itself, for
manage) and `instance/<id>/<namespace>/<repository>`, where `*` matches any run of characters, slashes
included. An explicit deny wins over any allow. An account has every right on its own instances and none on
another account's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from crpe.auth.principals import Principal

REPOSITORY_ACTIONS = frozenset({"pull", "push", "delete"})
ACTIONS = REPOSITORY_ACTIONS | {"manage"}
EFFECTS = ("allow", "deny")

Statement = Mapping[str, Any]


class PolicyInvalid(ValueError):
    """A policy document breaks the grammar; the message names the statement and field."""


def validate_statements(statements: Any) -> list[dict[str, Any]]:
    if not isinstance(statements, list):
        raise PolicyInvalid("statements must be a list")
    clean = []
    for index, statement in enumerate(statements):
        where = f"statements[{index}]"
        if not isinstance(statement, dict):
            raise PolicyInvalid(f"{where} must be an object with effect, actions and resources")
        effect = statement.get("effect")
        if effect not in EFFECTS:
            raise PolicyInvalid(f"{where}.effect must be allow or deny, not {effect!r}")
        actions = statement.get("actions")
        if not isinstance(actions, list) or not actions or not all(a in ACTIONS | {"*"} for a in actions):
            raise PolicyInvalid(f"{where}.actions must be a non-empty list of {', '.join(sorted(ACTIONS))} or *")
        resources = statement.get("resources")
        if (not isinstance(resources, list) or not resources
                or not all(isinstance(r, str) and r.startswith("instance/") and len(r) <= 512 for r in resources)):
            raise PolicyInvalid(f"{where}.resources must be a non-empty list of instance/<id>[/<namespace>/"
                                "<repository>] patterns")
        clean.append({"effect": effect, "actions": list(actions), "resources": list(resources)})
    return clean


def repository_resource(instance_id: str, repository: str) -> str:
    return f"instance/{instance_id}/{repository}"


def instance_resource(instance_id: str) -> str:
    return f"instance/{instance_id}"


def allowed(statements: Iterable[Statement], action: str, resource: str) -> bool:
    """Evaluate a sub-user's statements for one action on one resource; deny wins."""
    granted = False
    for statement in statements:
        if action not in statement["actions"] and "*" not in statement["actions"]:
            continue
        if not any(fnmatchcase(resource, pattern) for pattern in statement["resources"]):
            continue
        if statement["effect"] == "deny":
            return False
        granted = True
    return granted


def permitted_actions(principal: Principal, instance_account_id: str, instance_id: str, repository: str,
                      statements: Iterable[Statement] = ()) -> frozenset[str]:
    """Return the repository actions `principal` may take on `repository` of an instance."""
    if principal.account_id != instance_account_id:
        return frozenset()
    if principal.is_account:
        return REPOSITORY_ACTIONS
    resource = repository_resource(instance_id, repository)
    statements = list(statements)
    return frozenset(action for action in REPOSITORY_ACTIONS if allowed(statements, action, resource))


def may_manage(principal: Principal, instance_account_id: str, instance_id: str,
               statements: Iterable[Statement] = ()) -> bool:
    if principal.account_id != instance_account_id:
        return False
    return principal.is_account or allowed(statements, "manage", instance_resource(instance_id))


def has_any_right(principal: Principal, instance_account_id: str, instance_id: str,
                  statements: Iterable[Statement] = ()) -> bool:
    """Tell whether the principal may do anything at all in the instance (and so may see it)."""
    if principal.account_id != instance_account_id:
        return False
    if principal.is_account:
        return True
    prefix = instance_resource(instance_id)
    for statement in statements:
        if statement["effect"] != "allow":
            continue
        for pattern in statement["resources"]:
            # The literal head of the pattern, up to its first wildcard, decides whether it can match inside
            # this instance: "instance/*", "instance/<id>" and "instance/<id>/team/*" all can.
            head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            if fnmatchcase(prefix, pattern) or head.startswith(prefix + "/") or (prefix + "/").startswith(head):
                return True
    return False
