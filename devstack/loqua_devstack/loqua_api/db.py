"""SQLite persistence: users, progress updates, session records and an audit trail of agent actions.

One connection guarded by a lock; the web handlers call these methods through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id      TEXT PRIMARY KEY,
    email        TEXT,
    display_name TEXT NOT NULL,
    preferences  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS progress_updates (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES users(user_id),
    session_id  TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    data        TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS progress_by_user ON progress_updates(user_id, id);
CREATE TABLE IF NOT EXISTS sessions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL UNIQUE,
    user_id    TEXT NOT NULL REFERENCES users(user_id),
    agent_id   TEXT NOT NULL,
    record     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user_id, seq);
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    action   TEXT NOT NULL,
    at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_user ON audit(user_id, id);
CREATE TABLE IF NOT EXISTS learner_sessions (
    dispatch_uid TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (dispatch_uid, user_id)
);
"""


class UserExistsError(Exception):
    pass


class SessionConflictError(Exception):
    """The session id is already taken by another user's record."""


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # durable across process restarts
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- users -----------------------------------------------------------------------------
    def create_user(self, user: dict[str, Any]) -> dict[str, Any]:
        with self._lock, self._conn:
            try:
                self._conn.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        user["user_id"],
                        user["email"],
                        user["display_name"],
                        json.dumps(user["preferences"]),
                        user["created_at"],
                        user["updated_at"],
                    ),
                )
            except sqlite3.IntegrityError:
                raise UserExistsError(user["user_id"]) from None
        return user

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM users WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            return None
        return {**dict(row), "preferences": json.loads(row["preferences"])}

    # ---- agent actions ---------------------------------------------------------------------
    def _audit(self, user_id: str, agent_id: str, action: str, at: str) -> None:
        self._conn.execute(
            "INSERT INTO audit (user_id, agent_id, action, at) VALUES (?, ?, ?, ?)",
            (user_id, agent_id, action, at),
        )

    def record_action(self, user_id: str, agent_id: str, action: str, at: str) -> None:
        with self._lock, self._conn:
            self._audit(user_id, agent_id, action, at)

    def add_progress(self, user_id: str, session_id: str, agent_id: str, data: dict[str, Any], at: str) -> int:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT INTO progress_updates (user_id, session_id, agent_id, data, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, session_id, agent_id, json.dumps(data), at),
            )
            self._conn.execute("UPDATE users SET updated_at = ? WHERE user_id = ?", (at, user_id))
            self._audit(user_id, agent_id, "progress", at)
            return int(cur.lastrowid or 0)

    def add_session(self, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store a session record once: a repeat of the same session id returns the stored one."""
        body = {k: v for k, v in record.items() if k not in ("session_id", "user_id", "agent_id", "created_at")}
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT INTO sessions (session_id, user_id, agent_id, record, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(session_id) DO NOTHING",
                (
                    record["session_id"],
                    record["user_id"],
                    record["agent_id"],
                    json.dumps(body),
                    record["created_at"],
                ),
            )
            created = cur.rowcount == 1
            if created:
                at = record["created_at"]
                self._conn.execute("UPDATE users SET updated_at = ? WHERE user_id = ?", (at, record["user_id"]))
                self._audit(record["user_id"], record["agent_id"], "session", at)
            row = self._conn.execute("SELECT * FROM sessions WHERE session_id = ?", (record["session_id"],)).fetchone()
        stored = _session(row)
        if stored["user_id"] != record["user_id"]:
            raise SessionConflictError(record["session_id"])
        return stored, created

    def learner_session(self, dispatch_uid: str, user_id: str, new_session_id: str, at: str) -> str:
        """The learner's ``sessionId`` for one AgentDispatch object: the first join picks it, every
        later join (a page refresh) gets the same one; a new object (after TTL expiry) a new one."""
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO learner_sessions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (dispatch_uid, user_id, new_session_id, at),
            )
            row = self._conn.execute(
                "SELECT session_id FROM learner_sessions WHERE dispatch_uid = ? AND user_id = ?",
                (dispatch_uid, user_id),
            ).fetchone()
        return str(row["session_id"])

    # ---- reads -----------------------------------------------------------------------------
    def list_progress(self, user_id: str) -> list[dict[str, Any]]:
        """Progress updates of a user, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM progress_updates WHERE user_id = ? ORDER BY id", (user_id,)
            ).fetchall()
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    def list_sessions(self, user_id: str) -> list[dict[str, Any]]:
        """Session records of a user, oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM sessions WHERE user_id = ? ORDER BY seq", (user_id,)).fetchall()
        return [_session(r) for r in rows]

    def list_audit(self, user_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT action, agent_id, at FROM audit WHERE user_id = ? ORDER BY id", (user_id,)
            ).fetchall()
        return [dict(r) for r in rows]


def _session(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "session_id": row["session_id"],
        "user_id": row["user_id"],
        "agent_id": row["agent_id"],
        **json.loads(row["record"]),
        "created_at": row["created_at"],
    }
