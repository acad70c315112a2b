"""Deployment settings: command-line flags and `CRPE_*` environment variables, validated once at start."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from crpe.endpoints import REGION_ID_PATTERN

# The cloud's region ids and display names; a deployment may serve any subset or its own list.
DEFAULT_REGIONS: dict[str, str] = {
    "cn-hangzhou": "China (Hangzhou)",
    "cn-shanghai": "China (Shanghai)",
    "cn-beijing": "China (Beijing)",
    "cn-shenzhen": "China (Shenzhen)",
    "cn-qingdao": "China (Qingdao)",
    "cn-zhangjiakou": "China (Zhangjiakou)",
    "cn-huhehaote": "China (Hohhot)",
    "cn-chengdu": "China (Chengdu)",
    "cn-hongkong": "China (Hong Kong)",
    "ap-southeast-1": "Singapore",
    "ap-southeast-3": "Malaysia (Kuala Lumpur)",
    "ap-southeast-5": "Indonesia (Jakarta)",
    "ap-northeast-1": "Japan (Tokyo)",
    "ap-south-1": "India (Mumbai)",
    "us-east-1": "US (Virginia)",
    "us-west-1": "US (Silicon Valley)",
    "eu-central-1": "Germany (Frankfurt)",
    "eu-west-1": "UK (London)",
    "me-east-1": "UAE (Dubai)",
}

# Loopback and the private address ranges (RFC 1918, RFC 4193).
DEFAULT_VPC_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the setting and the fix."""


STORAGE_TYPES = ("filesystem", "s3")
REGION_KEYS = {"id", "name", "vpc_networks", "storage"}
BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                 "off": False}
ADDRESSING_STYLES = ("auto", "path", "virtual")


@dataclass(frozen=True)
class StorageSettings:
    """The blob store of one region: a local directory, or a bucket of S3-compatible object storage."""

    type: str = "filesystem"
    # filesystem: the directory; empty means <data_dir>/storage/<region>.
    path: str = ""
    # s3: credentials left empty come from boto3's usual chain (AWS_ACCESS_KEY_ID, ~/.aws, instance roles).
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""
    region_name: str = ""
    access_key: str = ""
    secret_key: str = ""
    addressing_style: str = "auto"
    # Respond to blob GETs with a 307 redirect to a presigned URL instead of streaming the bytes through crpe.
    redirect: bool = False
    redirect_endpoint: str = ""
    redirect_seconds: int = 1200

    def view(self) -> dict[str, object]:
        return {key: value for key, value in self.__dict__.items() if value != getattr(StorageSettings, key)}


@dataclass(frozen=True)
class Region:
    id: str
    name: str
    vpc_networks: tuple[IPNetwork, ...]
    storage: StorageSettings = StorageSettings()


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    domain: str = "localhost"
    listen_host: str = "127.0.0.1"
    listen_port: int = 5000
    regions: tuple[Region, ...] = ()
    workers: int = 0  # 0: one worker process per CPU core.
    token_ttl_seconds: int = 300
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    public_endpoint_pull_allowed: bool = False
    max_manifest_bytes: int = 4 * 1024 * 1024
    trusted_proxies: tuple[IPNetwork, ...] = field(default_factory=tuple)
    # Instances created before this date are legacy instances, served on the shared regional endpoints.
    legacy_cutover: datetime.date = datetime.date(2024, 9, 9)
    namespace_quota: int = 3
    repository_quota: int = 300
    access_log: bool = True
    # "" means the embedded default: SQLite in the data directory.
    database: str = ""
    # Every node of a deployment must sign tokens with the same key; None means <data_dir>/keys/.
    token_key_file: Path | None = None

    def region(self, region_id: str) -> Region | None:
        for region in self.regions:
            if region.id == region_id:
                return region
        return None

    @property
    def region_ids(self) -> list[str]:
        return [region.id for region in self.regions]

    @property
    def signing_key_path(self) -> Path:
        return self.token_key_file or self.data_dir / "keys" / "token-signing-key.pem"

    def storage_path(self, region: Region) -> Path:
        return Path(region.storage.path) if region.storage.path else self.data_dir / "storage" / region.id

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'crpe.sqlite3'}"

    def to_environment(self) -> dict[str, str]:
        """Encode the settings for worker processes, which rebuild them with `from_environment`."""
        return {
            "CRPE_DATA_DIR": str(self.data_dir),
            "CRPE_DOMAIN": self.domain,
            "CRPE_LISTEN": f"{self.listen_host}:{self.listen_port}",
            "CRPE_REGIONS": json.dumps([
                {"id": r.id, "name": r.name, "vpc_networks": [str(n) for n in r.vpc_networks],
                 "storage": r.storage.view()}
                for r in self.regions
            ]),
            "CRPE_WORKERS": str(self.workers),
            "CRPE_TOKEN_TTL": str(self.token_ttl_seconds),
            "CRPE_PUBLIC_ENDPOINT_PULL": "true" if self.public_endpoint_pull_allowed else "false",
            "CRPE_TRUSTED_PROXIES": ",".join(str(n) for n in self.trusted_proxies),
            "CRPE_LEGACY_CUTOVER": self.legacy_cutover.isoformat(),
            "CRPE_NAMESPACE_QUOTA": str(self.namespace_quota),
            "CRPE_REPOSITORY_QUOTA": str(self.repository_quota),
            "CRPE_ACCESS_LOG": "true" if self.access_log else "false",
            "CRPE_DATABASE_URL": self.database,
            "CRPE_TOKEN_KEY_FILE": str(self.token_key_file or ""),
        }


def parse_networks(value: str, setting: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as error:
            raise SettingsError(f"{setting}: {item!r} is not a CIDR network ({error})") from None
    return tuple(networks)


def parse_listen(value: str) -> tuple[str, int]:
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"listen address {value!r} must be HOST:PORT, for example 127.0.0.1:5000")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_storage(value: object, setting: str, region_id: str, defaults: StorageSettings | None = None
                  ) -> StorageSettings:
    """Parse one storage table; keys it leaves out come from `defaults`."""
    if not isinstance(value, dict):
        raise SettingsError(f"{setting} must be a table of storage settings such as "
                            '{"type": "s3", "bucket": "registry"}')
    fields = dict((defaults or StorageSettings()).__dict__)
    for key, item in value.items():
        if key not in fields:
            raise SettingsError(f"{setting} has an unknown key {key!r}; known keys: {', '.join(fields)}")
        expected = type(getattr(StorageSettings, key))
        if expected is bool and isinstance(item, str):
            item = parse_boolean(item, f"{setting}.{key}")
        if not isinstance(item, expected) or (expected is int and isinstance(item, bool)):
            kind = {str: "a string", int: "an integer", bool: "true or false"}[expected]
            raise SettingsError(f"{setting}.{key} must be {kind}, not {item!r}")
        fields[key] = item
    storage = StorageSettings(**fields)
    if storage.type not in STORAGE_TYPES:
        raise SettingsError(f"{setting}.type {storage.type!r} is not supported; use one of "
                            f"{', '.join(STORAGE_TYPES)}")
    if storage.type == "s3":
        if not storage.bucket:
            raise SettingsError(f"{setting} uses S3 storage but names no bucket; set its bucket key")
        if storage.addressing_style not in ADDRESSING_STYLES:
            raise SettingsError(f"{setting}.addressing_style must be one of {', '.join(ADDRESSING_STYLES)}")
        if storage.redirect_seconds < 1:
            raise SettingsError(f"{setting}.redirect_seconds must be at least 1")
        for key in ("endpoint", "redirect_endpoint"):
            url = getattr(storage, key)
            if url and not url.startswith(("http://", "https://")):
                raise SettingsError(f"{setting}.{key} {url!r} must be an http:// or https:// URL")
    # Regions sharing a bucket stay apart: "{region}" in the prefix becomes the region id, and it is the
    # default prefix of S3 storage.
    prefix = storage.prefix or ("{region}/" if storage.type == "s3" else "")
    prefix = prefix.replace("{region}", region_id)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return replace(storage, prefix=prefix)


def parse_regions(value: str, vpc_networks: tuple[IPNetwork, ...], storage: dict[str, object]
                  ) -> tuple[Region, ...]:
    """Parse `CRPE_REGIONS`: a JSON list of {id, name, vpc_networks, storage} or a comma-separated list of ids.

    `storage` is the default storage table of every region; a region's own table overrides its keys.
    """
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as error:
            raise SettingsError(f"CRPE_REGIONS is not valid JSON: {error}") from None
    else:
        items = [{"id": region_id.strip()} for region_id in value.split(",") if region_id.strip()]
    regions = []
    for item in items:
        if not isinstance(item, dict):
            raise SettingsError(f"CRPE_REGIONS: each region must be a table with an id, not {item!r}")
        unknown = set(item) - REGION_KEYS
        if unknown:
            raise SettingsError(f"region {item.get('id', '?')!r} has an unknown key {sorted(unknown)[0]!r}; "
                                f"known keys: {', '.join(sorted(REGION_KEYS))}")
        region_id = str(item.get("id", ""))
        if not REGION_ID_PATTERN.match(region_id):
            raise SettingsError(f"region id {region_id!r} is invalid: use lower-case words joined by "
                                "hyphens, such as cn-hangzhou")
        networks = item.get("vpc_networks")
        defaults = parse_storage(storage, "storage", region_id) if storage else StorageSettings()
        region_storage = item.get("storage")
        regions.append(Region(
            region_id, str(item.get("name") or DEFAULT_REGIONS.get(region_id, region_id)),
            parse_networks(",".join(networks), f"vpc_networks of {region_id}") if networks else vpc_networks,
            parse_storage(region_storage, f"storage of region {region_id}", region_id, defaults)
            if region_storage else defaults,
        ))
    if not regions:
        raise SettingsError("no regions configured: set CRPE_REGIONS, for example cn-hangzhou,cn-shanghai")
    if len({region.id for region in regions}) != len(regions):
        raise SettingsError("CRPE_REGIONS lists a region twice")
    locations: dict[tuple[str, ...], str] = {}
    for region in regions:
        storage = region.storage
        if storage.type == "s3":
            location = ("s3", storage.endpoint, storage.bucket, storage.prefix)
        else:
            location = ("filesystem", storage.path or region.id)
        if location in locations:
            # Garbage collection of one region would delete the blobs that only the other one references.
            raise SettingsError(f"regions {locations[location]} and {region.id} share one blob store location; "
                                'give each its own path or prefix, for example prefix = "{region}/"')
        locations[location] = region.id
    return tuple(regions)


def from_environment(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from a configuration file, then `CRPE_*` variables, then keyword overrides.

    Each later source wins. The file is the `config` override (the --config flag) or `CRPE_CONFIG`.
    """
    env = dict(os.environ if environ is None else environ)
    config_file = overrides.get("config") or env.get("CRPE_CONFIG")
    if config_file:
        from crpe.config_file import load_config_file

        env = {**load_config_file(Path(str(config_file))), **env}
    data_dir = overrides.get("data_dir") or env.get("CRPE_DATA_DIR") or "./crpe-data"
    listen = str(overrides.get("listen") or env.get("CRPE_LISTEN") or "127.0.0.1:5000")
    host, port = parse_listen(listen)
    domain = str(overrides.get("domain") or env.get("CRPE_DOMAIN") or "localhost").lower().rstrip(".")
    if not domain or " " in domain:
        raise SettingsError(f"domain {domain!r} is invalid: give a DNS name such as registry.example.com")
    vpc_networks = parse_networks(env.get("CRPE_VPC_NETWORKS", ",".join(DEFAULT_VPC_NETWORKS)),
                                  "CRPE_VPC_NETWORKS")
    storage_text = env.get("CRPE_STORAGE") or ""
    try:
        storage = json.loads(storage_text) if storage_text.strip() else {}
    except json.JSONDecodeError as error:
        raise SettingsError(f"CRPE_STORAGE is not valid JSON: {error}") from None
    regions = parse_regions(env.get("CRPE_REGIONS") or ",".join(DEFAULT_REGIONS), vpc_networks, storage)
    workers = _integer(overrides.get("workers") or env.get("CRPE_WORKERS") or 0, "CRPE_WORKERS", 0)
    token_ttl = _integer(env.get("CRPE_TOKEN_TTL") or 300, "CRPE_TOKEN_TTL", 10)
    namespace_quota = _integer(env.get("CRPE_NAMESPACE_QUOTA") or 3, "CRPE_NAMESPACE_QUOTA", 0)
    repository_quota = _integer(env.get("CRPE_REPOSITORY_QUOTA") or 300, "CRPE_REPOSITORY_QUOTA", 0)
    cutover_text = env.get("CRPE_LEGACY_CUTOVER") or "2024-09-09"
    try:
        cutover = datetime.date.fromisoformat(cutover_text)
    except ValueError:
        raise SettingsError(f"CRPE_LEGACY_CUTOVER {cutover_text!r} must be a date such as 2024-09-09") from None
    return Settings(
        data_dir=Path(str(data_dir)).resolve(),
        domain=domain,
        listen_host=host,
        listen_port=port,
        regions=regions,
        workers=workers,
        token_ttl_seconds=token_ttl,
        public_endpoint_pull_allowed=parse_boolean(env.get("CRPE_PUBLIC_ENDPOINT_PULL", "false"),
                                                   "CRPE_PUBLIC_ENDPOINT_PULL"),
        trusted_proxies=parse_networks(env.get("CRPE_TRUSTED_PROXIES", ""), "CRPE_TRUSTED_PROXIES"),
        legacy_cutover=cutover,
        namespace_quota=namespace_quota,
        repository_quota=repository_quota,
        access_log=parse_boolean(env.get("CRPE_ACCESS_LOG", "true"), "CRPE_ACCESS_LOG"),
        database=normalize_database_url(str(overrides.get("database_url") or env.get("CRPE_DATABASE_URL") or "")),
        token_key_file=Path(env["CRPE_TOKEN_KEY_FILE"]).resolve() if env.get("CRPE_TOKEN_KEY_FILE") else None,
    )


def normalize_database_url(url: str) -> str:
    """Accept postgresql:// and postgres:// URLs and pick the psycopg 3 driver; reject other schemes."""
    if not url:
        return ""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith("sqlite:///"):
        return url
    raise SettingsError(f"database URL {url.split('://')[0]}://... is not supported; use "
                        "postgresql://user:password@host:port/database or sqlite:///path")


def parse_boolean(value: str, setting: str) -> bool:
    try:
        return BOOLEAN_WORDS[value.strip().lower()]
    except KeyError:
        raise SettingsError(f"{setting} must be true or false, not {value!r}") from None


def _integer(value: object, setting: str, minimum: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise SettingsError(f"{setting} must be an integer, not {value!r}") from None
    if number < minimum:
        raise SettingsError(f"{setting} must be at least {minimum}, not {number}")
    return number
