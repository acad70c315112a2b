"""Several `crpe serve` processes that share one PostgreSQL database, one RGW bucket and one signing key.

Each node has its own data directory and port, as separate machines behind a load balancer would. They share
the CLI profile folder, so the administrator key that the first node creates works against every node.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from postgres import PostgresServer
from rgw import RgwServer
from server import CrpeServer


@dataclass
class Cluster:
    nodes: list[CrpeServer]
    bucket: str
    prefix: str
    rgw: RgwServer

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def object_keys(self, folder: str) -> list[str]:
        """List the keys of one folder (blobs, uploads, trash) of the cluster's region in the bucket."""
        client = self.rgw.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                     Prefix=f"{self.prefix}{folder}/"):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys


def start_cluster(root: Path, postgres: PostgresServer, rgw: RgwServer, count: int = 3,
                  **storage: object) -> Cluster:
    """Start `count` nodes at once on a fresh database and bucket; extra keyword arguments go to storage."""
    name = f"cluster-{uuid.uuid4().hex[:10]}"
    database_url = postgres.create_database(name.replace("-", "_"))
    bucket = rgw.create_bucket(name)
    settings = {"type": "s3", "bucket": bucket, "endpoint": rgw.endpoint, "access_key": rgw.access_key,
                "secret_key": rgw.secret_key, **storage}
    env = {
        "CRPE_DATABASE_URL": database_url,
        "CRPE_STORAGE": json.dumps(settings),
        "CRPE_REGIONS": "cn-hangzhou,cn-shanghai",
        "CRPE_TOKEN_KEY_FILE": str(root / "shared" / "token-signing-key.pem"),
        "CRPE_WORKERS": "1",
        "XDG_CONFIG_HOME": str(root / "shared" / "config"),
    }
    nodes = []
    for number in range(count):
        node_root = root / f"node{number}"
        node_root.mkdir(parents=True)
        nodes.append(CrpeServer(node_root, extra_env=env))
    # All nodes start together, so migrations and the first administrator must cope with a race.
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(CrpeServer.start, nodes))
    return Cluster(nodes, bucket, "cn-hangzhou/", rgw)
