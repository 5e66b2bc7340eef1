"""On-disk store of a storage peer: immutable fragments and signed mutable slots.

Layout under the store directory:

    fragments/ab/<hex id>   fragment bytes, exactly as the client sent them
    tmp/                    uploads in progress (emptied at start)
    index.sqlite            which fragments exist, who claimed them, slots, usage
    peer.key                the peer's transport key (see keys.py)

A fragment is written to tmp/, verified against its id, fsync'd, renamed
into place and the directory fsync'd; only then is it recorded in the index
and the client answered. So every file in fragments/ is whole and verified,
and nothing half-written is ever served: after a crash, tmp/ is emptied and
the index is reconciled with the files (the files win).

Accounting: every fragment is charged to each client that claimed it
(claims are per client key), slots to the client that stored their latest
version; the peer as a whole never holds more than its capacity.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptree.merkle import LEAF_SIZE, MerkleBuilder, merkle_proof
from cryptree.slot import SignedSlot, SlotError

from .errors import RemoteError
from .sqlite_db import Database

DISK_RESERVE = 64 * 1024 * 1024  # never fill the disk to the last byte: SQLite needs room to commit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fragments (id BLOB PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    id BLOB NOT NULL REFERENCES fragments(id), client BLOB NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (id, client));
CREATE INDEX IF NOT EXISTS claims_client ON claims(client);
CREATE TABLE IF NOT EXISTS slots (
    writer BLOB PRIMARY KEY, seq INTEGER NOT NULL, payload BLOB NOT NULL, signature BLOB NOT NULL,
    client BLOB NOT NULL);
"""


@dataclass
class Usage:
    """Space accounting of the whole store and of one client."""

    capacity: int
    used: int
    client_used: int
    client_quota: int

    @property
    def free(self) -> int:
        """Bytes the store may still accept."""
        return max(0, self.capacity - self.used)


class FragmentStore:
    """Blocking store operations; callers run them off the event loop."""

    def __init__(self, root: Path, capacity: int, client_quota: int | None = None) -> None:
        self.root = Path(root)
        self.capacity = capacity
        self.client_quota = client_quota if client_quota is not None else capacity
        (self.root / "fragments").mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # NORMAL: a commit survives a killed process; after power loss the index is rebuilt
        # from the fragment files (see _reconcile), and slots are replicated on several peers.
        self.db = Database(self.root / "index.sqlite", _SCHEMA, synchronous="NORMAL")
        self._reserved = 0  # bytes promised to uploads in flight
        self._reconcile()

    # ---- paths and crash recovery ---------------------------------------------

    def fragment_path(self, frag_id: bytes) -> Path:
        """Where fragment `frag_id` lives."""
        h = frag_id.hex()
        return self.root / "fragments" / h[:2] / h

    def _reconcile(self) -> None:
        """Make the index agree with the fragment files after a crash.

        A file in fragments/ got there by rename only after it was fsync'd and
        verified against its id, so the files are the truth: a file the index
        lost (its commit was not yet on disk) is re-indexed, unclaimed; a row
        whose file is gone is dropped.
        """
        known = {bytes(r[0]): r[1] for r in self.db.conn.execute("SELECT id, size FROM fragments")}
        on_disk: dict[bytes, int] = {}
        for sub in (self.root / "fragments").iterdir():
            for f in sub.iterdir():
                try:
                    fid = bytes.fromhex(f.name)
                except ValueError:
                    fid = b""
                if len(fid) != 32:
                    f.unlink()  # not ours
                    continue
                on_disk[fid] = f.stat().st_size
        lost_rows = [fid for fid in on_disk if fid not in known and self._intact(fid)]
        missing = [fid for fid in known if fid not in on_disk or not self.fragment_path(fid).exists()]
        if not lost_rows and not missing:
            return

        def fix(conn: sqlite3.Connection) -> None:
            for fid in missing:
                conn.execute("DELETE FROM claims WHERE id=?", (fid,))
                conn.execute("DELETE FROM fragments WHERE id=?", (fid,))
            for fid in lost_rows:
                conn.execute("INSERT OR IGNORE INTO fragments(id, size) VALUES (?,?)", (fid, on_disk[fid]))

        self.db.run_sync(fix)

    def _intact(self, fid: bytes) -> bool:
        """Whether the file stored under `fid` still hashes to it (else it is removed)."""
        builder = MerkleBuilder()
        with open(self.fragment_path(fid), "rb") as f:
            while block := f.read(1 << 20):
                builder.update(block)
        if builder.root() == fid:
            return True
        self.fragment_path(fid).unlink()
        return False

    # ---- accounting -----------------------------------------------------------

    def usage(self, client: bytes) -> Usage:
        """Current usage of the store and of `client`."""
        with self.db._lock:
            total, mine = _totals(self.db.conn, client)
        return Usage(self.capacity, total + self._reserved, mine, self.client_quota)

    def client_usage(self, limit: int = 10_000) -> list[tuple[bytes, int]]:
        """Raw bytes held per client (fragments claimed + slots), largest first."""
        with self.db._lock:
            rows = self.db.conn.execute(
                "SELECT client, SUM(n) FROM (SELECT client, size AS n FROM claims"
                " UNION ALL SELECT client, LENGTH(payload) AS n FROM slots) GROUP BY client ORDER BY 2 DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(bytes(c), int(n)) for c, n in rows if len(bytes(c)) == 32]

    def fragment_count(self) -> int:
        """Number of distinct fragments held."""
        with self.db._lock:
            return self.db.conn.execute("SELECT COUNT(*) FROM fragments").fetchone()[0]

    def _disk_free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize - DISK_RESERVE

    def reserve(self, client: bytes, size: int) -> None:
        """Promise `size` bytes to an upload, or refuse with a clear reason."""
        use = self.usage(client)
        if use.client_used + size > use.client_quota:
            raise RemoteError(
                "quota",
                f"client quota exceeded: {use.client_used} of {use.client_quota} bytes used, {size} more asked",
            )
        if use.used + size > use.capacity:
            raise RemoteError("full", f"peer is full: {use.free} bytes free, {size} asked")
        if size > self._disk_free():
            raise RemoteError("full", "peer disk is full")
        self._reserved += size

    def release(self, size: int) -> None:
        """Return a reservation (upload finished or failed)."""
        self._reserved -= size

    # ---- fragments ------------------------------------------------------------

    def has_fragment(self, frag_id: bytes) -> int | None:
        """Size of fragment `frag_id` if held."""
        with self.db._lock:
            row = self.db.conn.execute("SELECT size FROM fragments WHERE id=?", (frag_id,)).fetchone()
        return None if row is None else row[0]

    def open_upload(self) -> "Upload":
        """Start receiving a fragment into tmp/."""
        return Upload(self)

    def commit_upload(self, upload: "Upload", frag_id: bytes, size: int, client: bytes) -> bool:
        """Verify a finished upload against its claimed id and make it durable.

        Returns False if the fragment was already held (the upload is dropped,
        the client's claim is still recorded).
        """
        try:
            upload.finish()
            if upload.builder.length != size:
                raise RemoteError("bad_content", f"fragment has {upload.builder.length} bytes, {size} announced")
            if upload.builder.root() != frag_id:
                raise RemoteError("bad_content", "fragment content does not match its id")
            final = self.fragment_path(frag_id)
            existed = final.exists()
            if not existed:
                final.parent.mkdir(exist_ok=True)
                os.replace(upload.path, final)
                _fsync_dir(final.parent)

            def record(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT OR IGNORE INTO fragments(id, size) VALUES (?,?)", (frag_id, size))
                conn.execute("INSERT OR IGNORE INTO claims(id, client, size) VALUES (?,?,?)", (frag_id, client, size))

            self.db.run_sync(record)
            return not existed
        finally:
            upload.discard()

    def read_fragment_pieces(self, frag_id: bytes, piece: int):
        """Open fragment `frag_id` for streaming; returns (file, size) or raises not_found."""
        size = self.has_fragment(frag_id)
        if size is None:
            raise RemoteError("not_found", "no such fragment here")
        return open(self.fragment_path(frag_id), "rb", buffering=0), size

    def challenge(self, frag_id: bytes, index: int) -> tuple[bytes, list[bytes], int]:
        """Leaf `index` of a fragment and its Merkle path: proof the peer still holds it."""
        size = self.has_fragment(frag_id)
        if size is None:
            raise RemoteError("not_found", "no such fragment here")
        builder = MerkleBuilder()
        try:
            with open(self.fragment_path(frag_id), "rb") as f:
                while block := f.read(1 << 20):
                    builder.update(block)
        except FileNotFoundError:
            raise RemoteError("not_found", "fragment file is missing on this peer") from None
        leaves = builder.leaves()
        if not 0 <= index < len(leaves):
            raise RemoteError("bad_request", f"leaf index must be below {len(leaves)}")
        with open(self.fragment_path(frag_id), "rb") as f:
            f.seek(index * LEAF_SIZE)
            leaf = f.read(LEAF_SIZE)
        return leaf, merkle_proof(leaves, index), size

    def delete_claim(self, frag_id: bytes, client: bytes) -> bool:
        """Drop `client`'s claim; the file goes when nobody claims it any more."""

        def drop(conn: sqlite3.Connection) -> tuple[bool, bool]:
            cur = conn.execute("DELETE FROM claims WHERE id=? AND client=?", (frag_id, client))
            if cur.rowcount == 0:
                return False, False
            left = conn.execute("SELECT COUNT(*) FROM claims WHERE id=?", (frag_id,)).fetchone()[0]
            if left == 0:
                conn.execute("DELETE FROM fragments WHERE id=?", (frag_id,))
            return True, left == 0

        dropped, gone = self.db.run_sync(drop)
        if gone:
            self.fragment_path(frag_id).unlink(missing_ok=True)
        return dropped

    # ---- slots ----------------------------------------------------------------

    def put_slot(self, slot: SignedSlot, client: bytes) -> None:
        """Store a newer version of a slot; refuse bad signatures and stale sequence numbers."""
        try:
            slot.verify()
        except SlotError as exc:
            raise RemoteError("bad_signature", str(exc)) from exc

        def store(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT seq, LENGTH(payload), client FROM slots WHERE writer=?", (slot.writer,)).fetchone()
            if row is not None and slot.seq <= row[0]:
                raise RemoteError("stale_seq", f"slot holds sequence {row[0]}; a write needs a higher one")
            old_size = row[1] if row is not None and bytes(row[2]) == client else 0
            grow = len(slot.payload) - old_size
            total, mine = _totals(conn, client)
            if grow > 0 and mine + grow > self.client_quota:
                raise RemoteError("quota", "client quota exceeded by this slot")
            if grow > 0 and total + self._reserved + grow > self.capacity:
                raise RemoteError("full", "peer is full")
            conn.execute(
                "INSERT OR REPLACE INTO slots(writer, seq, payload, signature, client) VALUES (?,?,?,?,?)",
                (slot.writer, slot.seq, slot.payload, slot.signature, client),
            )

        self.db.run_sync(store)

    def get_slot(self, writer: bytes) -> SignedSlot | None:
        """The latest stored version of the slot at `writer`, if any."""
        with self.db._lock:
            row = self.db.conn.execute("SELECT seq, payload, signature FROM slots WHERE writer=?", (writer,)).fetchone()
        if row is None:
            return None
        return SignedSlot(writer, row[0], bytes(row[1]), bytes(row[2]))

    def close(self) -> None:
        """Close the index."""
        self.db.close()


class Upload:
    """A fragment being received: bytes go to a temporary file and into a Merkle builder."""

    def __init__(self, store: FragmentStore) -> None:
        self.builder = MerkleBuilder()
        fd, name = _mkstemp(store.root / "tmp")
        self.path = Path(name)
        self._fd: int | None = fd

    def write(self, data: bytes | bytearray) -> None:
        """Append bytes (blocking); a full disk becomes a clear refusal."""
        self.builder.update(data)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RemoteError("full", "peer disk is full") from exc
            raise

    def finish(self) -> None:
        """Flush the file to stable storage."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Remove whatever is left of the temporary file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def _totals(conn: sqlite3.Connection, client: bytes) -> tuple[int, int]:
    """Bytes held in all (fragments + slot payloads), and bytes charged to `client`."""
    total = conn.execute(
        "SELECT (SELECT COALESCE(SUM(size),0) FROM fragments) + (SELECT COALESCE(SUM(LENGTH(payload)),0) FROM slots)"
    ).fetchone()[0]
    mine = conn.execute(
        "SELECT (SELECT COALESCE(SUM(size),0) FROM claims WHERE client=?)"
        " + (SELECT COALESCE(SUM(LENGTH(payload)),0) FROM slots WHERE client=?)",
        (client, client),
    ).fetchone()[0]
    return total, mine


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=directory, prefix="up-")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
