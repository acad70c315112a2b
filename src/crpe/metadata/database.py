"""Connections and transactions of the metadata database, for SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from crpe.metadata.records import Conflict


class _Result:
    """The part of a query result the store uses, the same for sqlite3 and SQLAlchemy."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class _Transaction:
    """One write transaction; `execute` takes SQL with :name parameters on either backend."""

    def __init__(self, run: Any) -> None:
        self._run = run

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> _Result:
        return self._run(sql, params or {})


class Database:
    """The connection to the metadata database. On SQLite (the embedded default) queries run through the
    sqlite3 module, which costs microseconds per query; other databases go through SQLAlchemy, imported only
    then.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._local = threading.local()
        self._engine: Any = None if self.is_sqlite else self._sqlalchemy_engine()

    def _sqlalchemy_engine(self) -> Any:
        from sqlalchemy import create_engine

        return create_engine(self.url, pool_pre_ping=True)

    def create_schema(self) -> None:
        """Bring the database to the newest schema revision."""
        from crpe.metadata import migrate

        migrate.upgrade(self.url)

    def close(self) -> None:
        for name in ("connection", "postgres"):
            connection = getattr(self._local, name, None)
            if connection is not None:
                connection.close()
                setattr(self._local, name, None)
        if self._engine is not None:
            self._engine.dispose()

    def _lock_instance(self, connection: _Transaction, instance_id: str) -> None:
        """Serialize check-then-insert writes inside one instance (quotas, repository creation).

        SQLite needs nothing: BEGIN IMMEDIATE already lets one writer in at a time. PostgreSQL's READ COMMITTED
        would let two transactions both pass a count check, so they queue on the instance's row.
        """
        if not self.is_sqlite:
            connection.execute("SELECT id FROM instances WHERE id = :i FOR UPDATE", {"i": instance_id})

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[_Transaction]:
        """Run one transaction; on SQLite it begins IMMEDIATE so concurrent writers wait instead of failing.

        `durable=False` is for upload bookkeeping only: SQLite then commits without fsync, so a power loss
        may bring back an older upload row. That row is still consistent, because an upload's bytes are
        fsynced before a row records them, and the client resumes from the offset it reports. It saves three
        fsyncs per pushed blob.
        """
        if self.is_sqlite:
            connection = self._sqlite_reader()
            if not durable:
                connection.execute("PRAGMA synchronous=NORMAL")
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield _Transaction(lambda sql, params: _sqlite_result(connection.execute(sql, params)))
                    connection.execute("COMMIT")
                except sqlite3.IntegrityError as error:
                    connection.execute("ROLLBACK")
                    raise Conflict(str(error)) from None
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    connection.execute("PRAGMA synchronous=FULL")
            return
        from sqlalchemy import exc, text

        try:
            with self._engine.begin() as connection:
                yield _Transaction(lambda sql, params: _sqlalchemy_result(connection.execute(text(sql), params)))
        except exc.IntegrityError as error:
            raise Conflict(str(error.orig)) from None

    def _sqlite_reader(self) -> sqlite3.Connection:
        """Return this thread's sqlite3 connection, in autocommit mode outside `_write` transactions.

        SQLAlchemy costs about 0.1 ms per query on top of SQLite's own microseconds, which halved manifest
        GET throughput.
        """
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30, isolation_level=None,
                                         check_same_thread=True)
            connection.row_factory = _row
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the client hears 201.
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    def _one(self, sql: str, **params: Any) -> Any:
        if self.is_sqlite:
            return self._sqlite_reader().execute(sql, params).fetchone()
        rows = self._all(sql, **params)
        return rows[0] if rows else None

    def _all(self, sql: str, **params: Any) -> list[Any]:
        if self.is_sqlite:
            return self._sqlite_reader().execute(sql, params).fetchall()
        return self._postgres_read(_psycopg_sql(sql), params)

    def _postgres_read(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """Run one read on this thread's autocommit psycopg connection, reconnecting once if it broke.

        A read through SQLAlchemy's pool costs a checkout, a pre-ping and a BEGIN and ROLLBACK: four round trips
        where one will do. Writes keep SQLAlchemy's transactions.
        """
        import psycopg

        for attempt in (1, 2):
            connection = getattr(self._local, "postgres", None)
            if connection is None or connection.closed:
                connection = psycopg.connect(self._postgres_conninfo(), autocommit=True,
                                             row_factory=psycopg.rows.namedtuple_row)
                self._local.postgres = connection
            try:
                return connection.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _postgres_conninfo(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)


# A `:name` parameter of the SQL this package writes, which psycopg spells `%(name)s`.
_NAMED_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


@functools.lru_cache(maxsize=1024)
def _psycopg_sql(sql: str) -> str:
    return _NAMED_PARAMETER.sub(r"%(\1)s", sql)


def _sqlite_result(cursor: sqlite3.Cursor) -> _Result:
    rows = cursor.fetchall() if cursor.description else []
    return _Result(rows, cursor.rowcount)


def _sqlalchemy_result(result: Any) -> _Result:
    rows = list(result) if result.returns_rows else []
    return _Result(rows, result.rowcount)


class Row(dict[str, Any]):
    """A result row whose columns read as attributes, like SQLAlchemy's rows."""

    __getattr__ = dict.__getitem__


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return Row(zip((column[0] for column in cursor.description), values, strict=True))
