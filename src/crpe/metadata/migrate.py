"""Schema migrations with Alembic, for SQLite and PostgreSQL alike.

The configuration lives in code, so an installed crpe needs no alembic.ini: `upgrade(url)` brings any
database to the newest revision. A database created before migrations existed (its tables present, no
`alembic_version`) is stamped with the first revision, whose schema it has, and upgraded from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

FIRST_REVISION = "0001"
# PostgreSQL advisory lock keys: several nodes that start at once migrate and bootstrap one at a time.
MIGRATION_LOCK = 0x63727065_0001
BOOTSTRAP_LOCK = 0x63727065_0002


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return config


def upgrade(url: str) -> str:
    """Migrate the database at `url` to the newest revision and return that revision."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            config = _config()
            config.attributes["connection"] = connection
            tables = set(inspect(connection).get_table_names())
            if "accounts" in tables and "alembic_version" not in tables:
                command.stamp(config, FIRST_REVISION)
            command.upgrade(config, "head")
        with engine.connect() as connection:
            return str(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar())
    finally:
        engine.dispose()


@contextmanager
def exclusive(url: str) -> Iterator[None]:
    """Hold the deployment-wide bootstrap lock on PostgreSQL; SQLite serves one machine and needs none."""
    if not url.startswith("postgresql"):
        yield
        return
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({BOOTSTRAP_LOCK})")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({BOOTSTRAP_LOCK})")
                connection.commit()
    finally:
        engine.dispose()
