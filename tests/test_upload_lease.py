"""Which upload lease holders count as dead: only processes of this machine's boot that no longer run."""

from __future__ import annotations

import os
import subprocess
import time

from crpe.registry.upload_lease import holder_is_dead, new_owner, node_id


def unused_pid() -> int:
    """Return a process id that no process has now."""
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_running_holder_is_alive() -> None:
    assert holder_is_dead(new_owner()) is False


def test_exited_holder_is_dead() -> None:
    assert holder_is_dead(f"{node_id()}/{unused_pid()}/abc") is True


def test_zombie_holder_is_dead() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    # Until it is reaped, the exited child stays in the process table as a zombie.
    while time.monotonic() < deadline:
        with open(f"/proc/{child.pid}/stat") as file:
            if file.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.01)

    dead = holder_is_dead(f"{node_id()}/{child.pid}/abc")
    child.wait()

    assert dead is True


def test_other_machine_holder_is_alive() -> None:
    assert holder_is_dead(f"other-host:boot:1/{unused_pid()}/abc") is False


def test_malformed_owner_is_alive() -> None:
    assert holder_is_dead("garbage") is False
    assert holder_is_dead(f"{node_id()}/not-a-pid/abc") is False
