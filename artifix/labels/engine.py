"""Opening a label store and talking to its database: engines, short retried transactions, schema creation and migration.

A store is a SQLite file (the default; WAL journal, `synchronous=FULL`, foreign keys on, busy timeout, retried when
locked) or any SQLAlchemy URL (e.g. `postgresql+psycopg://user@host/db`). It is written with SQLAlchemy Core and short
transactions, so several processes (dashboard workers, CLI runs) can write to the same store at once.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from ..errors import RuntimeFailure, UserError
from .schema import PG_LOCK_KEY, PG_TRIGGERS, SCHEMA_VERSION, SQLITE_TRIGGERS, audit_t, metadata, schema_version
from .values import dumps, jsonable, now_us

__all__ = ["StoreEngine"]

T = TypeVar("T")


def _is_retryable(exc: sa.exc.DBAPIError) -> bool:
    orig = getattr(exc, "orig", None)
    msg = str(orig or exc).lower()
    if isinstance(orig, sqlite3.OperationalError):
        return "locked" in msg or "busy" in msg
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in ("40001", "40P01", "55P03")  # serialization failure, deadlock, lock not available


class StoreEngine:
    """A database connection for the label store: opening, retried transactions, the schema and audit rows."""

    def __init__(self, location: str | os.PathLike = "labels.db", *, busy_timeout: float = 10.0,
                 lock_timeout: float = 120.0, echo: bool = False) -> None:
        """Open (creating if missing) the store at a SQLite file path, ':memory:', or a SQLAlchemy URL."""
        self.lock_timeout = float(lock_timeout)
        self.lock_retries = 0  # how often a transaction was retried because the database was locked
        self._pid = os.getpid()
        url, self.location = self._resolve(location)
        self.url: URL = url
        self.is_sqlite = url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": not self.is_sqlite}
        memory = self.is_sqlite and url.database in (None, "", ":memory:")
        if memory:
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif self.is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout}
        try:
            self._engine: Engine = sa.create_engine(url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise UserError(f"cannot open label store {self.location!r} ({exc}); "
                            "give a SQLite file path or a valid SQLAlchemy URL.") from None
        if self.is_sqlite:
            self._setup_sqlite(self._engine, int(busy_timeout * 1000), wal=not memory)
        try:
            self._init_schema()
        except sa.exc.DatabaseError as exc:
            self._engine.dispose()
            if self.is_sqlite and "not a database" in str(exc.orig):
                raise UserError(f"{self.location} is not a SQLite database; give a new file name or an artifix label store.") from None
            raise

    # -- connection handling

    @staticmethod
    def _resolve(location: str | os.PathLike) -> tuple[URL, str]:
        if isinstance(location, URL):
            return location, location.render_as_string(hide_password=True)
        s = os.fspath(location)
        if s == ":memory:":
            return make_url("sqlite://"), ":memory:"
        if "://" in s:
            try:
                url = make_url(s)
            except sa.exc.ArgumentError:
                raise UserError(f"{s!r} is not a valid database URL; "
                                "use e.g. 'postgresql+psycopg://user@host/db' or a file path.") from None
            return url, url.render_as_string(hide_password=True)
        path = Path(s).expanduser().absolute()
        if path.is_dir():
            raise UserError(f"{path} is a folder; give the label store's file name, e.g. {path / 'labels.db'}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        return URL.create("sqlite", database=str(path)), str(path)

    @staticmethod
    def _setup_sqlite(engine: Engine, busy_ms: int, wal: bool) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cur.execute("PRAGMA foreign_keys = ON")
                if wal:
                    cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = FULL")
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the write lock at BEGIN, where the busy timeout can wait for it. A deferred
            # transaction that reads first and writes later fails at once (SQLITE_BUSY_SNAPSHOT in WAL)
            # when another writer committed in between, which no busy timeout can help.
            immediate = conn.get_execution_options().get("artifix_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # forked: never reuse the parent's connections
            self._engine.dispose(close=False)
            self._pid = os.getpid()

    def _transact(self, fn: Callable[[Connection], T], write: bool) -> T:
        self._check_pid()
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            try:
                with self._engine.connect() as conn:
                    if write:
                        conn.execution_options(artifix_write=True)
                    with conn.begin():
                        return fn(conn)
            except sa.exc.DBAPIError as exc:
                if not _is_retryable(exc):
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeFailure(
                        f"the label store {self.location} stayed locked by another process for over "
                        f"{self.lock_timeout:.0f} s; close the other writer or try again."
                    ) from exc
                self.lock_retries += 1
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.25)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        return self._transact(fn, write=False)

    def _write(self, fn: Callable[[Connection], T]) -> T:
        return self._transact(fn, write=True)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for read-only queries by other tools; write through the methods)."""
        self._check_pid()
        return self._engine

    def close(self) -> None:
        """Close all pooled connections."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # -- schema

    def _init_schema(self) -> None:
        def current(conn: Connection) -> int | None:
            if not sa.inspect(conn).has_table("schema_version"):
                return None
            return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()

        found = self._read(current)
        if found == SCHEMA_VERSION:
            return

        def create(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
            version = current(conn)
            if version is None or version < SCHEMA_VERSION:
                metadata.create_all(conn)
                for stmt in PG_TRIGGERS if conn.dialect.name == "postgresql" else SQLITE_TRIGGERS:
                    conn.exec_driver_sql(stmt)
                now = now_us()
                conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied=now))
                self._audit(conn, "artifix", "create_store" if version is None else "migrate_store",
                            None, {"schema_version": SCHEMA_VERSION, **({} if version is None else {"from": version})}, now)
            elif version > SCHEMA_VERSION:
                raise self._too_new(version)

        if found is not None and found > SCHEMA_VERSION:
            raise self._too_new(found)
        self._write(create)

    def _too_new(self, version: int) -> UserError:
        """The error for a store whose schema is newer than this artifix understands."""
        return UserError(
            f"the label store {self.location} has schema version {version}, newer than this artifix "
            f"understands ({SCHEMA_VERSION}); upgrade artifix."
        )

    @staticmethod
    def _audit(conn: Connection, actor: str, action: str, run_id: int | None, detail: Mapping[str, Any],
               now: int | None = None) -> None:
        conn.execute(audit_t.insert().values(
            time=now_us() if now is None else now, actor=actor, action=action, run_id=run_id,
            detail=dumps(jsonable(dict(detail), "audit detail"))))
