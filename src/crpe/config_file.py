"""The TOML configuration file: the same settings as the `CRPE_*` variables, which override it.

    data_dir = "/var/lib/crpe"
    listen = "0.0.0.0:5000"
    database_url = "postgresql://crpe@db.internal:5432/crpe"

    [storage]                       # the default of every region
    type = "s3"
    bucket = "registry"
    prefix = "{region}/"

    [[regions]]
    id = "cn-hangzhou"
    vpc_networks = ["10.0.0.0/8"]

Relative `data_dir` and `token_key_file` paths are relative to the file's folder.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from crpe.settings import SettingsError

# File key: the environment variable it stands for.
SCALAR_KEYS = {
    "data_dir": "CRPE_DATA_DIR",
    "listen": "CRPE_LISTEN",
    "domain": "CRPE_DOMAIN",
    "workers": "CRPE_WORKERS",
    "database_url": "CRPE_DATABASE_URL",
    "token_ttl": "CRPE_TOKEN_TTL",
    "token_key_file": "CRPE_TOKEN_KEY_FILE",
    "public_endpoint_pull": "CRPE_PUBLIC_ENDPOINT_PULL",
    "legacy_cutover": "CRPE_LEGACY_CUTOVER",
    "namespace_quota": "CRPE_NAMESPACE_QUOTA",
    "repository_quota": "CRPE_REPOSITORY_QUOTA",
    "access_log": "CRPE_ACCESS_LOG",
}
LIST_KEYS = {"trusted_proxies": "CRPE_TRUSTED_PROXIES", "vpc_networks": "CRPE_VPC_NETWORKS"}
TABLE_KEYS = {"regions": "CRPE_REGIONS", "storage": "CRPE_STORAGE"}
RELATIVE_PATH_KEYS = ("data_dir", "token_key_file")


def load_config_file(path: Path) -> dict[str, str]:
    """Read the file at `path` and return its settings as `CRPE_*` variables."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise SettingsError(f"configuration file {path} does not exist; fix --config or CRPE_CONFIG") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SettingsError(f"configuration file {path} cannot be read: {error}") from None

    env: dict[str, str] = {}
    for key, value in data.items():
        if key in SCALAR_KEYS:
            if isinstance(value, (dict, list)):
                raise SettingsError(f"{path}: {key} must be a single value, not {type(value).__name__}")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if key in RELATIVE_PATH_KEYS:
                text = str((path.parent / text).resolve())
            env[SCALAR_KEYS[key]] = text
        elif key in LIST_KEYS:
            items = value if isinstance(value, list) else [value]
            env[LIST_KEYS[key]] = ",".join(str(item) for item in items)
        elif key in TABLE_KEYS:
            expected = list if key == "regions" else dict
            if not isinstance(value, expected):
                raise SettingsError(f"{path}: {key} must be " + ("an array of tables ([[regions]])"
                                                                  if key == "regions" else "a table ([storage])"))
            env[TABLE_KEYS[key]] = json.dumps(value, default=str)
        else:
            known = ", ".join([*SCALAR_KEYS, *LIST_KEYS, *TABLE_KEYS])
            raise SettingsError(f"{path}: unknown setting {key!r}; known settings: {known}")
    return env
