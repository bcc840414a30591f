"""Durable storage of one KV Store node: write-ahead log, snapshots, and Raft's term/vote.

No consensus rules live here: the Raft core decides *what* to persist, this module decides *how*
it survives a crash.  Pure standard library.

Layout (reading order)
    ReplicationLog        a log entry; to_wire()/from_wire() (hot path: WAL records, REPLICATE)
    encode_record()       entry -> one WAL record (length + CRC32 + payload)
    SnapshotMeta          last_index, last_term, count, digest, config of a snapshot
    StorageCorruption     raised when data on disk is damaged; names the file and byte offset
    Recovered             what load() returns
    write_snapshot_file() streams a snapshot to a file (safe in a forked child)
    verify_snapshot_file(), read_snapshot_file()   check / stream a snapshot file
    LogStorage            the WAL segments, group-commit fsync, hard state, snapshot install,
                          compaction; thread-safe

Files in the data directory
    wal-<first_index:020d>.log   WAL segments.  A segment holds consecutive entries starting at
                                 the index in its name.  A record is
                                     4 bytes  big-endian payload length (> 0)
                                     4 bytes  big-endian zlib.crc32(payload)
                                     payload  compact ASCII JSON of entry.to_wire()
                                 A new segment starts when the current one would grow past
                                 segment_bytes (a single batch is never split).
    snapshot.dat                 the newest installed snapshot (format below); temp files
                                 (snapshot.dat.tmp-N, .recv) are the server's business.
    raft_state.json              {"term": N, "voted_for": id|null}; replaced atomically
                                 (raft_state.json.tmp, fsync, rename, fsync dir).
    node.log                     written by the server's logger, not by this module.

Snapshot file format (text, ASCII, one JSON document per line)
    line 1     {"format":"kv-snapshot","version":1,"last_index":..,"last_term":..,"count":..,
                "digest":"..","config":{"voters":{id:addr},"learners":{id:addr}}}
               "config" is the cluster configuration in force at last_index (Raft §4.1: a
               restart restores it from here, then from the CONFIG entries of the log); a
               file without it (written before membership changes existed) loads with
               config None and the node falls back to its bootstrap membership.
    body       one line per chunk of up to 1024 records (or ~1 MiB of payloads):
               [tag, {key: payload, ...}, tag, {...}, ...].  A record is opaque here: the
               state machine encodes each value as (tag, JSON payload) and decodes it on
               restore (kv_state / the type modules' TypeOps); no value kind is known here.
               Versions 1 and 2 had [J] or [J, B] lines (J: key -> JSON value, B: key ->
               base64): they are read as records tagged "j" and "b", the string type's tags.
    state      (version 2 on) after the item lines: zero or more {"ttl": {key: deadline_ms, ...}}
               lines (up to 1024 keys each) and one {"state": {...}} line holding the rest of
               the store's state (replicated clock, WATCH modification slots).  Items carry it
               as one trailing (None, "state", {"expires": {...}, ...}) triple, both when
               written and when read back; a version 1 file (no state lines) yields none.
    last line  {"end":true,"count":N,"crc":C}   C = zlib.crc32 of every byte before this line
    Grouping items per line keeps a 1,000,000-key snapshot to a few thousand json calls.
    Version 1 files (written before TTLs existed) and version 2 files are still read.

Write path and fsync policy ("always" | "everysec" | "no")
    append(entries) encodes the records and writes them with one os.write() to the active
    segment: they are in the OS page cache (they survive kill -9) but not yet on disk.
    sync(): "always" fsyncs before returning, with group commit: concurrent callers share one
    fsync (one thread fsyncs everything appended before it started; callers already covered
    return without their own fsync).  "everysec": sync() returns at once and a daemon thread
    fsyncs once a second if anything was appended.  "no": never (sync(force=True) still does).
    fsync runs outside the append lock, on a dup() of the segment's descriptor, so appends go on
    during an fsync.  Structural changes (new segment, deleted segments, truncation, hard state,
    snapshot install) are made durable at once whatever the policy, including a directory fsync.
    After a failed fsync, or a disk error half-way through a change of segment files, the
    storage refuses all further writes (the page cache / in-memory map can no longer be
    trusted): append()/sync() raise OSError and the server must stop and restart.
    A full disk (ENOSPC/EDQUOT) on append() or save_hard_state() is different: the partial
    write is cut off again, nothing changed, and the call raises OSError with `disk_full` set
    to the reason; the caller may retry the same call once space is freed (a success clears
    `disk_full`).  The server's consensus loop waits and retries, answering nothing meanwhile.

Snapshot reads
    read_snapshot() verifies the whole file (header, trailer, CRC of every byte: one fast
    sequential pass) BEFORE it returns, so a caller never applies a corrupt snapshot.  The
    iterator then streams the items, recomputing the CRC, and raises StorageCorruption at the
    end only if the file changed in between.  load() verifies snapshot.dat the same way.

Recovery rules (load())
    1. raft_state.json: missing -> term 0, voted_for None; unreadable -> StorageCorruption.
    2. snapshot.dat, when present, is verified completely (header, trailer, CRC): a bad one
       raises StorageCorruption (it may be the only copy of compacted entries).  S = its
       last_index (0 without a snapshot).
    3. The segments are read in index order.  Entries <= S are covered by the snapshot and are
       not returned (segments holding only such entries may even have gaps between them: that
       is what a crash in the middle of reset_log() leaves).  From S+1 on the log must be
       contiguous: a missing or repeated index is StorageCorruption.  Every record must hold the
       index its position implies (segment first index + position).
    4. A *bad record* is: fewer than 8 bytes left for a header, a zero length, a length that runs
       past the end of the file, or a CRC mismatch.  It is a *torn tail* - a write cut short by a
       crash - only when it is in the LAST segment and no valid record starts anywhere after it
       (a zero-filled tail, a half-written record, a huge length read from garbage all qualify).
       The file is then cut at the bad record's offset and load() reports it in
       Recovered.torn_tail (the server logs it).  Everything else - a bad record in any other
       segment, a bad record followed by a valid one, a record whose CRC is right but whose
       payload does not decode - raises StorageCorruption("corrupt WAL record in <path> at
       offset <n>: <reason>").  Acknowledged data is never dropped silently.
       Why the "valid record follows" scan is sound: payloads are printable ASCII (JSON with
       ensure_ascii), so a length field read from inside a payload is >= 0x20202020 (512 MiB)
       and can never look like a record that fits in a segment; real headers start with 0x00.
       Limitation: a power loss that persisted a later page of an unsynced batch but not an
       earlier one also looks like "bad record followed by valid data" and stops the node; an
       operator can cut the file at the reported offset (those records were never fsynced).

Deviations from INTERFACES.md (additions only; every name in the spec exists as specified)
    - sync(force=False): force=True fsyncs whatever the policy (for FLUSH).
    - install_snapshot() returns True, or False (and logs) when the file is older than the
      installed snapshot - a local snapshot finishing after a newer one arrived from the
      leader must not replace it.
    - compact() never deletes past the installed snapshot (it clamps to its last_index) and
      returns the number of segments deleted.
    - append() raises ValueError unless the batch continues the log exactly (index = last + 1,
      consecutive); truncate_suffix() raises ValueError for an index covered by the snapshot;
      reset_log(n) raises ValueError if n > snapshot last_index + 1 (that would leave a gap).
    - Snapshot body lines hold chunks of items (see the format above) rather than one line per
      item; write_snapshot_file() returns the number of bytes written.
    - Extra read-only helpers: last_index, next_index, stats(), verify_snapshot_file(),
      read_snapshot_file(), and check_data(dir) (the server's --check-data: the recovery rules
      applied without changing anything, going on past a problem to report every damaged file).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gc
import json
import json.encoder
import os
import re
import struct
import threading
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

__all__ = ["ReplicationLog", "encode_record", "SnapshotMeta", "StorageCorruption", "Recovered",
           "LogStorage", "write_snapshot_file", "verify_snapshot_file", "read_snapshot_file",
           "FSYNC_POLICIES", "DataCheck", "check_data"]

FSYNC_POLICIES = ("always", "everysec", "no")
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

_HEADER = struct.Struct(">II")                  # payload length, crc32(payload)
_HEADER_SIZE = _HEADER.size
_crc32 = zlib.crc32
_b64encode = base64.b64encode
_b64decode = base64.b64decode


def _make_dumps() -> Callable[[Any], str]:
    """Compact, ASCII-only JSON encoding (lone surrogates in keys become \\udcxx and survive a
    round trip).  json.dumps builds a new C encoder on every call; building it once and reusing
    it halves the cost of a WAL record (about 1.4 us instead of 3).  Falls back to the public
    API where the C accelerator is missing or behaves differently."""
    slow = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode
    c_make = getattr(json.encoder, "c_make_encoder", None)
    if c_make is None:
        return slow

    def default(o):
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
    try:
        # markers=None: no cycle check - values come from json.loads / RESP and are trees.
        enc = c_make(None, default, json.encoder.encode_basestring_ascii, None, ":", ",",
                     False, False, True)
        probe = [1, -2.5, "\u00e9\udcff\n", None, True, {"k": [float("inf")]}, "x" * 3]
        if "".join(enc(probe, 0)) != slow(probe):
            return slow
    except TypeError:
        return slow
    join = "".join

    def dumps(o) -> str:
        return join(enc(o, 0))
    return dumps


_dumps = _make_dumps()
_loads = json.loads

_SEGMENT_RE = re.compile(r"^wal-(\d{20})\.log$")
_SNAPSHOT_FORMAT = "kv-snapshot"
_SNAPSHOT_VERSION = 3
_SNAPSHOT_VERSIONS = (1, 2, 3)       # versions read_snapshot_file understands
_SNAPSHOT_CHUNK_ITEMS = 1024
_SNAPSHOT_CHUNK_BYTES = 1 << 20      # also end a chunk line once its values pass ~1 MiB
_READ_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ReplicationLog:
    """One log entry.

    Invariants: index >= 1 and term >= 0 are ints; op is a str ("SET", "DEL", "NOOP", ...);
    key is a str (RESP byte keys decoded utf-8 with errors="surrogateescape") or None;
    kind "json" -> value is any JSON value (None is JSON null); any other kind names a value
    carried as raw bytes (RESP values; kv_state names that kind), written as base64 with its
    kind beside it.  This module gives no kind a meaning: the state machine does.

    Wire form (list, JSON-serialisable, also the WAL payload):
        [index, term, op, key, value]                   kind "json"
        [index, term, op, key, base64(value), kind]     any other kind (value: bytes)

    payload() is that list encoded once (compact ASCII JSON, one line) and cached: the WAL
    record and the REPLICATE message carry the same bytes, and a follower keeps the bytes it
    received (from_payload) for its own WAL instead of encoding the entry again.
    """
    index: int
    term: int
    op: str
    key: str | None = None
    value: Any = None
    kind: str = "json"
    _payload: bytes | None = field(default=None, repr=False, compare=False)

    def payload(self) -> bytes:
        p = self._payload
        if p is None:
            p = self._payload = _dumps(self.to_wire()).encode()
        return p

    @classmethod
    def from_payload(cls, payload: bytes) -> "ReplicationLog":
        """Decode one payload() (raises ValueError on a malformed one) and keep its bytes."""
        e = cls.from_wire(_loads(payload))
        e._payload = bytes(payload)
        return e

    def to_wire(self) -> list:
        kind = self.kind
        if kind == "json":
            return [self.index, self.term, self.op, self.key, self.value]
        if type(self.value) is not bytes or type(kind) is not str or not kind:
            raise ValueError(f"an entry of kind {kind!r} must carry bytes, not {type(self.value).__name__}")
        return [self.index, self.term, self.op, self.key, _b64encode(self.value).decode("ascii"), kind]

    @classmethod
    def from_wire(cls, w: list) -> "ReplicationLog":
        """Inverse of to_wire(); raises ValueError with a readable reason on a malformed entry."""
        if type(w) is not list:
            raise ValueError(f"log entry must be a list, not {type(w).__name__}")
        n = len(w)
        if n == 5:
            index, term, op, key, value = w
            kind = "json"
        elif n == 6:
            index, term, op, key, value, kind = w
            if type(kind) is not str or not kind or kind == "json" or type(value) is not str:
                raise ValueError(f"malformed log entry (kind {kind!r}): {w!r:.200}")
            try:
                value = _b64decode(value, validate=True)
            except ValueError as e:        # binascii.Error is one
                raise ValueError(f"log entry {index!r}: bad base64 value: {e}") from None
        else:
            raise ValueError(f"log entry must have 5 or 6 fields, got {n}: {w!r:.200}")
        if (type(index) is not int or type(term) is not int or type(op) is not str
                or (key is not None and type(key) is not str) or index < 1 or term < 0):
            raise ValueError(f"malformed log entry: {w!r:.200}")
        return cls(index, term, op, key, value, kind)


def encode_record(entry: ReplicationLog) -> bytes:
    """One WAL record: 4-byte big-endian payload length, 4-byte CRC32 of payload, payload."""
    payload = entry.payload()
    return _HEADER.pack(len(payload), _crc32(payload)) + payload


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot covers: the state after applying entries 1..last_index (last_term is the
    term of entry last_index), `count` keys, the store's digest at that point, and the cluster
    configuration in force at last_index (kv_raft.Membership.to_dict(); None if unknown)."""
    last_index: int
    last_term: int
    count: int
    digest: str
    config: dict | None = None

    def to_dict(self) -> dict:
        d = {"last_index": self.last_index, "last_term": self.last_term,
             "count": self.count, "digest": self.digest}
        if self.config is not None:
            d["config"] = self.config
        return d


class StorageCorruption(Exception):
    """Data on disk is damaged in a way recovery must not paper over.  The message names the
    file and, where it applies, the byte offset; also available as .path and .offset."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.path = path
        self.offset = offset


@dataclass
class Recovered:
    """Result of LogStorage.load().  entries: every logged entry with index > snapshot
    last_index, contiguous from snapshot last_index + 1.  torn_tail: None, or a description of
    the incomplete record that was cut off the end of the last segment."""
    term: int = 0
    voted_for: str | None = None
    snapshot_meta: SnapshotMeta | None = None
    entries: list = field(default_factory=list)
    torn_tail: str | None = None


def _wal_corruption(path: str, offset: int, reason: str) -> StorageCorruption:
    return StorageCorruption(f"corrupt WAL record in {path} at offset {offset}: {reason}", path, offset)


def _snap_corruption(path: str, offset: int | None, reason: str) -> StorageCorruption:
    where = f" at offset {offset}" if offset is not None else ""
    return StorageCorruption(f"corrupt snapshot {path}{where}: {reason}", path, offset)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})   # a full disk: the write did not happen


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# ---------------------------------------------------------------------------------------------
# Snapshot files.  Module-level so a forked child can write one without touching LogStorage.

def _snapshot_header(meta: SnapshotMeta) -> bytes:
    h = {"format": _SNAPSHOT_FORMAT, "version": _SNAPSHOT_VERSION, **meta.to_dict()}
    return (_dumps(h) + "\n").encode("ascii")


def write_snapshot_file(path: str, meta: SnapshotMeta, items: Iterable[tuple[str, str, Any]]) -> int:
    """Stream a snapshot of `items` to `path`; returns its size.  An item is an opaque record
    (key, tag, payload): tag a non-empty str, payload any JSON value (the state machine encodes
    its values into records and decodes them on restore; this module never looks inside).  It
    may end with one (None, "state", dict) item: see the file format.

    Safe in a forked child: no threads, no locks, no logging, nothing but this call's own
    objects.  Never holds more than one chunk (1024 items) in memory.  The file is flushed and
    fsynced before returning; the caller renames it into place (LogStorage.install_snapshot).
    Raises ValueError (and removes the partial file) if an item's tag is not a non-empty str,
    a payload is not JSON, or the number of distinct keys written differs from meta.count.
    """
    header = _snapshot_header(meta)
    f = open(path, "wb")
    try:
        f.write(header)
        crc = _crc32(header)
        size = len(header)
        count = 0
        groups: dict = {}        # tag -> {key: payload} of the chunk being gathered
        n = 0
        big = 0                  # approximate bytes of the chunk's payloads
        dumps = _dumps
        state = None
        for key, tag, payload in items:
            if key is None and tag == "state":
                state = payload
                continue
            g = groups.get(tag)
            if g is None:
                if type(tag) is not str or not tag:
                    raise ValueError(f"snapshot record tag must be a non-empty str, not {tag!r} "
                                     f"(key {key!r:.80})")
                g = groups[tag] = {}
            g[key] = payload
            t = type(payload)
            if t is str:
                big += len(payload)
            elif t is list:
                big += 8 * len(payload)
            n += 1
            if n >= _SNAPSHOT_CHUNK_ITEMS or big >= _SNAPSHOT_CHUNK_BYTES:
                line = _chunk_line(groups, dumps)
                f.write(line)
                crc = _crc32(line, crc)
                size += len(line)
                count += sum(len(g) for g in groups.values())
                groups = {}
                n = big = 0
        if n:
            line = _chunk_line(groups, dumps)
            f.write(line)
            crc = _crc32(line, crc)
            size += len(line)
            count += sum(len(g) for g in groups.values())
        if state is not None:
            for line in _state_lines(state):
                f.write(line)
                crc = _crc32(line, crc)
                size += len(line)
        if count != meta.count:
            raise ValueError(f"snapshot holds {count} keys but meta.count is {meta.count}")
        trailer = (_dumps({"end": True, "count": count, "crc": crc}) + "\n").encode("ascii")
        f.write(trailer)
        size += len(trailer)
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        f.close()
        try:
            os.unlink(path)
        except OSError:
            pass   # nothing to clean up, or the directory is gone: the error below says why
        raise
    f.close()
    return size


def _chunk_line(groups: dict, dumps) -> bytes:
    """One version 3 body line: [tag, {key: payload, ...}, tag, {...}, ...]."""
    flat = []
    for tag, g in groups.items():
        flat.append(tag)
        flat.append(g)
    try:
        return (dumps(flat) + "\n").encode("ascii")
    except TypeError as e:
        raise ValueError(f"a snapshot payload is not JSON: {e}") from None


def _state_lines(state: dict):
    """The store's non-item state as snapshot body lines: deadlines in chunks, then the rest."""
    ttl = {}
    for k, d in state.get("expires", {}).items():
        ttl[k] = d
        if len(ttl) >= _SNAPSHOT_CHUNK_ITEMS:
            yield (_dumps({"ttl": ttl}) + "\n").encode("ascii")
            ttl = {}
    if ttl:
        yield (_dumps({"ttl": ttl}) + "\n").encode("ascii")
    rest = {k: v for k, v in state.items() if k != "expires"}
    yield (_dumps({"state": rest}) + "\n").encode("ascii")


def _open_snapshot(path: str):
    """Open and fully verify a snapshot file.  Returns (file positioned anywhere, meta,
    header bytes, body_end offset, crc, format version).  Raises StorageCorruption;
    FileNotFoundError as is."""
    f = open(path, "rb", buffering=_READ_CHUNK)
    try:
        size = os.fstat(f.fileno()).st_size
        header = f.readline(1 << 16)
        if not header.endswith(b"\n"):
            raise _snap_corruption(path, 0, "missing or incomplete header line")
        try:
            h = _loads(header)
            if h.get("format") != _SNAPSHOT_FORMAT or h.get("version") not in _SNAPSHOT_VERSIONS:
                raise ValueError(f"not a {_SNAPSHOT_FORMAT} file of version "
                                 f"{'/'.join(map(str, _SNAPSHOT_VERSIONS))}")
            meta = SnapshotMeta(h["last_index"], h["last_term"], h["count"], h["digest"],
                                h.get("config"))
            if not (type(meta.last_index) is int and type(meta.last_term) is int
                    and type(meta.count) is int and type(meta.digest) is str
                    and (meta.config is None or type(meta.config) is dict)):
                raise ValueError("header fields have the wrong types")
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise _snap_corruption(path, 0, f"bad header: {e}") from None
        body_start = len(header)
        tail_len = min(size - body_start, 4096)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        if not tail.endswith(b"\n"):
            raise _snap_corruption(path, size, "no complete trailer line (file truncated?)")
        nl = tail.rfind(b"\n", 0, len(tail) - 1)
        if nl < 0 and tail_len < size - body_start:
            raise _snap_corruption(path, size - tail_len, "trailer line too long")
        body_end = size - tail_len + nl + 1
        try:
            t = _loads(tail[nl + 1:])
            if t.get("end") is not True or type(t.get("count")) is not int or type(t.get("crc")) is not int:
                raise ValueError("not a trailer")
        except (ValueError, AttributeError) as e:
            raise _snap_corruption(path, body_end, f"bad trailer: {e} (file truncated?)") from None
        crc = _crc32(header)
        f.seek(body_start)
        left = body_end - body_start
        while left > 0:
            chunk = f.read(min(_READ_CHUNK, left))
            if not chunk:
                raise _snap_corruption(path, body_end - left, "file shrank while being read")
            crc = _crc32(chunk, crc)
            left -= len(chunk)
        if crc != t["crc"]:
            raise _snap_corruption(path, None, f"checksum mismatch (trailer says {t['crc']:08x}, "
                                               f"data has {crc:08x})")
        if t["count"] != meta.count:
            raise _snap_corruption(path, body_end, f"trailer count {t['count']} != header count {meta.count}")
        return f, meta, header, body_end, crc, h["version"]
    except BaseException:
        f.close()
        raise


def verify_snapshot_file(path: str) -> SnapshotMeta:
    """Check a snapshot file completely (header, trailer, CRC of every byte) and return its
    meta.  Raises StorageCorruption naming the file.  Fast: one sequential CRC pass."""
    f, meta, _, _, _, _ = _open_snapshot(path)
    f.close()
    return meta


# Tags of the records of version 1 and 2 files, whose body lines were [J] or [J, B]: J held JSON
# values, B base64 text, which are exactly the payloads of the string type's tags.
_V2_TAGS = ("j", "b")


def _iter_snapshot(f, path: str, header: bytes, body_end: int, crc_expected: int,
                   count: int, version: int) -> Iterator[tuple[str, str, Any]]:
    loads = _loads
    try:
        pos = len(header)
        f.seek(pos)
        crc = _crc32(header)
        n = 0
        expires: dict = {}
        state = None
        while pos < body_end:
            line = f.readline()
            if not line.endswith(b"\n") or pos + len(line) > body_end:
                raise _snap_corruption(path, pos, "body line runs into the trailer (file changed?)")
            crc = _crc32(line, crc)
            # Building a few thousand objects per line: keep the cyclic GC out of it (it would
            # rescan the growing heap again and again); restored right after.
            gc_was_on = gc.isenabled()
            if gc_was_on:
                gc.disable()
            try:
                chunk = loads(line)
            except ValueError as e:
                raise _snap_corruption(path, pos, f"undecodable body line: {e}") from None
            finally:
                if gc_was_on:
                    gc.enable()
            if type(chunk) is dict:            # a state line (version 2 on)
                pos += len(line)
                if type(chunk.get("ttl")) is dict:
                    expires.update(chunk["ttl"])
                elif type(chunk.get("state")) is dict:
                    state = chunk["state"]
                else:
                    raise _snap_corruption(path, pos - len(line), "unknown state line")
                continue
            if type(chunk) is not list:
                raise _snap_corruption(path, pos, "body line is not a list of records")
            if version >= 3:
                if len(chunk) % 2 or not all(type(t) is str and t and type(g) is dict
                                             for t, g in zip(chunk[0::2], chunk[1::2])):
                    raise _snap_corruption(path, pos, "body line is not [tag, {key: payload}, ...]")
                pairs = zip(chunk[0::2], chunk[1::2])
            else:
                if not 1 <= len(chunk) <= 2 or not all(type(c) is dict for c in chunk):
                    raise _snap_corruption(path, pos, "body line is not [ {json items}, {bytes items}? ]")
                pairs = zip(_V2_TAGS, chunk)
            pos += len(line)
            for tag, g in pairs:
                n += len(g)
                for k, v in g.items():
                    yield k, tag, v
        if crc != crc_expected:
            raise _snap_corruption(path, None, "checksum mismatch on the second read (file changed?)")
        if n != count:
            raise _snap_corruption(path, body_end, f"holds {n} keys, header says {count}")
        if state is not None or expires:
            yield None, "state", {**(state or {}), "expires": expires}
    finally:
        f.close()


def read_snapshot_file(path: str) -> tuple[SnapshotMeta, Iterator[tuple[str, str, Any]]]:
    """Verify the whole file (CRC pass), then return (meta, iterator of (key, tag, payload)
    records, as written; a version 1 or 2 file's records come with tags "j" and "b").

    Safe to trust: nothing is returned before the checksum of every byte matched.  The
    iterator streams the file a chunk at a time, re-checks the CRC as it goes and raises
    StorageCorruption at the end if the file changed in between.  It holds the file open:
    consume it fully or close() it.
    """
    f, meta, header, body_end, crc, version = _open_snapshot(path)
    return meta, _iter_snapshot(f, path, header, body_end, crc, meta.count, version)


# ---------------------------------------------------------------------------------------------
class _Segment:
    """One WAL file.  offsets[i] is the byte offset of the record with index first_index + i;
    size is the file's length (the end of its last record).  fd is open only for the active
    (last, appendable) segment."""
    __slots__ = ("path", "first_index", "offsets", "size", "fd")

    def __init__(self, path: str, first_index: int, offsets: array, size: int):
        self.path = path
        self.first_index = first_index
        self.offsets = offsets
        self.size = size
        self.fd: int | None = None

    @property
    def next_index(self) -> int:
        return self.first_index + len(self.offsets)


def _scan_segment(path: str, data: bytes, is_last: bool):
    """Split a segment into records.  Returns (offsets, payload views, end, torn) where torn is
    None or (offset, reason) for a torn tail to cut; raises StorageCorruption otherwise."""
    offsets = array("Q")
    payloads = []
    mv = memoryview(data)
    n = len(data)
    off = 0
    unpack = _HEADER.unpack_from
    bad = None
    while off < n:
        if n - off < _HEADER_SIZE:
            bad = f"incomplete record header ({n - off} bytes)"
            break
        length, crc = unpack(data, off)
        if length == 0:
            bad = "zero record length"
            break
        end = off + _HEADER_SIZE + length
        if end > n:
            bad = f"record length {length} runs past the end of the file ({n} bytes)"
            break
        payload = mv[off + _HEADER_SIZE:end]
        if _crc32(payload) != crc:
            bad = "CRC mismatch"
            break
        offsets.append(off)
        payloads.append(payload)
        off = end
    if bad is None:
        return offsets, payloads, n, None
    if not is_last:
        raise _wal_corruption(path, off, bad + " (not in the last segment)")
    follow = _find_valid_record(data, off + 1)
    if follow is not None:
        raise _wal_corruption(path, off, f"{bad}, and a valid record follows at offset {follow}")
    return offsets, payloads, off, (off, bad)


def _find_valid_record(data: bytes, start: int) -> int | None:
    """Offset >= start of the first complete record with a correct CRC, or None.  Payloads
    start with '[' (a wire list), which makes candidate positions cheap to find."""
    n = len(data)
    mv = memoryview(data)
    i = data.find(b"[", start + _HEADER_SIZE)
    while i != -1:
        length, crc = _HEADER.unpack_from(data, i - _HEADER_SIZE)
        if 0 < length <= n - i and _crc32(mv[i:i + length]) == crc:
            return i - _HEADER_SIZE
        i = data.find(b"[", i + 1)
    return None


def _decode_payloads(path: str, offsets: array, payloads: list, skip: int) -> list:
    """json-decode payloads[skip:] (one C call for the whole segment; per record only to point
    at the culprit when that fails)."""
    todo = payloads[skip:]
    if not todo:
        return []
    try:
        wires = _loads(b"[" + b",".join(todo) + b"]")
        if len(wires) == len(todo):
            return wires
    except (ValueError, UnicodeDecodeError):
        pass   # located record by record below
    for i, p in enumerate(todo):
        try:
            _loads(bytes(p))
        except (ValueError, UnicodeDecodeError) as e:
            raise _wal_corruption(path, offsets[skip + i],
                                  f"payload with a valid CRC does not decode: {e}") from None
    raise _wal_corruption(path, offsets[skip], "payloads do not decode as one list of records")


def _read_segment(path: str, data: bytes, first: int, is_last: bool, snap: int, expected: int,
                  entries: list) -> tuple[array, int, tuple | None, int]:
    """Check one segment (recovery rules 3 and 4) and append its entries past the snapshot `snap`
    to `entries`; `expected` is the index the log must continue at.  Returns (record offsets,
    valid size, torn tail (offset, reason) or None, the next expected index).  Raises
    StorageCorruption.  Reads only: cutting a torn tail is the caller's business."""
    offsets, payloads, size, bad = _scan_segment(path, data, is_last)
    if first < 1:
        raise _wal_corruption(path, 0, "segment name gives first index 0")
    skip = min(max(snap + 1 - first, 0), len(payloads))   # records covered by the snapshot
    wires = _decode_payloads(path, offsets, payloads, skip)
    from_wire = ReplicationLog.from_wire
    idx = first + skip
    for pos, w in enumerate(wires, skip):
        try:
            e = from_wire(w)
        except ValueError as exc:
            raise _wal_corruption(path, offsets[pos], str(exc)) from None
        if e.index != idx:
            raise _wal_corruption(path, offsets[pos], f"record holds index {e.index}, but its "
                                  f"position in a segment starting at {first} means {idx}")
        if idx != expected:
            raise _wal_corruption(path, offsets[pos], f"log is not contiguous: expected index "
                                  f"{expected}, found {idx}")
        entries.append(e)
        expected += 1
        idx += 1
    if not offsets and first > snap and first != expected:
        raise StorageCorruption(f"corrupt WAL: empty segment {path} starts at index {first} "
                                f"but the log continues at {expected}", path, 0)
    return offsets, size, bad, expected


@dataclass
class DataCheck:
    """What check_data() found: problems (each a StorageCorruption naming file and offset),
    notes (harmless findings, e.g. a torn tail start-up would cut), and a summary."""
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    term: int | None = None
    snapshot_index: int = 0
    first_index: int | None = None
    last_index: int = 0
    segments: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_data(data_dir: str) -> DataCheck:
    """Verify a data dir without changing it (the server's --check-data): the hard state, the
    snapshot (header, trailer, CRC) and every WAL segment (records, CRCs, decoding, indexes,
    contiguity).  Unlike load() it goes on past a problem, so every damaged file is reported,
    each with its offset.  A torn tail in the last segment is a note, not a problem (start-up
    cuts it).  Raises FileNotFoundError / NotADirectoryError for a missing dir."""
    chk = DataCheck()
    names = sorted(os.listdir(data_dir))
    state_path = os.path.join(data_dir, "raft_state.json")
    if os.path.exists(state_path):
        try:
            chk.term, _ = LogStorage(data_dir)._read_hard_state()
        except StorageCorruption as e:
            chk.problems.append(e)
    snap = 0
    snap_path = os.path.join(data_dir, "snapshot.dat")
    if os.path.exists(snap_path):
        try:
            snap = verify_snapshot_file(snap_path).last_index
        except StorageCorruption as e:
            chk.problems.append(e)
    chk.snapshot_index = snap
    segs = sorted((int(m.group(1)), os.path.join(data_dir, n)) for n in names if (m := _SEGMENT_RE.match(n)))
    chk.segments = len(segs)
    expected: int | None = snap + 1     # None after a damaged segment: resume at the next one
    last = snap
    for i, (first, path) in enumerate(segs):
        entries: list = []
        start = expected if expected is not None else max(first, snap + 1)
        try:
            with open(path, "rb") as f:
                data = f.read()
            _, _, bad, expected = _read_segment(path, data, first, i == len(segs) - 1, snap, start, entries)
        except StorageCorruption as e:
            chk.problems.append(e)
            expected = None
            continue
        except OSError as e:
            chk.problems.append(StorageCorruption(f"cannot read {path}: {e.strerror}", path, None))
            expected = None
            continue
        if entries:
            if chk.first_index is None:
                chk.first_index = entries[0].index
            last = entries[-1].index
        if bad is not None:
            chk.notes.append(f"torn tail in {path} at offset {bad[0]} ({bad[1]}): start-up will cut "
                             f"{len(data) - bad[0]} bytes that were never acknowledged")
    chk.last_index = last
    return chk


# ---------------------------------------------------------------------------------------------
class LogStorage:
    """A node's durable state: WAL segments, the snapshot file, and the term/vote record.

    Callers use: load() once, then append(), sync(), truncate_suffix(), save_hard_state(),
    install_snapshot(), compact(), reset_log(), read_snapshot(), snapshot_meta, snapshot_path,
    close().  All public methods are thread-safe.

    Invariants (hold whenever self._lock is free):
      - self._segments is sorted by first_index; the last one is the only one that may be
        appended to and is self._active when its next_index == self._next_index (else
        self._active is None and the next append starts a new segment named after its index).
      - Every entry from snapshot last_index + 1 to self._next_index - 1 is in exactly one
        segment, at the offset recorded in that segment's offsets.
      - Entries up to self._synced_seq (an append counter) are fsynced; only one thread runs a
        group-commit fsync at a time (self._syncing), outside self._lock.
      - On-disk changes happen in an order that leaves a loadable log at every crash point:
        later segments are deleted before an earlier one is cut; a new segment is created
        before older ones are deleted; compaction deletes oldest first.
    Lock order: self._install_lock -> self._lock; self._sync_cv's lock is never held while
    taking self._lock.
    """

    def __init__(self, data_dir: str, fsync: str = "always", segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 logger: Callable[[str], Any] | None = None):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.data_dir = os.path.abspath(data_dir)
        self.fsync_policy = fsync
        self.segment_bytes = segment_bytes
        self.snapshot_path = os.path.join(self.data_dir, "snapshot.dat")
        self.state_path = os.path.join(self.data_dir, "raft_state.json")
        self._log = logger or (lambda msg: None)
        self._lock = threading.Lock()            # segments, active fd, counters
        self._state_lock = threading.Lock()      # raft_state.json
        self._install_lock = threading.Lock()    # snapshot.dat replacement
        self._sync_cv = threading.Condition(threading.Lock())
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._next_index = 1
        self._snapshot_meta: SnapshotMeta | None = None
        self._append_seq = 0                     # bumped by every append (under _lock)
        self._synced_seq = 0                     # appends up to here are fsynced (under _sync_cv)
        self._syncing = False                    # a group-commit leader is fsyncing
        self._unsynced_paths: list[str] = []     # rolled segments not fsynced ("no" policy)
        self._failed: BaseException | None = None
        self.disk_full: str | None = None        # the last append/hard-state write hit ENOSPC
        self._loaded = False
        self._closed = False
        self._fsyncs = 0
        self._sync_calls = 0
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- properties
    @property
    def failed(self) -> bool:
        """True once the storage refuses all writes (a failed fsync or structural change)."""
        return self._failed is not None

    @property
    def fsync(self) -> str:
        return self.fsync_policy

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snapshot_meta

    @property
    def next_index(self) -> int:
        """Index the next appended entry must have."""
        return self._next_index

    @property
    def last_index(self) -> int:
        """Index of the last logged entry (the snapshot's last_index when the log is empty)."""
        return self._next_index - 1

    def stats(self) -> dict:
        with self._lock:
            return {"segments": len(self._segments), "wal_bytes": sum(s.size for s in self._segments),
                    "next_index": self._next_index, "fsyncs": self._fsyncs, "sync_calls": self._sync_calls,
                    "fsync": self.fsync_policy}

    # -- recovery
    def load(self) -> Recovered:
        """Recover the hard state, snapshot meta and log (see the module docstring's recovery
        rules).  Call once, before anything else.  Cuts a torn tail; raises StorageCorruption."""
        # Recovery builds an object per entry; the cyclic GC would rescan the growing heap
        # over and over (it doubles the time of a large load), so it is paused meanwhile.
        gc_was_on = gc.isenabled()
        if gc_was_on:
            gc.disable()
        try:
            return self._load()
        finally:
            if gc_was_on:
                gc.enable()

    def _load(self) -> Recovered:
        with self._lock:
            if self._loaded:
                raise RuntimeError("LogStorage.load() called twice")
            os.makedirs(self.data_dir, exist_ok=True)
            try:
                os.unlink(self.state_path + ".tmp")
            except FileNotFoundError:
                pass
            rec = Recovered()
            rec.term, rec.voted_for = self._read_hard_state()
            if os.path.exists(self.snapshot_path):
                rec.snapshot_meta = verify_snapshot_file(self.snapshot_path)
            snap = rec.snapshot_meta.last_index if rec.snapshot_meta else 0
            names = []
            for name in os.listdir(self.data_dir):
                m = _SEGMENT_RE.match(name)
                if m:
                    names.append((int(m.group(1)), os.path.join(self.data_dir, name)))
            names.sort()
            expected = snap + 1
            entries = rec.entries
            segments = []
            torn = None
            for i, (first, path) in enumerate(names):
                with open(path, "rb") as f:
                    data = f.read()
                offsets, size, bad, expected = _read_segment(path, data, first, i == len(names) - 1,
                                                             snap, expected, entries)
                if bad is not None:
                    torn = (path, bad[0], len(data) - bad[0], bad[1])
                segments.append(_Segment(path, first, offsets, size))
            if torn is not None:
                path, off, nbytes, reason = torn
                with open(path, "r+b") as f:
                    f.truncate(off)
                    f.flush()
                    os.fsync(f.fileno())
                rec.torn_tail = f"cut {nbytes} bytes at offset {off} of {path} ({reason})"
            self._segments = segments
            self._snapshot_meta = rec.snapshot_meta
            self._next_index = expected
            if segments and segments[-1].next_index == expected:
                self._active = segments[-1]
                self._active.fd = os.open(self._active.path, os.O_WRONLY | os.O_APPEND)
            self._loaded = True
            if self.fsync_policy == "everysec":
                self._flusher = threading.Thread(target=self._flush_loop, name="wal-everysec", daemon=True)
                self._flusher.start()
            return rec

    def _read_hard_state(self) -> tuple[int, str | None]:
        try:
            with open(self.state_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return 0, None
        try:
            st = _loads(raw)
            term, voted_for = st["term"], st["voted_for"]
            if type(term) is not int or term < 0 or not (voted_for is None or type(voted_for) is str):
                raise ValueError(f"bad values term={term!r} voted_for={voted_for!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise StorageCorruption(f"corrupt hard state {self.state_path} at offset 0: {e}",
                                    self.state_path, 0) from None
        return term, voted_for

    # -- hard state
    def save_hard_state(self, term: int, voted_for: str | None) -> None:
        """Persist (term, voted_for) atomically and durably, whatever the fsync policy."""
        data = _dumps({"term": term, "voted_for": voted_for}).encode() + b"\n"
        tmp = self.state_path + ".tmp"
        with self._state_lock:
            self._check_open()
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                if e.errno in _NO_SPACE:   # the old file is untouched: retry once space is back
                    self.disk_full = f"cannot save the term/vote record: {e.strerror}"
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)     # frees what the partial write took
                raise
            os.replace(tmp, self.state_path)
            _fsync_dir(self.data_dir)
            self.disk_full = None

    # -- the log
    def append(self, entries: list[ReplicationLog]) -> None:
        """Write entries to the OS (page cache) with one write; durable after sync().
        The batch must continue the log: entries[0].index == next_index, consecutive."""
        if not entries:
            return
        first = entries[0].index
        records = []
        for i, e in enumerate(entries):
            if e.index != first + i:
                raise ValueError(f"append batch is not consecutive: index {e.index} at position {i} "
                                 f"after {first}")
            records.append(encode_record(e))
        data = b"".join(records)
        with self._lock:
            self._check_usable()
            if first != self._next_index:
                raise ValueError(f"append of index {first}, but the log continues at {self._next_index}")
            seg = self._active
            if seg is None or (seg.size and seg.size + len(data) > self.segment_bytes):
                seg = self._structural(self._roll, first)
            base = seg.size
            try:
                _write_all(seg.fd, data)
            except OSError as e:
                try:
                    os.ftruncate(seg.fd, base)   # leave no partial record behind
                except OSError:
                    self._failed = e
                else:
                    if e.errno in _NO_SPACE:
                        self.disk_full = f"cannot append to the write-ahead log: {e.strerror}"
                raise
            self.disk_full = None
            offsets = seg.offsets
            off = base
            for r in records:
                offsets.append(off)
                off += len(r)
            seg.size = off
            self._next_index = first + len(entries)
            self._append_seq += 1

    def sync(self, force: bool = False) -> None:
        """Make everything appended so far durable per the policy ("always": fsync before
        returning, shared with concurrent callers; "everysec"/"no": return at once).
        force=True fsyncs whatever the policy."""
        self._sync_calls += 1
        if self._failed is not None:
            self._raise_failed()
        if self.fsync_policy == "always" or force:
            self._sync_to(self._append_seq)

    def _sync_to(self, target: int) -> None:
        """Group commit: return once appends up to `target` are fsynced.  One caller at a time
        fsyncs (the leader) everything appended before it started; the others wait for it and
        return without an fsync of their own if it covered them."""
        cv = self._sync_cv
        with cv:
            while True:
                if self._synced_seq >= target:
                    return
                if not self._syncing:
                    self._syncing = True
                    break
                cv.wait()
        done = None
        try:
            with self._lock:
                self._check_usable()
                seq = self._append_seq
                fd = os.dup(self._active.fd) if self._active is not None else None
                paths, self._unsynced_paths = self._unsynced_paths, []
            try:
                for p in paths:
                    try:
                        pfd = os.open(p, os.O_RDONLY)
                    except FileNotFoundError:
                        continue   # deleted by truncation/compaction since
                    try:
                        os.fsync(pfd)
                    finally:
                        os.close(pfd)
                if fd is not None:
                    os.fsync(fd)
                    self._fsyncs += 1
            except OSError as e:
                self._failed = e
                raise
            finally:
                if fd is not None:
                    os.close(fd)
            done = seq
        finally:
            with cv:
                self._syncing = False
                if done is not None and done > self._synced_seq:
                    self._synced_seq = done
                cv.notify_all()

    def _flush_loop(self) -> None:
        """everysec: fsync once a second when something was appended since the last fsync."""
        while not self._stop.wait(1.0):
            if self._append_seq > self._synced_seq:
                try:
                    self._sync_to(self._append_seq)
                except OSError as e:
                    self._log(f"background WAL fsync failed, storage stopped: {e}")
                    return

    def truncate_suffix(self, from_index: int) -> None:
        """Drop every entry >= from_index (a follower's conflicting tail), durably.
        No-op if from_index is past the last entry."""
        with self._lock:
            self._check_usable()
            snap = self._snapshot_meta.last_index if self._snapshot_meta else 0
            if from_index <= snap:
                raise ValueError(f"cannot truncate the log at {from_index}: entries up to {snap} "
                                 f"are in the snapshot (committed)")
            if from_index >= self._next_index:
                return
            self._structural(self._truncate_locked, from_index)

    def _truncate_locked(self, from_index: int) -> None:
        """Caller holds self._lock.  Later segments go first, so a crash never leaves a gap."""
        removed = False
        while self._segments and self._segments[-1].first_index >= from_index:
            seg = self._segments.pop()
            self._close_segment(seg)
            os.unlink(seg.path)
            removed = True
        if removed:
            _fsync_dir(self.data_dir)
        self._active = None
        if self._segments:
            seg = self._segments[-1]
            pos = from_index - seg.first_index
            if pos < len(seg.offsets):
                off = seg.offsets[pos]
                fd = seg.fd if seg.fd is not None else os.open(seg.path, os.O_WRONLY | os.O_APPEND)
                try:
                    os.ftruncate(fd, off)
                    os.fsync(fd)
                    self._fsyncs += 1
                finally:
                    if fd != seg.fd:
                        os.close(fd)
                del seg.offsets[pos:]
                seg.size = off
            if seg.next_index == from_index:
                if seg.fd is None:
                    seg.fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
                self._active = seg
        self._next_index = from_index

    def reset_log(self, next_index: int) -> None:
        """Discard the whole log and start an empty one whose first entry will be next_index
        (after installing a snapshot beyond or in conflict with the log).  Requires
        next_index <= snapshot last_index + 1.  Durable; every crash point loads cleanly."""
        with self._lock:
            self._check_usable()
            snap = self._snapshot_meta.last_index if self._snapshot_meta else 0
            if not 1 <= next_index <= snap + 1:
                raise ValueError(f"reset_log({next_index}) would leave a gap after the snapshot at {snap}")
            self._structural(self._reset_locked, next_index)

    def _reset_locked(self, next_index: int) -> int:
        """Caller holds self._lock.  Returns the number of segments deleted."""
        if next_index < self._next_index:
            self._truncate_locked(next_index)        # the log now ends before next_index
        act = self._active
        if act is None or act.offsets or act.first_index != next_index:
            if act is not None:                      # about to be deleted: no need to fsync it
                self._close_segment(act)
                self._active = None
            act = self._roll(next_index)             # new empty segment, dir fsynced
        old = [s for s in self._segments if s is not act]
        self._segments = [act]
        self._active = act
        for seg in old:                              # oldest first
            self._close_segment(seg)
            os.unlink(seg.path)
        if old:
            _fsync_dir(self.data_dir)
        self._next_index = next_index
        return len(old)

    def _roll(self, first_index: int) -> _Segment:
        """Caller holds self._lock.  Finish the active segment (fsync it unless policy "no")
        and create a new empty one named after first_index; the directory is fsynced."""
        old = self._active
        if old is not None and old.fd is not None:
            if self.fsync_policy == "no":
                self._unsynced_paths.append(old.path)
            else:
                os.fsync(old.fd)
                self._fsyncs += 1
            os.close(old.fd)
            old.fd = None
        path = os.path.join(self.data_dir, f"wal-{first_index:020d}.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        _fsync_dir(self.data_dir)
        seg = _Segment(path, first_index, array("Q"), 0)
        seg.fd = fd
        self._segments.append(seg)
        self._active = seg
        return seg

    @staticmethod
    def _close_segment(seg: _Segment) -> None:
        if seg.fd is not None:
            os.close(seg.fd)   # a sync leader works on its own dup(), never on this fd
            seg.fd = None

    # -- snapshots
    def read_snapshot(self, path: str | None = None) -> tuple[SnapshotMeta, Iterator[tuple[str, str, Any]]]:
        """(meta, iterator of (key, tag, payload) records) of snapshot.dat or `path`.  The whole file is
        verified before this returns (see read_snapshot_file); consume or close the iterator."""
        return read_snapshot_file(path or self.snapshot_path)

    def install_snapshot(self, tmp_path: str, meta: SnapshotMeta) -> bool:
        """Verify tmp_path (CRC, and that its header equals meta), make it durable, rename it to
        snapshot.dat, fsync the directory and adopt meta.  Returns False (leaving tmp_path
        alone) if the installed snapshot is already newer.  Raises StorageCorruption if the
        file is bad or does not match meta."""
        file_meta = verify_snapshot_file(tmp_path)
        if file_meta != meta:
            raise StorageCorruption(f"snapshot {tmp_path} does not match its description: file has "
                                    f"{file_meta}, expected {meta}", tmp_path)
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._install_lock:
            self._check_open()
            cur = self._snapshot_meta
            if cur is not None and meta.last_index < cur.last_index:
                self._log(f"ignored snapshot at index {meta.last_index}: the installed one is at "
                          f"{cur.last_index}")
                return False
            os.replace(tmp_path, self.snapshot_path)
            _fsync_dir(self.data_dir)
            with self._lock:
                self._snapshot_meta = meta
        return True

    def compact(self, snapshot_index: int) -> int:
        """Delete WAL segments whose entries are all <= snapshot_index (clamped to the installed
        snapshot's last_index).  If that is every entry, the log restarts in a new empty segment
        at snapshot_index + 1 first.  Returns the number of segments deleted."""
        with self._lock:
            self._check_usable()
            meta = self._snapshot_meta
            if meta is None:
                return 0
            upto = min(snapshot_index, meta.last_index)
            if self._next_index <= upto + 1:         # nothing beyond the snapshot: start afresh
                return self._structural(self._reset_locked, upto + 1)
            old = self._detach_prefix_locked(upto)
        # The files are deleted outside the lock: appends (the leader's hot path) must not wait
        # for a directory fsync, which can take hundreds of ms while a snapshot is being
        # written.  Nothing else uses these files any more, and a crash before the unlinks
        # leaves segments that recovery skips (every entry in them is covered by the snapshot).
        try:
            for seg in old:                          # oldest first: a crash leaves a suffix
                os.unlink(seg.path)
            if old:
                _fsync_dir(self.data_dir)
        except OSError as e:
            with self._lock:
                self._failed = e
            raise
        return len(old)

    def _detach_prefix_locked(self, upto: int) -> list:
        """Caller holds self._lock.  Take the non-active segments ending at or before upto out of
        the log (their descriptors closed); the caller deletes their files."""
        old = [s for s in self._segments if s is not self._active and s.next_index - 1 <= upto]
        if old:
            gone = set(map(id, old))
            self._segments = [s for s in self._segments if id(s) not in gone]
            for seg in old:
                self._close_segment(seg)
        return old

    def _structural(self, fn, arg: int):
        """Run a change of segment files (caller holds self._lock).  If the disk fails half-way
        the in-memory map may no longer match the files, so the storage stops: every later
        write raises OSError and the server must restart (load() then sees a consistent log,
        because each step leaves one on disk)."""
        try:
            return fn(arg)
        except OSError as e:
            self._failed = e
            raise

    # -- lifecycle
    def close(self) -> None:
        """Stop the everysec thread, fsync what is pending (policies "always"/"everysec"),
        close the files.  Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        try:
            if self._loaded and self._failed is None and self.fsync_policy != "no":
                self._sync_to(self._append_seq)
        finally:
            with self._lock:
                self._closed = True
                for seg in self._segments:
                    self._close_segment(seg)
                self._active = None

    def __enter__(self) -> "LogStorage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("LogStorage is closed")

    def _check_usable(self) -> None:
        """Caller holds self._lock."""
        if self._closed:
            raise ValueError("LogStorage is closed")
        if not self._loaded:
            raise RuntimeError("LogStorage.load() must be called first")
        if self._failed is not None:
            self._raise_failed()

    def _raise_failed(self):
        raise OSError(f"storage stopped after an earlier failure: {self._failed}") from self._failed


# ---------------------------------------------------------------------------------------------
def _bench(argv: list[str]) -> None:
    """python kv_storage.py bench [DIR]: append+sync rates and 1M-key snapshot times."""
    import tempfile
    import time
    base = argv[0] if argv else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        for threads in (1, 8):
            st = LogStorage(os.path.join(d, f"wal{threads}"), fsync="always")
            st.load()
            lock = threading.Lock()
            nxt = [1]
            stop = time.monotonic() + 2.0
            done = [0]

            def worker():
                n = 0
                while time.monotonic() < stop:
                    with lock:
                        i = nxt[0]
                        nxt[0] += 1
                        st.append([ReplicationLog(i, 1, "SET", f"key{i}", {"v": i, "s": "x" * 40})])
                    st.sync()
                    n += 1
                with lock:
                    done[0] += n
            ts = [threading.Thread(target=worker) for _ in range(threads)]
            t0 = time.monotonic()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            el = time.monotonic() - t0
            print(f"append+sync, fsync=always, {threads} thread(s): {done[0] / el:,.0f}/s "
                  f"({st.stats()['fsyncs']} fsyncs for {done[0]} syncs)")
            st.close()
        n = 1_000_000
        items = [(f"key:{i:08d}", "j", {"n": i, "s": f"value-{i}"}) if i % 10 else
                 (f"key:{i:08d}", "b", "AP9ieXRlcwD/Ynl0ZXMA/2J5dGVz") for i in range(n)]
        meta = SnapshotMeta(n, 1, n, "0" * 16)
        path = os.path.join(d, "snap.tmp")
        t0 = time.monotonic()
        size = write_snapshot_file(path, meta, iter(items))
        t1 = time.monotonic()
        del items
        got = 0
        m, it = read_snapshot_file(path)
        for _ in it:
            got += 1
        t2 = time.monotonic()
        print(f"snapshot of {n:,} keys ({size / 1e6:.1f} MB): write {t1 - t0:.2f} s, "
              f"verify+read {t2 - t1:.2f} s ({got:,} items)")


if __name__ == "__main__":
    import sys
    if len(sys.argv) >= 2 and sys.argv[1] == "bench":
        _bench(sys.argv[2:])
    else:
        print(__doc__)
