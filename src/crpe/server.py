"""Run the HTTP server: a Granian supervisor with worker processes that build `crpe.app`.

`crpe serve` prepares the data directory, then replaces itself with this module so the supervisor, which
lives as long as the server, does not keep the CLI's imports (Typer, Rich, SQLAlchemy) resident.
"""

from __future__ import annotations

import os

from granian.constants import Interfaces, Loops
from granian.server import Server

from crpe.settings import from_environment


def main() -> None:
    settings = from_environment()
    Server(
        "crpe.app:create_app_from_environment", address=settings.listen_host, port=settings.listen_port,
        interface=Interfaces.ASGI, workers=settings.workers or os.cpu_count() or 1, loop=Loops.uvloop,
        factory=True, log_access=False, respawn_failed_workers=True,
    ).serve()


if __name__ == "__main__":
    main()
