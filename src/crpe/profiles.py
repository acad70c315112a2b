"""CLI profiles: named control-plane endpoints and access keys in `$XDG_CONFIG_HOME/crpe/config.json`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Profile:
    endpoint: str
    access_key_id: str
    access_key_secret: str
    region: str = ""


class ProfileError(Exception):
    """The profile file is missing, unreadable or lacks the requested profile."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "crpe" / "config.json"


def load_all() -> dict:
    path = config_path()
    if not path.exists():
        return {"default_profile": "default", "profiles": {}}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ProfileError(f"cannot read {path}: {error}") from None


def load(name: str | None) -> Profile:
    config = load_all()
    name = name or os.environ.get("CRPE_PROFILE") or config.get("default_profile", "default")
    profile = config.get("profiles", {}).get(name)
    if profile is None:
        raise LookupError(f"profile {name!r} not found in {config_path()}; run `crpe configure` or start "
                          "`crpe serve` once on this machine")
    return Profile(**profile)


def save(name: str, profile: Profile, make_default: bool = False) -> Path:
    """Write one profile; the file is readable by its owner only because it contains a secret."""
    config = load_all()
    config.setdefault("profiles", {})[name] = asdict(profile)
    # The first profile, or one written while the default names no profile, becomes the default.
    if make_default or config.get("default_profile") not in config["profiles"]:
        config["default_profile"] = name
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(config, file, indent=2)
    os.replace(temporary, path)
    return path
