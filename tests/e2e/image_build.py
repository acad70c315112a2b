"""Build the end-to-end test image: a Debian minbase file system in three OCI layers."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from e2e_support import LayoutImage, run_checked

# Debian packages whose programs these tests run. The tests also use unshare and mount from util-linux,
# which every Debian system has.
E2E_DEBIAN_PACKAGES = ("skopeo", "podman", "umoci", "mmdebstrap")

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("CRPE_E2E_DEBIAN_MIRROR", "http://deb.debian.org/debian")
IMAGE_TAG = "v1"
# Change the version whenever build_image changes, so cached images of older builds are not reused.
IMAGE_CACHE_KEY = f"debian-{DEBIAN_SUITE}-minbase-3layers-v1"
IMAGE_CACHE_ROOT = Path(__file__).resolve().parents[2] / ".cache" / "e2e-image"
IMAGE_BUILD_TIMEOUT = 1800

# Files of the second layer, copied from the base file system so that they are real text and binaries.
ADDED_DIRECTORY = "opt/crpe-e2e"
ADDED_BINARIES = ("ls", "cat", "sha256sum", "gzip", "tar")
README_BEFORE = "crpe end-to-end test image, second layer\n"
README_AFTER = "crpe end-to-end test image, changed by the third layer\n"
# Paths that the third layer deletes, so its tar stream carries whiteout entries.
DELETED_FILE = "etc/issue.net"
DELETED_ADDED_FILE = f"{ADDED_DIRECTORY}/licenses/Apache-2.0"
DELETED_DIRECTORY = "usr/share/doc/gzip"


@dataclass(frozen=True)
class E2EImage:
    """The cached test image: an OCI layout, its tagged image and how long the build took."""

    image: LayoutImage
    build_seconds: float
    built_now: bool

    @property
    def layout(self) -> Path:
        return self.image.layout

    @property
    def tag(self) -> str:
        return self.image.tag


def _umoci_repack(layout: Path, bundle: Path, created_by: str) -> None:
    run_checked(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:build",
                 "--history.created_by", created_by, str(bundle)], timeout=600)


def _add_second_layer_files(rootfs: Path) -> None:
    added = rootfs / ADDED_DIRECTORY
    (added / "bin").mkdir(parents=True)
    shutil.copytree(rootfs / "usr/share/common-licenses", added / "licenses", symlinks=True)
    for name in ADDED_BINARIES:
        shutil.copy2(rootfs / "usr/bin" / name, added / "bin" / name)
    os.link(added / "bin" / "cat", added / "bin" / "cat-hardlink")
    os.symlink("../licenses/GPL-3", added / "bin" / "GPL-3")
    (added / "README.txt").write_text(README_BEFORE)
    private = added / "private.txt"
    private.write_text("owned by uid 1000, mode 0640\n")
    os.chown(private, 1000, 1000)
    private.chmod(0o640)
    (added / "empty").touch()


def _change_third_layer_files(rootfs: Path) -> None:
    (rootfs / DELETED_FILE).unlink()
    shutil.rmtree(rootfs / DELETED_DIRECTORY)
    (rootfs / DELETED_ADDED_FILE).unlink()
    (rootfs / ADDED_DIRECTORY / "README.txt").write_text(README_AFTER)


def build_image(destination: Path) -> float:
    """Build the test image as an OCI layout at `destination` and return the build time in seconds.

    Layer 1 is a Debian minbase file system from mmdebstrap, layer 2 adds files copied from it,
    and layer 3 changes one file and deletes others, so it contains whiteouts.
    """
    started = time.monotonic()
    work = destination.parent / f"{destination.name}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _build_layout(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

    build_seconds = time.monotonic() - started
    (work / "build.json").write_text(json.dumps({"build_seconds": round(build_seconds, 1)}))
    work.rename(destination)
    return build_seconds


def _build_layout(work: Path) -> None:
    layout, bundle, rootfs_tar = work / "layout", work / "bundle", work / "rootfs.tar"

    # SOURCE_DATE_EPOCH makes the file system reproducible for one mirror state. mmdebstrap copies the
    # host's resolv.conf and hostname into the chroot, so the hooks delete them.
    run_checked(["mmdebstrap", "--variant=minbase", "--format=tar",
                 "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
                 "--dpkgopt=path-exclude=/usr/share/info/*",
                 '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"',
                 DEBIAN_SUITE, str(rootfs_tar), DEBIAN_MIRROR],
                timeout=IMAGE_BUILD_TIMEOUT, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})

    run_checked(["umoci", "init", "--layout", str(layout)], timeout=60)
    run_checked(["umoci", "new", "--image", f"{layout}:build"], timeout=60)
    run_checked(["umoci", "unpack", "--image", f"{layout}:build", str(bundle)], timeout=600)
    rootfs = bundle / "rootfs"
    # Device nodes stay out of the image, as container runtimes create /dev themselves.
    run_checked(["tar", "--extract", "--file", str(rootfs_tar), "--directory", str(rootfs),
                 "--same-permissions", "--same-owner", "--numeric-owner", "--exclude=./dev/*"], timeout=600)
    rootfs_tar.unlink()
    _umoci_repack(layout, bundle, f"mmdebstrap --variant=minbase {DEBIAN_SUITE}")

    _add_second_layer_files(rootfs)
    _umoci_repack(layout, bundle, f"add /{ADDED_DIRECTORY}")

    _change_third_layer_files(rootfs)
    _umoci_repack(layout, bundle, f"delete /{DELETED_FILE} and change /{ADDED_DIRECTORY}/README.txt")

    run_checked(["umoci", "config", "--image", f"{layout}:build", "--tag", IMAGE_TAG,
                 "--config.cmd", "/bin/bash", "--config.workingdir", "/",
                 "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "--config.label", "org.opencontainers.image.title=crpe-e2e",
                 "--history.created_by", "umoci config"], timeout=60)
    run_checked(["umoci", "rm", "--image", f"{layout}:build"], timeout=60)
    run_checked(["umoci", "gc", "--layout", str(layout)], timeout=60)
    shutil.rmtree(bundle)
