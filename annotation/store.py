"""The annotation store: one SQLite file in WAL mode, every write one ``BEGIN IMMEDIATE`` transaction.

Why SQLite/WAL: no external server, readers never block the single writer, and with
``synchronous=FULL`` a decision is on disk before the HTTP reply acknowledges it, so a SIGKILL (or a
power cut) never loses an acknowledged decision.

Tables:

* ``users``        annotators/admins; only sha256(token) is stored; ``revoked_at`` disables them.
* ``sessions``     sha256(session id) -> user, CSRF token, expiry.
* ``items``        one row per pair being annotated; opaque random image ids per side; gold answer.
* ``assignments``  a hand-out of an item to a user: random left/right mapping (``left_column``) and a
                   lease. Unique per (item, user): the same annotator always sees the same mapping.
* ``decisions``    the current decision per (item, user) -- re-submitting replaces it (``revision``+1).
* ``requests``     idempotency keys of every accepted write: a replayed key is refused.
* ``adjudications`` final answers for disputed items.
* ``events``       append-only audit log (decisions, undos, adjudications).

Preferences are stored in the set's own terms: ``preferred`` is "0" (jpg_0 better), "1" or "tie";
``choice`` keeps what the annotator pressed (left/right/tie/skip) and ``left_column`` the mapping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from core.errors import DataError

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users(
  user_id INTEGER PRIMARY KEY,
  name TEXT UNIQUE NOT NULL,
  token_hash TEXT UNIQUE NOT NULL,
  role TEXT NOT NULL CHECK(role IN ('annotator', 'admin')),
  created_at REAL NOT NULL,
  revoked_at REAL);
CREATE TABLE IF NOT EXISTS sessions(
  session_hash TEXT PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(user_id),
  csrf_token TEXT NOT NULL,
  created_at REAL NOT NULL,
  expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items(
  pair_id TEXT PRIMARY KEY,
  row_index INTEGER NOT NULL,
  caption TEXT NOT NULL,
  risk TEXT NOT NULL,
  proposal TEXT,
  scores_0 TEXT,
  scores_1 TEXT,
  gold_answer TEXT CHECK(gold_answer IN ('0', '1', 'tie')),
  image_id_0 TEXT UNIQUE NOT NULL,
  image_id_1 TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS assignments(
  assignment_id TEXT PRIMARY KEY,
  pair_id TEXT NOT NULL REFERENCES items(pair_id),
  user_id INTEGER NOT NULL REFERENCES users(user_id),
  left_column INTEGER NOT NULL CHECK(left_column IN (0, 1)),
  leased_at REAL NOT NULL,
  lease_expires REAL NOT NULL,
  served_seq INTEGER NOT NULL,
  UNIQUE(pair_id, user_id));
CREATE INDEX IF NOT EXISTS assignments_user ON assignments(user_id);
CREATE TABLE IF NOT EXISTS decisions(
  pair_id TEXT NOT NULL REFERENCES items(pair_id),
  user_id INTEGER NOT NULL REFERENCES users(user_id),
  assignment_id TEXT NOT NULL REFERENCES assignments(assignment_id),
  choice TEXT NOT NULL CHECK(choice IN ('left', 'right', 'tie', 'skip')),
  preferred TEXT CHECK(preferred IN ('0', '1', 'tie')),
  left_column INTEGER NOT NULL,
  tags TEXT NOT NULL,
  note TEXT NOT NULL,
  first_decided_at REAL NOT NULL,
  decided_at REAL NOT NULL,
  revision INTEGER NOT NULL,
  PRIMARY KEY(pair_id, user_id));
CREATE INDEX IF NOT EXISTS decisions_user ON decisions(user_id, decided_at);
CREATE TABLE IF NOT EXISTS requests(
  idempotency_key TEXT PRIMARY KEY,
  user_id INTEGER NOT NULL,
  kind TEXT NOT NULL,
  received_at REAL NOT NULL,
  response TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS adjudications(
  pair_id TEXT PRIMARY KEY REFERENCES items(pair_id),
  answer TEXT NOT NULL CHECK(answer IN ('0', '1', 'tie')),
  adjudicator TEXT NOT NULL,
  note TEXT NOT NULL,
  decided_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events(
  event_id INTEGER PRIMARY KEY AUTOINCREMENT,
  at REAL NOT NULL,
  user_id INTEGER,
  kind TEXT NOT NULL,
  pair_id TEXT,
  payload TEXT NOT NULL);
"""

# The database holds CSRF tokens and annotators' notes: owner-only. SQLite gives the -wal and -shm
# files the main file's permissions, so creating that one 0600 covers all three.
FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm")

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
ANSWERS = ("0", "1", "tie")


# --- errors the HTTP layer maps to status codes -------------------------------------------------
class StoreError(Exception):
    status = 400


class BadRequest(StoreError):
    status = 400


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class Replay(Conflict):
    """The idempotency key was already used: the write happened once and is not repeated."""

    def __init__(self, message: str, original: dict):
        super().__init__(message)
        self.original = original


@dataclass(frozen=True)
class User:
    user_id: int
    name: str
    role: str


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def preferred_from_choice(choice: str, left_column: int) -> Optional[str]:
    """Map what was pressed to the set's columns: left -> str(left_column); skip -> None."""
    if choice == "left":
        return str(left_column)
    if choice == "right":
        return str(1 - left_column)
    if choice == "tie":
        return "tie"
    return None


class Store:
    """Thread-safe access to the SQLite file through a small pool of connections."""

    def __init__(self, path: str | Path, pool_size: int = 16):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._make_private()
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool_size = pool_size
        with self.connection() as conn:
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', ?)", (SCHEMA_VERSION,))

    def _make_private(self) -> None:
        """Create the file owner-only (whatever the umask); tighten an existing one others can read."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        for path in [self.path, *(Path(f"{self.path}{suffix}") for suffix in SIDE_FILES)]:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                if path.stat().st_mode & 0o077:
                    os.chmod(path, FILE_MODE)

    # --- connections ---------------------------------------------------------------------------
    def _new_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged decision survives a crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = self._new_connection()
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction:  # a bug path left a transaction open: never reuse it half-done
                conn.rollback()
            self._pool.put(conn)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction: BEGIN IMMEDIATE takes the write lock up front."""
        with self.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()

    # --- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Optional[str]:
        with self.connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as conn:
            conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # --- users and sessions --------------------------------------------------------------------
    def add_user(self, name: str, role: str = "annotator") -> str:
        """Create a user; returns the token (shown once, only its hash is stored)."""
        if not USER_NAME.match(name):
            raise DataError(f"user name {name!r} must be 1-40 characters of letters, digits, '_', '.', '-'")
        if role not in ("annotator", "admin"):
            raise DataError(f"role must be 'annotator' or 'admin', got {role!r}")
        token = secrets.token_urlsafe(32)
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise DataError(f"user {name!r} already exists (revoke it, or pick another name)")
            conn.execute(
                "INSERT INTO users(name, token_hash, role, created_at) VALUES(?, ?, ?, ?)",
                (name, sha256_text(token), role, time.time()),
            )
        return token

    def revoke_user(self, name: str) -> None:
        with self.write() as conn:
            cur = conn.execute("UPDATE users SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (time.time(), name))
            if cur.rowcount == 0:
                raise DataError(f"no active user named {name!r}")
            conn.execute("DELETE FROM sessions WHERE user_id=(SELECT user_id FROM users WHERE name=?)", (name,))

    def list_users(self) -> list[dict]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT u.name, u.role, u.created_at, u.revoked_at, "
                "(SELECT COUNT(*) FROM decisions d WHERE d.user_id=u.user_id AND d.choice != 'skip') AS decisions, "
                "(SELECT COUNT(*) FROM decisions d WHERE d.user_id=u.user_id AND d.choice = 'skip') AS skips "
                "FROM users u ORDER BY u.user_id"
            ).fetchall()
        return [dict(r) for r in rows]

    def login(self, token: str, session_hours: float) -> tuple[str, Session]:
        """Token -> new session id (for the cookie). Unknown or revoked tokens raise NotFound."""
        if not isinstance(token, str) or not 10 <= len(token) <= 200:
            raise BadRequest("token must be a string of 10-200 characters")
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        with self.write() as conn:
            row = conn.execute(
                "SELECT user_id, name, role FROM users WHERE token_hash=? AND revoked_at IS NULL",
                (sha256_text(token),),
            ).fetchone()
            if row is None:
                raise NotFound("unknown or revoked token")
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO sessions(session_hash, user_id, csrf_token, created_at, expires_at) VALUES(?, ?, ?, ?, ?)",
                (sha256_text(session_id), row["user_id"], csrf, now, now + session_hours * 3600.0),
            )
        return session_id, Session(User(row["user_id"], row["name"], row["role"]), csrf)

    def session(self, session_id: str) -> Optional[Session]:
        if not session_id or len(session_id) > 200:
            return None
        with self.connection() as conn:
            row = conn.execute(
                "SELECT u.user_id, u.name, u.role, s.csrf_token FROM sessions s JOIN users u USING(user_id) "
                "WHERE s.session_hash=? AND s.expires_at > ? AND u.revoked_at IS NULL",
                (sha256_text(session_id), time.time()),
            ).fetchone()
        if row is None:
            return None
        return Session(User(row["user_id"], row["name"], row["role"]), row["csrf_token"])

    def logout(self, session_id: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM sessions WHERE session_hash=?", (sha256_text(session_id),))

    # --- items ---------------------------------------------------------------------------------
    def import_items(self, items: list[dict], set_fingerprint: str) -> int:
        """Add the pairs to annotate (idempotent). A store belongs to one preference set."""
        with self.write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='set_fingerprint'").fetchone()
            if row is not None and row["value"] != set_fingerprint:
                raise DataError(
                    f"annotation database {self.path} belongs to another preference set (or another subset); "
                    "use a different --db for this set"
                )
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('set_fingerprint', ?)", (set_fingerprint,))
            added = 0
            for item in items:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO items(pair_id, row_index, caption, risk, proposal, scores_0, scores_1, "
                    "image_id_0, image_id_1) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item["pair_id"], item["row_index"], item["caption"], item["risk"], item.get("proposal"),
                        item.get("scores_0"), item.get("scores_1"),
                        secrets.token_urlsafe(18), secrets.token_urlsafe(18),
                    ),
                )
                added += cur.rowcount
        return added

    def set_gold(self, answers: dict[str, str]) -> None:
        with self.write() as conn:
            for pair_id, answer in answers.items():
                if answer not in ANSWERS:
                    raise DataError(f"gold answer for {pair_id!r} must be one of {list(ANSWERS)}, got {answer!r}")
                cur = conn.execute("UPDATE items SET gold_answer=? WHERE pair_id=?", (answer, pair_id))
                if cur.rowcount == 0:
                    raise DataError(f"gold item {pair_id!r} is not among the items being annotated")

    def image_ref(self, image_id: str, user: User) -> Optional[tuple[int, int]]:
        """Opaque image id -> (row_index, column), only if ``user`` was handed that item (admins: any)."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT pair_id, row_index, CASE WHEN image_id_0=? THEN 0 ELSE 1 END AS col FROM items "
                "WHERE image_id_0=? OR image_id_1=?",
                (image_id, image_id, image_id),
            ).fetchone()
            if row is None:
                return None
            if user.role != "admin":
                seen = conn.execute(
                    "SELECT 1 FROM assignments WHERE pair_id=? AND user_id=?", (row["pair_id"], user.user_id)
                ).fetchone()
                if seen is None:
                    return None
        return row["row_index"], row["col"]

    def assignment_row(self, assignment_id: str, user: User) -> Optional[int]:
        """The set row behind one of ``user``'s assignments (None if it is not theirs)."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT i.row_index FROM assignments a JOIN items i USING(pair_id) "
                "WHERE a.assignment_id=? AND a.user_id=?",
                (assignment_id, user.user_id),
            ).fetchone()
        return None if row is None else row["row_index"]

    # --- hand-out -------------------------------------------------------------------------------
    def next_item(self, user: User, overlap: int, lease_seconds: float, gold_every: int) -> Optional[dict]:
        """The item this user should see now, leasing it (or None when nothing is left for them).

        Order: the user's own pending hand-out (page reload, or an undone decision) first; then a gold
        item every ``gold_every`` hand-outs; then the regular item closest to completion whose labels
        plus live leases are below ``overlap`` -- so an item is never out with more than N people.
        """
        now = time.time()
        with self.write() as conn:
            pending = conn.execute(
                "SELECT a.* FROM assignments a LEFT JOIN decisions d ON d.pair_id=a.pair_id AND d.user_id=a.user_id "
                "WHERE a.user_id=? AND d.pair_id IS NULL AND a.lease_expires > ? ORDER BY a.served_seq DESC LIMIT 1",
                (user.user_id, now),
            ).fetchone()
            if pending is not None:
                return self._item_view(conn, pending)
            served = conn.execute("SELECT COUNT(*) FROM assignments WHERE user_id=?", (user.user_id,)).fetchone()[0]
            pair_id = None
            if (served + 1) % gold_every == 0:
                row = conn.execute(
                    "SELECT pair_id FROM items i WHERE gold_answer IS NOT NULL AND NOT EXISTS "
                    "(SELECT 1 FROM decisions d WHERE d.pair_id=i.pair_id AND d.user_id=?) ORDER BY random() LIMIT 1",
                    (user.user_id,),
                ).fetchone()
                pair_id = row["pair_id"] if row else None
            if pair_id is None:
                row = conn.execute(
                    """
                    WITH labelled AS (
                      SELECT pair_id, COUNT(*) AS n FROM decisions WHERE choice != 'skip' GROUP BY pair_id),
                    leased AS (
                      SELECT a.pair_id, COUNT(*) AS n FROM assignments a
                      WHERE a.lease_expires > :now AND a.user_id != :user AND NOT EXISTS
                        (SELECT 1 FROM decisions d WHERE d.pair_id=a.pair_id AND d.user_id=a.user_id)
                      GROUP BY a.pair_id)
                    SELECT i.pair_id, COALESCE(l.n, 0) AS n_labels FROM items i
                    LEFT JOIN labelled l ON l.pair_id=i.pair_id LEFT JOIN leased s ON s.pair_id=i.pair_id
                    WHERE i.gold_answer IS NULL
                      AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.pair_id=i.pair_id AND d.user_id=:user)
                      AND COALESCE(l.n, 0) + COALESCE(s.n, 0) < :overlap
                    ORDER BY n_labels DESC, random() LIMIT 1
                    """,
                    {"now": now, "user": user.user_id, "overlap": overlap},
                ).fetchone()
                pair_id = row["pair_id"] if row else None
            if pair_id is None:
                return None
            seq = conn.execute("SELECT COALESCE(MAX(served_seq), 0) + 1 FROM assignments").fetchone()[0]
            # Left/right: a fresh random draw per (annotator, item), kept for re-visits and recorded.
            conn.execute(
                "INSERT INTO assignments(assignment_id, pair_id, user_id, left_column, leased_at, lease_expires, served_seq) "
                "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id, user_id) DO UPDATE SET "
                "leased_at=excluded.leased_at, lease_expires=excluded.lease_expires, served_seq=excluded.served_seq",
                (secrets.token_urlsafe(18), pair_id, user.user_id, random.SystemRandom().randrange(2), now,
                 now + lease_seconds, seq),
            )
            assignment = conn.execute(
                "SELECT * FROM assignments WHERE pair_id=? AND user_id=?", (pair_id, user.user_id)
            ).fetchone()
            return self._item_view(conn, assignment)

    @staticmethod
    def _item_view(conn: sqlite3.Connection, assignment: sqlite3.Row) -> dict:
        item = conn.execute("SELECT * FROM items WHERE pair_id=?", (assignment["pair_id"],)).fetchone()
        left = assignment["left_column"]
        return {
            "assignment_id": assignment["assignment_id"],
            "caption": item["caption"],
            "risk": item["risk"],
            "left_column": left,
            "image_left": item[f"image_id_{left}"],
            "image_right": item[f"image_id_{1 - left}"],
            "proposal": item["proposal"],
            "scores_left": item[f"scores_{left}"],
            "scores_right": item[f"scores_{1 - left}"],
        }

    # --- writes from annotators -----------------------------------------------------------------
    @staticmethod
    def _check_replay(conn: sqlite3.Connection, key: str) -> None:
        if not isinstance(key, str) or not IDEMPOTENCY_KEY.match(key):
            raise BadRequest("idempotency_key must be 8-64 characters of letters, digits, '-', '_'")
        row = conn.execute("SELECT response FROM requests WHERE idempotency_key=?", (key,)).fetchone()
        if row is not None:
            raise Replay("replayed request: this idempotency_key was already used; the write was not repeated",
                         json.loads(row["response"]))

    @staticmethod
    def _record_request(conn, key: str, user: User, kind: str, response: dict) -> None:
        conn.execute(
            "INSERT INTO requests(idempotency_key, user_id, kind, received_at, response) VALUES(?, ?, ?, ?, ?)",
            (key, user.user_id, kind, time.time(), json.dumps(response)),
        )

    def submit(
        self, user: User, assignment_id: str, choice: str, tags: list[str], note: str, idempotency_key: str,
        allowed_tags_for, overlap: int,
    ) -> dict:
        """Store (or replace) this user's decision on the item behind ``assignment_id``."""
        now = time.time()
        with self.write() as conn:
            self._check_replay(conn, idempotency_key)
            assignment = conn.execute(
                "SELECT a.*, i.risk FROM assignments a JOIN items i USING(pair_id) "
                "WHERE a.assignment_id=? AND a.user_id=?",
                (assignment_id, user.user_id),
            ).fetchone()
            if assignment is None:
                raise NotFound("unknown assignment_id (not handed to you)")
            allowed = allowed_tags_for(assignment["risk"])
            bad = [t for t in tags if t not in allowed]
            if bad:
                raise BadRequest(f"unknown reason tag(s) {bad} for risk {assignment['risk']!r}; allowed: {allowed}")
            pair_id = assignment["pair_id"]
            previous = conn.execute(
                "SELECT revision, first_decided_at FROM decisions WHERE pair_id=? AND user_id=?",
                (pair_id, user.user_id),
            ).fetchone()
            if previous is None and choice != "skip" and assignment["lease_expires"] <= now:
                others = conn.execute(
                    "SELECT (SELECT COUNT(*) FROM decisions WHERE pair_id=:p AND choice != 'skip') + "
                    "(SELECT COUNT(*) FROM assignments a WHERE a.pair_id=:p AND a.user_id != :u AND a.lease_expires > :now "
                    " AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.pair_id=a.pair_id AND d.user_id=a.user_id))",
                    {"p": pair_id, "u": user.user_id, "now": now},
                ).fetchone()[0]
                if others >= overlap:
                    raise Conflict("your lease on this item expired and it was handed to others; load the next item")
            revision = 1 if previous is None else previous["revision"] + 1
            first = now if previous is None else previous["first_decided_at"]
            preferred = preferred_from_choice(choice, assignment["left_column"])
            conn.execute(
                "INSERT INTO decisions(pair_id, user_id, assignment_id, choice, preferred, left_column, tags, note, "
                "first_decided_at, decided_at, revision) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(pair_id, user_id) DO UPDATE SET choice=excluded.choice, preferred=excluded.preferred, "
                "tags=excluded.tags, note=excluded.note, decided_at=excluded.decided_at, revision=excluded.revision",
                (pair_id, user.user_id, assignment_id, choice, preferred, assignment["left_column"],
                 json.dumps(tags), note, first, now, revision),
            )
            payload = {"choice": choice, "preferred": preferred, "left_column": assignment["left_column"],
                       "tags": tags, "note": note, "revision": revision}
            conn.execute(
                "INSERT INTO events(at, user_id, kind, pair_id, payload) VALUES(?, ?, 'decision', ?, ?)",
                (now, user.user_id, pair_id, json.dumps(payload)),
            )
            response = {"ok": True, "assignment_id": assignment_id, "choice": choice, "revision": revision}
            self._record_request(conn, idempotency_key, user, "decision", response)
        return response

    def undo(self, user: User, idempotency_key: str, lease_seconds: float) -> dict:
        """Withdraw the user's most recent decision and hand that item back to them (shown next)."""
        now = time.time()
        with self.write() as conn:
            self._check_replay(conn, idempotency_key)
            last = conn.execute(
                "SELECT * FROM decisions WHERE user_id=? ORDER BY decided_at DESC, rowid DESC LIMIT 1", (user.user_id,)
            ).fetchone()
            if last is None:
                response = {"ok": True, "undone": None}
            else:
                conn.execute("DELETE FROM decisions WHERE pair_id=? AND user_id=?", (last["pair_id"], user.user_id))
                seq = conn.execute("SELECT COALESCE(MAX(served_seq), 0) + 1 FROM assignments").fetchone()[0]
                conn.execute(
                    "UPDATE assignments SET lease_expires=?, served_seq=? WHERE assignment_id=?",
                    (now + lease_seconds, seq, last["assignment_id"]),
                )
                conn.execute(
                    "INSERT INTO events(at, user_id, kind, pair_id, payload) VALUES(?, ?, 'undo', ?, ?)",
                    (now, user.user_id, last["pair_id"], json.dumps({"choice": last["choice"], "revision": last["revision"]})),
                )
                # Tags and note go back to the page, so deciding again does not lose them.
                response = {"ok": True, "undone": last["assignment_id"], "choice": last["choice"],
                            "tags": json.loads(last["tags"]), "note": last["note"]}
            self._record_request(conn, idempotency_key, user, "undo", response)
        return response

    # --- reading -------------------------------------------------------------------------------
    def progress(self, user: User, overlap: int) -> dict:
        with self.connection() as conn:
            # A skip is no label: it is counted on its own, never as "decided".
            mine = conn.execute(
                "SELECT SUM(choice != 'skip') AS decided, SUM(choice = 'skip') AS skipped "
                "FROM decisions WHERE user_id=?",
                (user.user_id,),
            ).fetchone()
            overall = conn.execute(
                "SELECT COUNT(*) AS items, "
                "SUM((SELECT COUNT(*) FROM decisions d WHERE d.pair_id=i.pair_id AND d.choice != 'skip') >= :n) AS complete "
                "FROM items i WHERE i.gold_answer IS NULL",
                {"n": overlap},
            ).fetchone()
            labels = conn.execute("SELECT COUNT(*) FROM decisions WHERE choice != 'skip'").fetchone()[0]
        return {
            "mine": mine["decided"] or 0,
            "mine_skipped": mine["skipped"] or 0,
            "items": overall["items"] or 0,
            "items_complete": overall["complete"] or 0,
            "labels": labels,
            "overlap": overlap,
        }

    def items(self) -> list[dict]:
        with self.connection() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM items ORDER BY row_index")]

    def decisions(self) -> list[dict]:
        """Every current decision joined with its annotator's name."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT d.*, u.name AS annotator FROM decisions d JOIN users u USING(user_id) "
                "ORDER BY d.pair_id, d.first_decided_at, u.name"
            ).fetchall()
        out = []
        for r in rows:
            row = dict(r)
            row["tags"] = json.loads(row["tags"])
            out.append(row)
        return out

    def adjudications(self) -> dict[str, dict]:
        with self.connection() as conn:
            return {r["pair_id"]: dict(r) for r in conn.execute("SELECT * FROM adjudications")}

    def adjudicate(self, pair_id: str, answer: str, adjudicator: str, note: str = "") -> None:
        if answer not in ANSWERS:
            raise DataError(f"answer must be one of {list(ANSWERS)}, got {answer!r}")
        now = time.time()
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM items WHERE pair_id=?", (pair_id,)).fetchone() is None:
                raise DataError(f"unknown pair_id {pair_id!r}")
            conn.execute(
                "INSERT INTO adjudications(pair_id, answer, adjudicator, note, decided_at) VALUES(?, ?, ?, ?, ?) "
                "ON CONFLICT(pair_id) DO UPDATE SET answer=excluded.answer, adjudicator=excluded.adjudicator, "
                "note=excluded.note, decided_at=excluded.decided_at",
                (pair_id, answer, adjudicator, note, now),
            )
            conn.execute(
                "INSERT INTO events(at, user_id, kind, pair_id, payload) VALUES(?, NULL, 'adjudication', ?, ?)",
                (now, pair_id, json.dumps({"answer": answer, "adjudicator": adjudicator, "note": note})),
            )
