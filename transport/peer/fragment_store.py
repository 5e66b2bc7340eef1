"""On-disk store of a storage peer: immutable fragments and signed mutable slots.

Layout under the store directory:

    fragments/ab/<hex id>   fragment bytes, exactly as the client sent them
    tmp/                    uploads in progress (emptied at start)
    index.sqlite            which fragments exist, who claimed them, slots, usage
    peer.key                the peer's transport key (see keys.py)

A fragment is written to tmp/ as it streams in (hashed on the way),
verified against its id, fsync'd, renamed into place and the directory
fsync'd; only then is it recorded in the index and the client answered.
An upload of a fragment already held replaces the file when the file no
longer hashes to its id (bit rot, a tampered disk): a repair that sends
the fragment again leaves a verified copy, never the bad one.
Directory fsyncs of concurrent uploads are batched (group commit): one
fsync covers every rename that happened before it started. So every file
in fragments/ is whole and verified, and nothing half-written is ever
served: after a crash, tmp/ is emptied and the index is reconciled with the
files (the files win).

Accounting: every fragment is charged to each client that claimed it
(claims are per client key), slots to the client that stored their latest
version; the peer as a whole never holds more than its capacity. The totals
are summed from the index once at start and then kept as running counters,
so admitting an upload costs the same with 10 fragments as with 100,000.
An upload in flight holds only the bytes it has received so far (a
`Reservation`), so announcing a large fragment and sending nothing holds
nothing; the bounds are in transport/peer/limits.py.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptree.merkle import LEAF_SIZE, MerkleBuilder, merkle_proof
from cryptree.slot import SignedSlot, SlotError
from transport.errors import RemoteError
from transport.peer.durable_files import IOV_MAX, DirSyncer, fsync_dir, mkstemp_in, start_writeback
from transport.peer.limits import RESERVED_PER_CLIENT_MAX, UPLOADS_PER_CLIENT_MAX
from transport.sqlite_db import Database

T = TypeVar("T")

log = logging.getLogger(__name__)

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
        frags = self.root / "fragments"
        frags.mkdir(parents=True, exist_ok=True)
        # All 256 fan-out directories exist from the start, made durable once here, so a
        # commit never creates one and only ever needs the fsync of the directory it renames into.
        missing = [frags / f"{i:02x}" for i in range(256) if not (frags / f"{i:02x}").is_dir()]
        for sub in missing:
            sub.mkdir()
        if missing:
            fsync_dir(frags)
            fsync_dir(self.root)
        tmp = self.root / "tmp"
        # Whatever is in tmp/ is an upload that was never acknowledged (a crash or kill mid-upload).
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self._dir_sync = DirSyncer()
        # NORMAL: a commit survives a killed process; after power loss the index is rebuilt
        # from the fragment files (see _reconcile), and slots are replicated on several peers.
        self.db = Database(self.root / "index.sqlite", _SCHEMA, synchronous="NORMAL")
        self._acct = threading.Lock()  # guards the running totals below; never held across I/O
        self._reserved = 0  # bytes received by uploads in flight, not yet committed
        self._reserved_by: dict[bytes, int] = {}  # the same per client
        self._uploads_by: dict[bytes, int] = {}  # uploads in flight per client
        self._total = 0  # bytes held: fragments + slot payloads
        self._by_client: dict[bytes, int] = {}  # bytes charged per client: claims + slot payloads
        self.replaced = 0  # corrupt fragment files replaced by a verified upload of the same id
        self._reconcile()
        self._load_totals()

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
        with self.db.reading() as conn:
            known = {bytes(r[0]): r[1] for r in conn.execute("SELECT id, size FROM fragments")}
        on_disk: dict[bytes, int] = {}
        for sub in (self.root / "fragments").iterdir():
            if not sub.is_dir():
                sub.unlink()  # not ours
                continue
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
        if self._file_matches(fid):
            return True
        self.fragment_path(fid).unlink()
        return False

    def _file_matches(self, fid: bytes) -> bool:
        """Whether the file stored under `fid` hashes to it (False if it is unreadable or gone)."""
        builder = self._merkle_of_file(fid)
        return builder is not None and builder.root() == fid

    def _merkle_of_file(self, fid: bytes) -> MerkleBuilder | None:
        """The Merkle tree over the bytes of the file stored under `fid` (None if it is gone)."""
        builder = MerkleBuilder()
        try:
            with open(self.fragment_path(fid), "rb") as f:
                while block := f.read(1 << 20):
                    builder.update(block)
        except FileNotFoundError:
            return None
        return builder

    # ---- accounting -----------------------------------------------------------

    def _load_totals(self) -> None:
        """Sum the index once (at start, or after a failed commit left the counters unsure)."""
        with self.db.reading() as conn:
            total = conn.execute(
                "SELECT (SELECT COALESCE(SUM(size),0) FROM fragments)"
                " + (SELECT COALESCE(SUM(LENGTH(payload)),0) FROM slots)"
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT client, SUM(n) FROM (SELECT client, size AS n FROM claims"
                " UNION ALL SELECT client, LENGTH(payload) AS n FROM slots) GROUP BY client"
            ).fetchall()
        with self._acct:
            self._total = int(total)
            self._by_client = {bytes(c): int(n) for c, n in rows if n}

    def _charge(self, total_delta: int, client_deltas: Sequence[tuple[bytes, int]]) -> None:
        """Apply a committed change to the running totals."""
        with self._acct:
            self._total += total_delta
            for client, delta in client_deltas:
                left = self._by_client.get(client, 0) + delta
                if left:
                    self._by_client[client] = left
                else:
                    self._by_client.pop(client, None)

    def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """db.run_sync, but re-sum the totals if the transaction failed after `fn` charged them.

        `fn` charges the counters as its last step, inside the transaction, so a
        concurrent admission check never sees a committed change uncounted; if
        the COMMIT itself then fails, the counters are rebuilt from the index.
        """
        try:
            return self.db.run_sync(fn)
        except RemoteError:
            raise  # refused before anything was charged
        except BaseException:
            self._load_totals()
            raise

    def usage(self, client: bytes) -> Usage:
        """Current usage of the store and of `client` (no index query: running totals)."""
        with self._acct:
            return Usage(self.capacity, self._total + self._reserved, self._by_client.get(client, 0), self.client_quota)

    def client_usage(self, limit: int = 10_000) -> list[tuple[bytes, int]]:
        """Raw bytes held per client (fragments claimed + slots), largest first."""
        with self.db.reading() as conn:
            rows = conn.execute(
                "SELECT client, SUM(n) FROM (SELECT client, size AS n FROM claims"
                " UNION ALL SELECT client, LENGTH(payload) AS n FROM slots) GROUP BY client ORDER BY 2 DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(bytes(c), int(n)) for c, n in rows if len(bytes(c)) == 32]

    def fragment_count(self) -> int:
        """Number of distinct fragments held."""
        with self.db.reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM fragments").fetchone()[0])

    def _disk_free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize - DISK_RESERVE

    def admit(self, client: bytes, size: int) -> Reservation:
        """Check that an announced upload of `size` bytes would fit, and open its reservation.

        The reservation starts empty and grows only as bytes arrive
        (`Reservation.grow`): announcing a size holds no space. What is
        checked here, in one step under the accounting lock, is that the
        whole upload would fit now — the client's quota counting its stored
        and in-flight bytes, the capacity counting every reservation — so an
        honest upload that cannot fit is refused before it is sent; and that
        the client has fewer than `UPLOADS_PER_CLIENT_MAX` uploads open.
        """
        if size > self._disk_free():
            raise RemoteError("full", "peer disk is full")
        with self._acct:
            mine = self._by_client.get(client, 0) + self._reserved_by.get(client, 0)
            if mine + size > self.client_quota:
                raise RemoteError(
                    "quota",
                    f"client quota exceeded: {mine} of {self.client_quota} bytes used or arriving, {size} more asked",
                )
            used = self._total + self._reserved
            if used + size > self.capacity:
                raise RemoteError("full", f"peer is full: {max(0, self.capacity - used)} bytes free, {size} asked")
            if self._uploads_by.get(client, 0) >= UPLOADS_PER_CLIENT_MAX:
                raise RemoteError("busy", f"you have {UPLOADS_PER_CLIENT_MAX} uploads in flight here; wait for one")
            self._uploads_by[client] = self._uploads_by.get(client, 0) + 1
        return Reservation(self, client, size)

    def reserved(self, client: bytes | None = None) -> int:
        """Bytes reserved by uploads in flight (received, not yet committed), of `client` or of all."""
        with self._acct:
            return self._reserved if client is None else self._reserved_by.get(client, 0)

    def _grow(self, client: bytes, n: int) -> None:
        with self._acct:
            mine = self._reserved_by.get(client, 0)
            if self._by_client.get(client, 0) + mine + n > self.client_quota:
                raise RemoteError("quota", f"client quota exceeded: {self.client_quota} bytes")
            if self._total + self._reserved + n > self.capacity:
                raise RemoteError("full", "peer is full")
            if mine + n > RESERVED_PER_CLIENT_MAX:
                raise RemoteError("busy", f"you have {mine} bytes arriving here; at most {RESERVED_PER_CLIENT_MAX}")
            self._reserved += n
            self._reserved_by[client] = mine + n

    def _release(self, client: bytes, held: int) -> None:
        with self._acct:
            self._reserved -= held
            left = self._reserved_by.get(client, 0) - held
            if left:
                self._reserved_by[client] = left
            else:
                self._reserved_by.pop(client, None)
            uploads = self._uploads_by.get(client, 0) - 1
            if uploads > 0:
                self._uploads_by[client] = uploads
            else:
                self._uploads_by.pop(client, None)

    # ---- fragments ------------------------------------------------------------

    def has_fragment(self, frag_id: bytes) -> int | None:
        """Size of fragment `frag_id` if held."""
        with self.db.reading() as conn:
            row = conn.execute("SELECT size FROM fragments WHERE id=?", (frag_id,)).fetchone()
        return None if row is None else row[0]

    def open_upload(self) -> Upload:
        """Start receiving a fragment into tmp/."""
        return Upload(self)

    def commit_upload(self, upload: Upload, frag_id: bytes, size: int, client: bytes) -> bool:
        """Verify a finished upload against its claimed id and make it durable.

        Order matters for crash safety: the upload's bytes are checked first
        (a refused upload costs no fsync); then, if a file of that id is
        already there, its bytes are checked too; the upload is fsync'd,
        renamed into place (over a file that failed its check), and the
        rename made durable, all before the index row and the client's answer.
        The rename is atomic, so the final path holds the old file or the
        verified new one at every moment, never a mix.
        Returns False if an intact copy was already held (the upload is
        dropped, the client's claim is still recorded); True if the upload
        was stored, new or in place of a corrupt copy (counted in `replaced`).
        """
        try:
            if upload.builder.length != size:
                raise RemoteError("bad_content", f"fragment has {upload.builder.length} bytes, {size} announced")
            if upload.builder.root() != frag_id:
                raise RemoteError("bad_content", "fragment content does not match its id")
            final = self.fragment_path(frag_id)
            existed = final.exists()
            if existed and not self._file_matches(frag_id):
                # Claims stay as they are: whoever claimed the id claimed these bytes.
                log.warning("fragment %s was corrupt on disk; replacing it with the verified upload", frag_id.hex())
                with self._acct:
                    self.replaced += 1
                existed = False
            if not existed:
                upload.finish()
                os.replace(upload.path, final)
                upload.moved = True
            # Also when it existed: a concurrent upload of the same id may have renamed it
            # but not yet made the rename durable; this fsync (shared with it) covers that.
            self._dir_sync.sync(final.parent)

            def record(conn: sqlite3.Connection) -> None:
                new_row = conn.execute(
                    "INSERT OR IGNORE INTO fragments(id, size) VALUES (?,?)", (frag_id, size)
                ).rowcount
                new_claim = conn.execute(
                    "INSERT OR IGNORE INTO claims(id, client, size) VALUES (?,?,?)", (frag_id, client, size)
                ).rowcount
                self._charge(size if new_row else 0, [(client, size)] if new_claim else [])

            self._transact(record)
            return not existed
        finally:
            upload.discard()

    def read_fragment_pieces(self, frag_id: bytes, piece: int) -> tuple[io.FileIO, int]:
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
        builder = self._merkle_of_file(frag_id)
        if builder is None:
            raise RemoteError("not_found", "fragment file is missing on this peer")
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
            row = conn.execute("SELECT size FROM claims WHERE id=? AND client=?", (frag_id, client)).fetchone()
            if row is None:
                return False, False
            conn.execute("DELETE FROM claims WHERE id=? AND client=?", (frag_id, client))
            left = conn.execute("SELECT COUNT(*) FROM claims WHERE id=?", (frag_id,)).fetchone()[0]
            freed = 0
            if left == 0:
                frag = conn.execute("SELECT size FROM fragments WHERE id=?", (frag_id,)).fetchone()
                conn.execute("DELETE FROM fragments WHERE id=?", (frag_id,))
                freed = frag[0] if frag is not None else 0
            self._charge(-freed, [(client, -row[0])])
            return True, left == 0

        dropped, gone = self._transact(drop)
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
            row = conn.execute(
                "SELECT seq, LENGTH(payload), client FROM slots WHERE writer=?", (slot.writer,)
            ).fetchone()
            if row is not None and slot.seq <= row[0]:
                raise RemoteError("stale_seq", f"slot holds sequence {row[0]}; a write needs a higher one")
            old_size = row[1] if row is not None and bytes(row[2]) == client else 0
            grow = len(slot.payload) - old_size
            with self._acct:
                mine = self._by_client.get(client, 0) + self._reserved_by.get(client, 0)
                held = self._total + self._reserved
            if grow > 0 and mine + grow > self.client_quota:
                raise RemoteError("quota", "client quota exceeded by this slot")
            if grow > 0 and held + grow > self.capacity:
                raise RemoteError("full", "peer is full")
            conn.execute(
                "INSERT OR REPLACE INTO slots(writer, seq, payload, signature, client) VALUES (?,?,?,?,?)",
                (slot.writer, slot.seq, slot.payload, slot.signature, client),
            )
            # The replaced version stops counting for whoever stored it; the new one counts for `client`.
            deltas = [(client, len(slot.payload))]
            if row is not None:
                deltas.append((bytes(row[2]), -row[1]))
            self._charge(len(slot.payload) - (row[1] if row is not None else 0), deltas)

        self._transact(store)

    def get_slot(self, writer: bytes) -> SignedSlot | None:
        """The latest stored version of the slot at `writer`, if any."""
        with self.db.reading() as conn:
            row = conn.execute("SELECT seq, payload, signature FROM slots WHERE writer=?", (writer,)).fetchone()
        if row is None:
            return None
        return SignedSlot(writer, row[0], bytes(row[1]), bytes(row[2]))

    def close(self) -> None:
        """Close the index."""
        self.db.close()


class Reservation:
    """Space held for one upload in flight: grows as its bytes arrive, released once at the end.

    Opened by `FragmentStore.admit`; used from the event loop (each call
    takes the accounting lock briefly, no I/O).
    """

    def __init__(self, store: FragmentStore, client: bytes, size: int) -> None:
        self.store = store
        self.client = client
        self.size = size  # announced
        self.held = 0
        self._open = True

    def grow(self, n: int) -> None:
        """Hold `n` more bytes (they have arrived), or refuse: quota, full, or busy."""
        self.store._grow(self.client, n)
        self.held += n

    def release(self) -> None:
        """Give back everything held and the upload's place (idempotent)."""
        if self._open:
            self._open = False
            self.store._release(self.client, self.held)
            self.held = 0


class Upload:
    """A fragment being received: bytes go to a temporary file and into a Merkle builder.

    Used from one worker thread at a time (the handler awaits each call).
    """

    def __init__(self, store: FragmentStore) -> None:
        self.builder = MerkleBuilder()
        fd, name = mkstemp_in(store.root / "tmp")
        self.path = Path(name)
        self._fd: int | None = fd
        self._written = 0
        self.moved = False  # renamed into fragments/: nothing left in tmp/ to remove

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("the upload file is already closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes (blocking); a full disk becomes a clear refusal."""
        self.write_pieces([data])

    def write_pieces(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """Hash and append several pieces with as few system calls as possible (blocking).

        The pieces are written as they are (writev), never joined into one
        buffer first; then the kernel is asked to start writing them back, so
        the fsync at the end waits for the last batch only, not the whole file.
        """
        fd = self._open_fd()
        for piece in pieces:
            self.builder.update(memoryview(piece))
        views = [memoryview(p).cast("B") for p in pieces if len(p)]
        start = self._written
        try:
            while views:
                n = os.writev(fd, views[:IOV_MAX])
                self._written += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RemoteError("full", "peer disk is full") from exc
            raise
        start_writeback(fd, start, self._written - start)

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
        if not self.moved:  # after the rename an unlink would only wait on tmp/'s lock to fail
            self.path.unlink(missing_ok=True)
            self.moved = True
