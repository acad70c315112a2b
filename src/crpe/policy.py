"""Decide whether an endpoint rule allows a registry request; no I/O.

The rules of the access policy table, for new (exclusive-endpoint) and legacy instances:

| request                            | new, public | new, VPC | legacy, public | legacy, VPC |
|------------------------------------|-------------|----------|----------------|-------------|
| anonymous pull, public repository  | 401         | 401      | allowed        | allowed     |
| anonymous pull, private repository | 401         | 401      | 401            | 401         |
| authenticated pull                 | 403 DENIED  | allowed  | allowed        | allowed     |
| authenticated push                 | allowed     | allowed  | allowed        | allowed     |
| Harbor replication client          | 403 DENIED  | 403      | allowed        | allowed     |

"Pull" covers GET and HEAD of manifests and blobs, tag lists and referrers, except that a HEAD from a caller
who may push is part of the push protocol and is allowed. A VPC host name is honoured only from the region's
VPC networks. Per-repository permissions (what a token
grants) are checked separately, after this decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

HARBOR_USER_AGENT = "harbor-registry-client"


class Action(enum.Enum):
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"


class Outcome(enum.Enum):
    ALLOW = "allow"
    CHALLENGE = "challenge"  # 401: the client must authenticate.
    DENY = "deny"  # 403: authenticating again will not help.


@dataclass(frozen=True)
class Request:
    """The facts about one registry request that the policy decides on."""

    action: Action
    authenticated: bool
    legacy_instance: bool
    vpc_endpoint: bool
    from_vpc_network: bool
    repository_public: bool = False
    harbor_client: bool = False
    existence_check: bool = False  # A HEAD request, which clients also send while pushing.
    caller_may_push: bool = False  # The caller's token grants push on the repository.
    public_endpoint_pull_allowed: bool = False  # Deployment setting that relaxes the public-endpoint pull rule.


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


ALLOW = Decision(Outcome.ALLOW)


HARBOR_DENIED = ("Harbor remote replication is not supported for this instance; copy images with skopeo, "
                 "docker or oras instead")


def is_harbor_client(user_agent: str) -> bool:
    return user_agent.lower().startswith(HARBOR_USER_AGENT)


def outside_vpc_reason(public_host: str, vpc_host: str) -> str:
    return (f"the VPC endpoint {vpc_host} accepts requests only from this region's VPC networks; from elsewhere "
            f"use the public endpoint {public_host}")


def decide_network_and_client(vpc_endpoint: bool, from_vpc_network: bool, harbor_client: bool,
                               legacy_instance: bool, public_host: str, vpc_host: str) -> Decision:
    """Apply the rules that every request must pass, whatever its action and its caller."""
    if vpc_endpoint and not from_vpc_network:
        return Decision(Outcome.DENY, outside_vpc_reason(public_host, vpc_host))
    if harbor_client and not legacy_instance:
        return Decision(Outcome.DENY, HARBOR_DENIED)
    return ALLOW


def decide(request: Request, public_host: str, vpc_host: str) -> Decision:
    """Apply the endpoint rules to `request`; the hosts name the endpoints to suggest in messages."""
    first = decide_network_and_client(request.vpc_endpoint, request.from_vpc_network, request.harbor_client,
                                      request.legacy_instance, public_host, vpc_host)
    if not first.allowed:
        return first
    if not request.authenticated:
        if request.action is Action.PULL and request.legacy_instance and request.repository_public:
            return ALLOW
        if request.action is Action.PULL and not request.legacy_instance:
            return Decision(Outcome.CHALLENGE, "anonymous pulls are not allowed on this instance; "
                                               f"run docker login {vpc_host} and pull through the VPC endpoint")
        return Decision(Outcome.CHALLENGE, "authentication required; log in with docker login and retry")
    if (request.action is Action.PULL and not request.legacy_instance and not request.vpc_endpoint
            and not request.public_endpoint_pull_allowed):
        if request.existence_check and request.caller_may_push:
            # Pushing clients HEAD blobs and manifests to skip what the repository already has. A HEAD reveals
            # no content, so a caller who may push gets the response on the public endpoint too.
            return ALLOW
        return Decision(Outcome.DENY, f"pulling through the public endpoint {public_host} is not allowed for "
                                      f"this instance; pull through its VPC endpoint {vpc_host} instead")
    return ALLOW
