"""Repository names and tags; no I/O."""

from __future__ import annotations

import re

from crpe.errors import ManifestInvalid, NameInvalid

# One path component of the OCI distribution spec's repository name grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
COMPONENT_PATTERN = re.compile(f"^{_COMPONENT}$")
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# The spec recommends supporting names up to 255 characters with the host name; 256 leaves room for none.
MAX_NAME_LENGTH = 256


def validate_repository(name: str) -> tuple[str, str]:
    """Check `<namespace>/<repository>` and return its two parts; raise NAME_INVALID naming the problem."""
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(f"repository name is {len(name)} characters long; the maximum is {MAX_NAME_LENGTH}",
                          detail={"name": name[:64] + "..."})
    parts = name.split("/")
    if len(parts) != 2:
        raise NameInvalid(f"repository name {name!r} must have the form <namespace>/<repository>, with exactly "
                          "one slash", detail={"name": name})
    for part in parts:
        if not COMPONENT_PATTERN.match(part):
            raise NameInvalid(f"repository name {name!r} is invalid: each component must be lower-case letters "
                              "and digits, optionally separated by '.', '_', '__' or '-'", detail={"name": name})
    return parts[0], parts[1]


def validate_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag):
        raise ManifestInvalid(f"tag {tag!r} is invalid: use up to 128 letters, digits, '_', '.' or '-', not "
                              "starting with '.' or '-'", detail={"tag": tag})
    return tag
