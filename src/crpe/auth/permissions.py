"""What a principal may do on a repository of an instance; no I/O."""

from __future__ import annotations

from crpe.auth.principals import Principal

ALL_ACTIONS = frozenset({"pull", "push", "delete"})


def permitted_actions(principal: Principal, instance_account_id: str, repository: str) -> frozenset[str]:
    """Return the actions `principal` may take on `repository` of an instance owned by `instance_account_id`.

    An account has every right on its own instances and none on another account's.
    """
    if principal.account_id != instance_account_id:
        return frozenset()
    if principal.is_account:
        return ALL_ACTIONS
    # TODO: evaluate sub-user policies (actions on instance/<id>/<namespace>/<repository>, explicit deny wins)
    # once the control plane manages them; until then a sub-user has no repository rights.
    return frozenset()
