"""Fixtures for the end-to-end tests: a real multi-layer Debian image, client sandboxes, instances."""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import ClientSandbox, read_layout_image, snapshot_tree, unpack_layout
from image_build import IMAGE_CACHE_KEY, IMAGE_CACHE_ROOT, IMAGE_TAG, E2EImage, build_image
from server import CrpeServer, Instance


@pytest.fixture(scope="session")
def e2e_image(request: pytest.FixtureRequest) -> E2EImage:
    """The test image, built on first use and reused from .cache/e2e-image/ by later runs."""
    for tool in ("mmdebstrap", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian package {tool}); it builds the e2e test image")
    IMAGE_CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    destination = IMAGE_CACHE_ROOT / IMAGE_CACHE_KEY
    # The lock serializes builds of parallel test processes that share the cache.
    with open(IMAGE_CACHE_ROOT / f"{IMAGE_CACHE_KEY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built_now = not destination.exists()
        if built_now:
            build_image(destination)
    build_seconds = json.loads((destination / "build.json").read_text())["build_seconds"]
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        action = "built" if built_now else "reused"
        terminal.write_line(f"e2e image {action}: {destination} (build took {build_seconds} s)")
    return E2EImage(read_layout_image(destination / "layout", IMAGE_TAG), build_seconds, built_now)


@pytest.fixture(scope="session")
def e2e_image_tree(e2e_image: E2EImage, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Snapshot of the test image's unpacked root file system."""
    bundle = tmp_path_factory.mktemp("e2e-image") / "bundle"
    rootfs = unpack_layout(e2e_image.layout, e2e_image.tag, bundle)
    tree = snapshot_tree(rootfs)
    shutil.rmtree(bundle)
    return tree


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[ClientSandbox]:
    client_sandbox = ClientSandbox(tmp_path / "sandbox")
    yield client_sandbox
    client_sandbox.close()


@pytest.fixture
def instance(server: CrpeServer, sandbox: ClientSandbox) -> Instance:
    """A new instance with namespace `team` whose public and VPC names resolve in `sandbox`."""
    created = server.create_instance()
    sandbox.add_host(created.public, created.vpc)
    return created
