"""The coordinator's SQLite file: one schema shared by the registry, the directory and the mailboxes.

The schema is an on-disk format: a coordinator reopens the file of an older
one, so tables change only by adding, and `user_version` says which
version wrote it.
"""

from __future__ import annotations

from pathlib import Path

from transport.sqlite_db import Database

DB_NAME = "coordinator.sqlite"

SCHEMA = """
PRAGMA secure_delete = ON;  -- fetched-and-deleted mailbox blobs must not linger in free pages
CREATE TABLE IF NOT EXISTS peers (
    id BLOB PRIMARY KEY,              -- the peer's Noise static key
    address TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    free INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    heartbeat_interval REAL NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    heartbeats INTEGER NOT NULL DEFAULT 0,
    last_counted REAL NOT NULL,       -- time of the last heartbeat that counted for uptime
    suspended INTEGER NOT NULL DEFAULT 0,  -- set by an operator; no RPC changes it
    audits_ok INTEGER NOT NULL DEFAULT 0,
    audits_failed INTEGER NOT NULL DEFAULT 0,
    ok_w REAL NOT NULL DEFAULT 0,
    fail_w REAL NOT NULL DEFAULT 0,
    rep_at REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (     -- storage exchange: whose allowance a peer's capacity raises
    peer BLOB PRIMARY KEY,
    owner BLOB NOT NULL                -- the owning client's device key
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owners_owner ON owners(owner);
-- Unused: who stores how much on which peer is kept in memory only (registry.py). The table
-- stays because tables change only by adding; rows an older coordinator wrote are erased here.
CREATE TABLE IF NOT EXISTS usage (
    peer BLOB NOT NULL,
    client BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (peer, client)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_client ON usage(client);
DELETE FROM usage;
CREATE TABLE IF NOT EXISTS cards (      -- a user's self-signed contact card (identity + box key)
    username TEXT PRIMARY KEY,
    card BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    claimed_at INTEGER NOT NULL
) WITHOUT ROWID;
-- No column says who deposited a blob or when: the coordinator must not learn it.
CREATE TABLE IF NOT EXISTS mail (
    seq INTEGER PRIMARY KEY,          -- delivery order only
    mailbox BLOB NOT NULL,
    id INTEGER NOT NULL,              -- random, so ids reveal nothing about other mailboxes
    blob BLOB NOT NULL,
    UNIQUE (mailbox, id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counters VALUES ('mail', (SELECT COUNT(*) FROM mail));
CREATE TRIGGER IF NOT EXISTS mail_count_ins AFTER INSERT ON mail
    BEGIN UPDATE counters SET n = n + 1 WHERE name = 'mail'; END;
CREATE TRIGGER IF NOT EXISTS mail_count_del AFTER DELETE ON mail
    BEGIN UPDATE counters SET n = n - 1 WHERE name = 'mail'; END;
PRAGMA user_version = 1;
"""


def open_database(data_dir: Path) -> Database:
    """Open (creating if needed) DATA/coordinator.sqlite with the schema applied, the WAL emptied."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(data_dir / DB_NAME, SCHEMA)
    erase_old_frames(db)
    return db


def erase_old_frames(db: Database) -> None:
    """Copy the WAL into the main file and truncate it to zero bytes (blocking; call off the event loop).

    `secure_delete` zeroes a deleted row in its page, but the WAL still
    holds older frames of that page with the row in them until a
    checkpoint. TRUNCATE writes the zeroed pages into the main file and cuts
    the WAL to nothing, so a deleted mailbox blob is in neither file. The
    Database contract has no transaction-free write, so this uses its
    lock-only `reading()` (a checkpoint cannot run inside a transaction).
    """
    with db.reading() as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:  # only this process has the file open, so a reader can only be another tool
        raise RuntimeError("coordinator.sqlite: WAL checkpoint blocked by another connection")
