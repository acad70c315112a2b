"""Settings from a TOML file, CRPE_* variables and flags, and per-region blob storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crpe.settings import SettingsError, StorageSettings, from_environment

CONFIG = """
data_dir = "data"
listen = "127.0.0.1:5100"
domain = "registry.test"
database_url = "postgresql://crpe@127.0.0.1:5432/crpe"
token_key_file = "keys/signing.pem"
workers = 3
public_endpoint_pull = true
trusted_proxies = ["10.1.0.0/16"]

[storage]
type = "s3"
bucket = "registry"
endpoint = "http://127.0.0.1:7480"
access_key = "AK"
secret_key = "SK"

[[regions]]
id = "cn-hangzhou"
vpc_networks = ["10.0.0.0/8"]

[[regions]]
id = "cn-shanghai"
storage = { bucket = "shanghai", redirect = true }
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "crpe.toml"
    path.write_text(text)
    return path


def test_config_file_sets_everything(tmp_path: Path) -> None:
    settings = from_environment({}, config=str(write_config(tmp_path, CONFIG)))
    hangzhou, shanghai = settings.regions

    assert settings.data_dir == tmp_path / "data"
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 5100)
    assert settings.domain == "registry.test"
    assert settings.database == "postgresql+psycopg://crpe@127.0.0.1:5432/crpe"
    assert settings.signing_key_path == tmp_path / "keys" / "signing.pem"
    assert settings.workers == 3
    assert settings.public_endpoint_pull_allowed is True
    assert [str(network) for network in settings.trusted_proxies] == ["10.1.0.0/16"]
    assert [region.id for region in settings.regions] == ["cn-hangzhou", "cn-shanghai"]
    assert [str(network) for network in hangzhou.vpc_networks] == ["10.0.0.0/8"]
    assert hangzhou.storage == StorageSettings(type="s3", bucket="registry", prefix="cn-hangzhou/",
                                               endpoint="http://127.0.0.1:7480", access_key="AK", secret_key="SK")
    assert shanghai.storage.bucket == "shanghai"
    assert shanghai.storage.prefix == "cn-shanghai/"
    assert shanghai.storage.redirect is True
    assert shanghai.storage.access_key == "AK"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG)

    settings = from_environment({"CRPE_CONFIG": str(path), "CRPE_DOMAIN": "other.test",
                                 "CRPE_REGIONS": "us-east-1"}, listen="127.0.0.1:5200")

    assert settings.domain == "other.test"
    assert settings.listen_port == 5200
    assert [region.id for region in settings.regions] == ["us-east-1"]
    assert settings.regions[0].storage.bucket == "registry"
    assert settings.regions[0].storage.prefix == "us-east-1/"


def test_worker_environment_round_trip(tmp_path: Path) -> None:
    settings = from_environment({}, config=str(write_config(tmp_path, CONFIG)))

    rebuilt = from_environment(settings.to_environment())

    assert rebuilt == settings


def test_default_storage_is_filesystem(tmp_path: Path) -> None:
    settings = from_environment({"CRPE_DATA_DIR": str(tmp_path), "CRPE_REGIONS": "cn-hangzhou"})

    assert settings.regions[0].storage == StorageSettings()
    assert settings.storage_path(settings.regions[0]) == tmp_path / "storage" / "cn-hangzhou"
    assert settings.signing_key_path == tmp_path / "keys" / "token-signing-key.pem"


def test_storage_from_environment_json(tmp_path: Path) -> None:
    storage = {"type": "s3", "bucket": "b", "prefix": "registry/{region}"}

    settings = from_environment({"CRPE_DATA_DIR": str(tmp_path), "CRPE_REGIONS": "cn-beijing",
                                 "CRPE_STORAGE": json.dumps(storage)})

    assert settings.regions[0].storage.prefix == "registry/cn-beijing/"


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 'blue'", "unknown setting 'colour'; known settings: data_dir,"),
    ("listen = [1, 2]", "listen must be a single value, not list"),
    ("regions = 'cn-hangzhou'", "regions must be an array of tables ([[regions]])"),
    ("storage = 's3'", "storage must be a table ([storage])"),
    ("[storage]\ntype = 'ftp'", "storage.type 'ftp' is not supported; use one of filesystem, s3"),
    ("[storage]\ntype = 's3'", "storage uses S3 storage but names no bucket; set its bucket key"),
    ("[storage]\ntype = 's3'\nbucket = 'b'\nbukcet = 'c'", "storage has an unknown key 'bukcet'; known keys:"),
    ("[storage]\ntype = 's3'\nbucket = 'b'\nredirect_seconds = 'soon'",
     "storage.redirect_seconds must be an integer, not 'soon'"),
    ("[storage]\ntype = 's3'\nbucket = 'b'\nendpoint = '127.0.0.1:7480'",
     "storage.endpoint '127.0.0.1:7480' must be an http:// or https:// URL"),
    ("[storage]\ntype = 's3'\nbucket = 'b'\nprefix = 'shared'",
     "regions cn-hangzhou and cn-shanghai share one blob store location"),
    ("listen = ", "cannot be read: "),
    ("[storage]\ntype = 's3'\nbucket = 'b'\nredirect = 'ture'", "storage.redirect must be true or false, not 'ture'"),
    ("access_log = 'maybe'", "CRPE_ACCESS_LOG must be true or false, not 'maybe'"),
])
def test_config_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write_config(tmp_path, text)

    with pytest.raises(SettingsError) as raised:
        from_environment({"CRPE_REGIONS": "cn-hangzhou,cn-shanghai"}, config=str(path))

    assert message in str(raised.value)


def test_region_key_typo_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[[regions]]\nid = 'cn-hangzhou'\nvpc_network = ['10.0.0.0/8']")

    with pytest.raises(SettingsError) as raised:
        from_environment({}, config=str(path))

    assert str(raised.value) == ("region 'cn-hangzhou' has an unknown key 'vpc_network'; known keys: id, name, "
                                 "storage, vpc_networks")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        from_environment({}, config=str(tmp_path / "absent.toml"))

    expected = f"configuration file {tmp_path / 'absent.toml'} does not exist; fix --config or CRPE_CONFIG"
    assert str(raised.value) == expected
