"""Unit tests of the endpoint rules in crpe.policy.decide as one table, without a server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from crpe import policy
from crpe.policy import Action, Outcome, Request, decide, is_harbor_client

PUBLIC_HOST = "crpi-abcd1234efgh.cn-hangzhou.personal.cr.crpe.test"
VPC_HOST = "crpi-abcd1234efgh-vpc.cn-hangzhou.personal.cr.crpe.test"

ALLOW, CHALLENGE, DENY = Outcome.ALLOW, Outcome.CHALLENGE, Outcome.DENY
PULL, PUSH, DELETE = Action.PULL, Action.PUSH, Action.DELETE


@dataclass(frozen=True)
class Case:
    """One request shape and the decision the policy table prescribes for it."""

    legacy: bool
    vpc_endpoint: bool
    authenticated: bool
    action: Action
    expected: Outcome
    from_vpc_network: bool = True
    harbor: bool = False
    public_repository: bool = False
    existence_check: bool = False
    caller_may_push: bool = False
    public_endpoint_pull_allowed: bool = False
    # Host names the refusal message must contain, so the client learns where to go instead.
    message_names: tuple[str, ...] = ()
    message_part: str = ""

    @property
    def id(self) -> str:
        parts = [
            "legacy" if self.legacy else "new",
            "vpc" if self.vpc_endpoint else "public",
            "auth" if self.authenticated else "anon",
            ("head" if self.existence_check else self.action.value),
        ]
        if self.caller_may_push:
            parts.append("by-pusher")
        if self.public_repository:
            parts.append("public-repo")
        if self.harbor:
            parts.append("harbor")
        if not self.from_vpc_network:
            parts.append("from-outside-vpc")
        if self.public_endpoint_pull_allowed:
            parts.append("public-pull-enabled")
        return "-".join(parts) + f"->{self.expected.value}"

    def request(self) -> Request:
        return Request(
            action=self.action,
            authenticated=self.authenticated,
            legacy_instance=self.legacy,
            vpc_endpoint=self.vpc_endpoint,
            from_vpc_network=self.from_vpc_network,
            repository_public=self.public_repository,
            harbor_client=self.harbor,
            existence_check=self.existence_check,
            caller_may_push=self.caller_may_push,
            public_endpoint_pull_allowed=self.public_endpoint_pull_allowed,
        )


NEW, LEGACY = False, True
PUBLIC, VPC = False, True
ANON, AUTH = False, True

CASES = [
    # New instances: pulls only through the VPC endpoint, and never anonymous.
    Case(NEW, PUBLIC, ANON, PULL, CHALLENGE, message_names=(VPC_HOST,)),
    Case(NEW, PUBLIC, ANON, PULL, CHALLENGE, public_repository=True, message_names=(VPC_HOST,)),
    Case(NEW, VPC, ANON, PULL, CHALLENGE, message_names=(VPC_HOST,)),
    Case(NEW, VPC, ANON, PULL, CHALLENGE, public_repository=True, message_names=(VPC_HOST,)),
    Case(NEW, PUBLIC, ANON, PULL, CHALLENGE, existence_check=True, message_names=(VPC_HOST,)),
    Case(NEW, PUBLIC, ANON, PUSH, CHALLENGE, message_part="authentication required"),
    Case(NEW, VPC, ANON, PUSH, CHALLENGE, message_part="authentication required"),
    Case(NEW, PUBLIC, ANON, DELETE, CHALLENGE, message_part="authentication required"),
    Case(NEW, PUBLIC, AUTH, PULL, DENY, message_names=(PUBLIC_HOST, VPC_HOST)),
    Case(NEW, PUBLIC, AUTH, PULL, DENY, public_repository=True, message_names=(PUBLIC_HOST, VPC_HOST)),
    Case(NEW, PUBLIC, AUTH, PULL, DENY, from_vpc_network=False, message_names=(PUBLIC_HOST, VPC_HOST)),
    Case(NEW, PUBLIC, AUTH, PULL, ALLOW, public_endpoint_pull_allowed=True),
    Case(NEW, PUBLIC, AUTH, PULL, ALLOW, existence_check=True, caller_may_push=True),
    Case(NEW, PUBLIC, AUTH, PULL, DENY, existence_check=True, message_names=(VPC_HOST,)),
    Case(NEW, PUBLIC, AUTH, PULL, DENY, caller_may_push=True, message_names=(VPC_HOST,)),
    Case(NEW, VPC, AUTH, PULL, ALLOW),
    Case(NEW, VPC, AUTH, PULL, ALLOW, existence_check=True),
    Case(NEW, PUBLIC, AUTH, PUSH, ALLOW),
    Case(NEW, PUBLIC, AUTH, PUSH, ALLOW, from_vpc_network=False),
    Case(NEW, VPC, AUTH, PUSH, ALLOW),
    Case(NEW, PUBLIC, AUTH, DELETE, ALLOW),
    Case(NEW, VPC, AUTH, DELETE, ALLOW),
    # The VPC endpoint serves requests only from the region's VPC networks, authenticated or not.
    Case(NEW, VPC, AUTH, PULL, DENY, from_vpc_network=False, message_names=(PUBLIC_HOST, VPC_HOST)),
    Case(NEW, VPC, AUTH, PUSH, DENY, from_vpc_network=False, message_names=(PUBLIC_HOST, VPC_HOST)),
    Case(NEW, VPC, ANON, PULL, DENY, from_vpc_network=False, message_names=(PUBLIC_HOST, VPC_HOST)),
    Case(
        NEW,
        VPC,
        AUTH,
        PULL,
        DENY,
        from_vpc_network=False,
        public_endpoint_pull_allowed=True,
        message_names=(PUBLIC_HOST, VPC_HOST),
    ),
    # Harbor replication is refused on new instances, on both endpoints.
    Case(NEW, PUBLIC, AUTH, PULL, DENY, harbor=True, message_part="Harbor remote replication is not supported"),
    Case(NEW, PUBLIC, AUTH, PUSH, DENY, harbor=True, message_part="Harbor remote replication is not supported"),
    Case(NEW, VPC, AUTH, PULL, DENY, harbor=True, message_part="Harbor remote replication is not supported"),
    Case(NEW, VPC, ANON, PULL, DENY, harbor=True, message_part="Harbor remote replication is not supported"),
    # Legacy instances: anonymous pulls of public repositories and authenticated pulls on both endpoints.
    Case(LEGACY, PUBLIC, ANON, PULL, ALLOW, public_repository=True),
    Case(LEGACY, VPC, ANON, PULL, ALLOW, public_repository=True),
    Case(LEGACY, PUBLIC, ANON, PULL, CHALLENGE, message_part="authentication required"),
    Case(LEGACY, VPC, ANON, PULL, CHALLENGE, message_part="authentication required"),
    Case(LEGACY, PUBLIC, ANON, PUSH, CHALLENGE, public_repository=True, message_part="authentication required"),
    Case(LEGACY, PUBLIC, ANON, DELETE, CHALLENGE, public_repository=True, message_part="authentication required"),
    Case(LEGACY, PUBLIC, AUTH, PULL, ALLOW),
    Case(LEGACY, VPC, AUTH, PULL, ALLOW),
    Case(LEGACY, PUBLIC, AUTH, PUSH, ALLOW),
    Case(LEGACY, VPC, AUTH, PUSH, ALLOW),
    Case(LEGACY, PUBLIC, AUTH, DELETE, ALLOW),
    Case(LEGACY, PUBLIC, AUTH, PULL, ALLOW, harbor=True),
    Case(LEGACY, VPC, AUTH, PUSH, ALLOW, harbor=True),
    Case(LEGACY, VPC, AUTH, PULL, DENY, from_vpc_network=False, message_names=(PUBLIC_HOST, VPC_HOST)),
    Case(
        LEGACY,
        VPC,
        ANON,
        PULL,
        DENY,
        from_vpc_network=False,
        public_repository=True,
        message_names=(PUBLIC_HOST, VPC_HOST),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_decide(case: Case) -> None:
    decision = decide(case.request(), PUBLIC_HOST, VPC_HOST)

    assert decision.outcome is case.expected
    assert decision.allowed is (case.expected is ALLOW)
    if case.expected is ALLOW:
        assert decision.reason == ""
    for host in case.message_names:
        assert host in decision.reason
    assert case.message_part in decision.reason


def test_case_ids_unique() -> None:
    ids = [case.id for case in CASES]

    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        pytest.param("harbor-registry-client/2.10.0", True, id="harbor-2"),
        pytest.param("Harbor-Registry-Client", True, id="harbor-upper-case"),
        pytest.param("docker/27.0.3 go/go1.22.5", False, id="docker"),
        pytest.param("containers/5.32.2 (github.com/containers/image)", False, id="skopeo"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_harbor_client(user_agent: str, expected: bool) -> None:
    assert is_harbor_client(user_agent) is expected


def test_network_and_client_rules_alone() -> None:
    outside = policy.decide_network_and_client(True, False, False, False, "pub.test", "vpc.test")
    harbor = policy.decide_network_and_client(False, False, True, False, "pub.test", "vpc.test")
    harbor_legacy = policy.decide_network_and_client(False, False, True, True, "pub.test", "vpc.test")
    inside = policy.decide_network_and_client(True, True, False, False, "pub.test", "vpc.test")

    assert outside == policy.Decision(policy.Outcome.DENY, policy.outside_vpc_reason("pub.test", "vpc.test"))
    assert harbor == policy.Decision(policy.Outcome.DENY, policy.HARBOR_DENIED)
    assert harbor_legacy == policy.ALLOW
    assert inside == policy.ALLOW
