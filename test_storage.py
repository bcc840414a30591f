"""Tests for kv_storage: WAL round trips, segments, truncation, group commit, torn tails,
corruption, snapshots, compaction, reset, and a real kill -9 crash.

Run: python -m pytest -q test_storage.py
"""

import base64
import gc
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import zlib

import pytest

import kv_storage
from kv_localcluster import wait_until
from kv_storage import (LogStorage, ReplicationLog, SnapshotMeta, StorageCorruption, encode_record,
                        read_snapshot_file, verify_snapshot_file, write_snapshot_file)

HERE = os.path.dirname(os.path.abspath(__file__))

SURROGATE_KEY = b"bin\xff\xfekey".decode("utf-8", "surrogateescape")


def sample_entries(first=1, n=None):
    """A varied batch: bytes, null, nested JSON, unicode, surrogate-escaped keys, NOOP, DEL."""
    vals = [
        ("SET", "plain", "hello", "json"),
        ("SET", "num", 42, "json"),
        ("SET", "null", None, "json"),
        ("SET", "nested", {"a": [1, 2.5, {"b": None, "c": [True, False]}], "é": "ünïcödé ✓"}, "json"),
        ("SET", "bytes", b"\x00\x01\xff raw \r\n bytes", "bytes"),
        ("SET", "empty-bytes", b"", "bytes"),
        ("SET", SURROGATE_KEY, b"\xff", "bytes"),
        ("SET", "ключ-日本", "値 \udcff lone surrogate in a value", "json"),
        ("DEL", "plain", None, "json"),
        ("NOOP", None, None, "json"),
        ("SETNX", "x", [], "json"),
    ]
    if n is None:
        n = len(vals)
    out = []
    for i in range(n):
        op, key, value, kind = vals[i % len(vals)]
        out.append(ReplicationLog(first + i, 1 + (first + i) // 7, op, key, value, kind))
    return out


def filler(first, n, size=40, term=1):
    return [ReplicationLog(i, term, "SET", f"key{i}", "v" * size) for i in range(first, first + n)]


def open_storage(path, **kw):
    st = LogStorage(str(path), **kw)
    rec = st.load()
    return st, rec


def segment_files(path):
    return sorted(n for n in os.listdir(path) if n.startswith("wal-"))


def reload(path, **kw):
    st, rec = open_storage(path, **kw)
    st.close()
    return rec


# ---------------------------------------------------------------------------------------------
# ReplicationLog wire form

def test_wire_roundtrip_through_json():
    for e in sample_entries():
        w = e.to_wire()
        text = json.dumps(w)                      # what the transport does (ensure_ascii)
        assert text.isascii()
        back = ReplicationLog.from_wire(json.loads(text))
        assert back == e
        assert type(back.value) is type(e.value)


def test_wire_is_compact():
    e = ReplicationLog(5, 2, "SET", "k", {"a": 1})
    assert e.to_wire() == [5, 2, "SET", "k", {"a": 1}]
    b = ReplicationLog(6, 2, "SET", "k", b"\x00", "bytes")
    assert b.to_wire() == [6, 2, "SET", "k", "AA==", "bytes"]


@pytest.mark.parametrize("bad", [
    "not a list", [1, 1, "SET"], [1, 1, "SET", "k", 1, "bytes"], [1, 1, "SET", "k", "AA==", ""], [1, 1, "SET", "k", "!!", "bytes"],
    [1, 1, "SET", "k", "AA==", "json"], ["1", 1, "SET", "k", 1], [1, 1, 5, "k", 1], [1, 1, "SET", 5, 1],
    [0, 1, "SET", "k", 1], [1, -1, "SET", "k", 1], [True, 1, "SET", "k", 1], [1, 1, "SET", "k", 1, 2, 3],
])
def test_from_wire_rejects_malformed(bad):
    with pytest.raises(ValueError):
        ReplicationLog.from_wire(bad)


def test_encode_record_layout():
    e = ReplicationLog(1, 1, "SET", "k", "v")
    rec = encode_record(e)
    length = int.from_bytes(rec[:4], "big")
    import zlib
    assert length == len(rec) - 8
    assert int.from_bytes(rec[4:8], "big") == zlib.crc32(rec[8:])
    assert json.loads(rec[8:]) == e.to_wire()


# ---------------------------------------------------------------------------------------------
# WAL basics

def test_append_sync_load_roundtrip(tmp_path):
    st, rec = open_storage(tmp_path)
    assert (rec.term, rec.voted_for, rec.snapshot_meta, rec.entries, rec.torn_tail) == (0, None, None, [], None)
    entries = sample_entries(1, 30)
    st.append(entries[:5])
    st.append(entries[5:])
    st.sync()
    assert st.last_index == 30
    st.close()
    rec = reload(tmp_path)
    assert gc.isenabled()                      # load() pauses the GC and restores it
    assert rec.entries == entries
    assert rec.torn_tail is None
    assert [type(e.value) for e in rec.entries] == [type(e.value) for e in entries]


def test_append_must_continue_the_log(tmp_path):
    st, _ = open_storage(tmp_path)
    st.append(filler(1, 3))
    with pytest.raises(ValueError):
        st.append(filler(5, 1))           # gap
    with pytest.raises(ValueError):
        st.append(filler(3, 1))           # overlap
    with pytest.raises(ValueError):
        st.append([filler(4, 1)[0], filler(6, 1)[0]])   # not consecutive
    st.append(filler(4, 1))
    st.close()
    assert [e.index for e in reload(tmp_path).entries] == [1, 2, 3, 4]


def test_closed_and_unloaded_storage_refuse_writes(tmp_path):
    st = LogStorage(str(tmp_path))
    with pytest.raises(RuntimeError):
        st.append(filler(1, 1))
    st.load()
    st.close()
    st.close()                            # idempotent
    with pytest.raises(ValueError):
        st.append(filler(1, 1))


def test_segment_rolling_and_truncate_across_segments(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=400)
    for i in range(1, 61, 3):
        st.append(filler(i, 3))
    st.sync()
    files = segment_files(tmp_path)
    assert len(files) > 4
    for f in files:                        # each segment is named after its first entry
        assert os.path.getsize(tmp_path / f) <= 400
    firsts = [int(f[4:24]) for f in files]
    assert firsts[0] == 1 and firsts == sorted(firsts)

    st.truncate_suffix(17)                 # lands inside an earlier segment
    assert st.last_index == 16
    left = segment_files(tmp_path)
    assert all(int(f[4:24]) < 17 for f in left)
    st.truncate_suffix(100)                # past the end: no-op
    st.append(filler(17, 4, term=2))
    st.sync()
    st.close()
    rec = reload(tmp_path, segment_bytes=400)
    assert [e.index for e in rec.entries] == list(range(1, 21))
    assert [e.term for e in rec.entries[16:]] == [2] * 4


def test_truncate_at_segment_boundary_then_append(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=200)
    for i in range(1, 31):
        st.append(filler(i, 1))
    files = segment_files(tmp_path)
    boundary = int(files[2][4:24])
    st.truncate_suffix(boundary)
    assert files[2] not in segment_files(tmp_path)
    st.append(filler(boundary, 2, term=3))
    st.close()
    rec = reload(tmp_path, segment_bytes=200)
    assert rec.entries[-1].index == boundary + 1 and rec.entries[-1].term == 3
    # truncating everything leaves an empty log that continues at 1
    st, _ = open_storage(tmp_path, segment_bytes=200)
    st.truncate_suffix(1)
    assert st.next_index == 1 and segment_files(tmp_path) == []
    st.append(filler(1, 1, term=9))
    st.close()
    assert [(e.index, e.term) for e in reload(tmp_path).entries] == [(1, 9)]


# ---------------------------------------------------------------------------------------------
# hard state

def test_hard_state(tmp_path):
    st, rec = open_storage(tmp_path)
    assert (rec.term, rec.voted_for) == (0, None)
    st.save_hard_state(3, "node2")
    st.save_hard_state(4, None)
    st.save_hard_state(5, "node1")
    st.close()
    (tmp_path / "raft_state.json.tmp").write_text("half-written")   # crash between write and rename
    rec = reload(tmp_path)
    assert (rec.term, rec.voted_for) == (5, "node1")
    assert not (tmp_path / "raft_state.json.tmp").exists()


def test_corrupt_hard_state_is_reported(tmp_path):
    (tmp_path / "raft_state.json").write_text('{"term": "x"')
    with pytest.raises(StorageCorruption, match="raft_state.json"):
        LogStorage(str(tmp_path)).load()


# ---------------------------------------------------------------------------------------------
# fsync policies and group commit

@pytest.mark.parametrize("segment_bytes", [kv_storage.DEFAULT_SEGMENT_BYTES, 2000])
def test_group_commit_shares_fsyncs_and_loses_nothing(tmp_path, monkeypatch, segment_bytes):
    """8 threads append+sync concurrently: every sync() returns only once its record is
    covered by a finished fsync, and they share fsyncs (with 2000-byte segments, rolls happen
    in the middle of it)."""
    st, _ = open_storage(tmp_path, segment_bytes=segment_bytes)
    st.append(filler(1, 1))
    st.sync()                                  # segment exists before we count
    real_fsync = os.fsync
    synced_to = {}                             # inode -> file size covered by a finished fsync
    calls = []
    guard = threading.Lock()

    def counting_fsync(fd):
        info = os.fstat(fd)
        time.sleep(0.002)                      # simulated disk latency (lets callers pile up)
        real_fsync(fd)
        with guard:
            calls.append(fd)
            synced_to[info.st_ino] = max(synced_to.get(info.st_ino, 0), info.st_size)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    order = threading.Lock()
    nxt = [2]
    per_thread = 40
    errors = []

    def worker(t):
        try:
            for _ in range(per_thread):
                with order:
                    i = nxt[0]
                    nxt[0] += 1
                    st.append([ReplicationLog(i, 1, "SET", f"t{t}", i)])
                    ino = os.fstat(st._active.fd).st_ino
                    end = st._active.size
                st.sync()
                with guard:                    # durable when sync() returns
                    assert synced_to.get(ino, 0) >= end, (i, end, synced_to.get(ino))
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    total = 8 * per_thread
    assert 0 < len(calls) < total, f"{len(calls)} fsyncs for {total} sync() calls"
    monkeypatch.undo()
    st.close()
    if segment_bytes == 2000:
        assert len(segment_files(tmp_path)) > 3
    rec = reload(tmp_path)
    assert [e.index for e in rec.entries] == list(range(1, total + 2))


def test_policy_no_never_fsyncs_unless_forced(tmp_path, monkeypatch):
    st, _ = open_storage(tmp_path, fsync="no")
    st.append(filler(1, 1))                    # creates the segment (directory fsync)
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    for i in range(2, 20):
        st.append(filler(i, 1))
        st.sync()
    assert calls == []
    st.sync(force=True)
    assert len(calls) == 1
    st.close()
    assert len(calls) == 1                     # close() does not fsync under "no"


def test_policy_everysec_fsyncs_in_background(tmp_path, monkeypatch):
    st, _ = open_storage(tmp_path, fsync="everysec")
    st.append(filler(1, 1))
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    st.append(filler(2, 5))
    st.sync()                                  # returns at once
    wait_until(lambda: len(calls) >= 1, 5.0, "the background fsync", interval=0.01)
    n = len(calls)
    st.close()
    assert len(calls) == n                     # nothing left to fsync at close
    assert len(reload(tmp_path).entries) == 6


def test_failed_fsync_stops_the_storage(tmp_path, monkeypatch):
    st, _ = open_storage(tmp_path)
    st.append(filler(1, 1))

    def broken(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        st.sync()
    monkeypatch.undo()
    with pytest.raises(OSError, match="earlier failure"):
        st.append(filler(2, 1))
    with pytest.raises(OSError):
        st.sync()


# ---------------------------------------------------------------------------------------------
# torn tails and corruption

def _write_log(path, n=10, **kw):
    st, _ = open_storage(path, **kw)
    for i in range(1, n + 1):
        st.append(filler(i, 1))
    offsets = list(st._active.offsets)
    seg = st._active.path
    st.close()
    return seg, offsets


def test_torn_tail_half_record_is_cut(tmp_path):
    seg, offsets = _write_log(tmp_path)
    size = os.path.getsize(seg)
    last = offsets[-1]
    with open(seg, "r+b") as f:
        f.truncate(last + (size - last) // 2)
    st, rec = open_storage(tmp_path)
    assert [e.index for e in rec.entries] == list(range(1, 10))
    assert rec.torn_tail and seg in rec.torn_tail and f"offset {last}" in rec.torn_tail
    assert os.path.getsize(seg) == last
    st.append(filler(10, 1))                   # the log continues where the torn record was
    st.close()
    rec = reload(tmp_path)
    assert rec.torn_tail is None and len(rec.entries) == 10


@pytest.mark.parametrize("tail", [b"\x00" * 4096, b"\x00\x00\x00", b"\x7f\xff\xff\xff\x00\x00\x00\x00[garbage",
                                  b"\x00\x00\x00\x05\x12\x34\x56\x78[1,2]"])
def test_torn_tail_garbage_or_zeros_is_cut(tmp_path, tail):
    seg, offsets = _write_log(tmp_path)
    size = os.path.getsize(seg)
    with open(seg, "ab") as f:
        f.write(tail)
    rec = reload(tmp_path)
    assert len(rec.entries) == 10
    assert rec.torn_tail is not None
    assert os.path.getsize(seg) == size


def test_flipped_byte_mid_file_is_corruption(tmp_path):
    seg, offsets = _write_log(tmp_path)
    mid = offsets[5]
    with open(seg, "r+b") as f:
        f.seek(mid + 12)
        b = f.read(1)
        f.seek(mid + 12)
        f.write(bytes([b[0] ^ 0x01]))
    before = os.path.getsize(seg)
    with pytest.raises(StorageCorruption) as ei:
        LogStorage(str(tmp_path)).load()
    msg = str(ei.value)
    assert seg in msg and f"offset {mid}" in msg and "CRC mismatch" in msg
    assert ei.value.path == seg and ei.value.offset == mid
    assert os.path.getsize(seg) == before      # nothing was cut


def test_huge_length_mid_file_is_corruption(tmp_path):
    seg, offsets = _write_log(tmp_path)
    with open(seg, "r+b") as f:
        f.seek(offsets[3])
        f.write(b"\x7f\xff\xff\xff")
    with pytest.raises(StorageCorruption, match=f"offset {offsets[3]}.*valid record follows"):
        LogStorage(str(tmp_path)).load()


def test_bad_record_in_earlier_segment_is_corruption(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 31):
        st.append(filler(i, 1))
    st.close()
    first = str(tmp_path / segment_files(tmp_path)[0])
    size = os.path.getsize(first)
    with open(first, "r+b") as f:              # a torn-looking tail, but not in the last segment
        f.truncate(size - 5)
    with pytest.raises(StorageCorruption, match=first):
        LogStorage(str(tmp_path)).load()


def test_valid_crc_but_undecodable_payload_is_corruption(tmp_path):
    import zlib
    seg, offsets = _write_log(tmp_path, n=3)
    payload = b"[4,1,SET]"
    with open(seg, "ab") as f:
        f.write(len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big") + payload)
    end = os.path.getsize(seg) - len(payload) - 8
    with pytest.raises(StorageCorruption, match=f"offset {end}.*does not decode"):
        LogStorage(str(tmp_path)).load()


def test_record_with_wrong_index_is_corruption(tmp_path):
    st, _ = open_storage(tmp_path)
    st.append(filler(1, 2))
    seg = st._active.path
    st.close()
    with open(seg, "ab") as f:
        f.write(encode_record(filler(7, 1)[0]))
    with pytest.raises(StorageCorruption, match="holds index 7"):
        LogStorage(str(tmp_path)).load()


def test_missing_middle_segment_is_corruption(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 31):
        st.append(filler(i, 1))
    st.close()
    files = segment_files(tmp_path)
    os.unlink(tmp_path / files[1])
    with pytest.raises(StorageCorruption, match="not contiguous"):
        LogStorage(str(tmp_path), segment_bytes=300).load()


# ---------------------------------------------------------------------------------------------
# snapshots

def snapshot_items(n):
    """Opaque (key, tag, payload) records of several tags, as the state machine hands them."""
    items = []
    for i in range(n):
        if i % 5 == 0:
            items.append((f"b{i}", "b", base64.b64encode(bytes([i % 256]) * (i % 7)).decode()))
        elif i % 5 == 1:
            items.append((f"n{i}", "j", None))
        elif i % 5 == 2:
            items.append((f"h{i}", "h", ["Zg==", "dg==", "Zw==", ""]))
        else:
            items.append((f"k{i}-ü", "j", {"i": i, "l": [1, "x", None], "s": "\u2603"}))
    items.append((SURROGATE_KEY, "b", "//4="))
    items.append(("big", "j", "x" * (3 << 20)))     # forces a chunk boundary by size
    items.append(("biglist", "l", ["eA=="] * 300_000))   # and a long container payload
    return items


def test_snapshot_write_read_roundtrip(tmp_path):
    items = snapshot_items(5000)
    meta = SnapshotMeta(123, 4, len(items), "00ff00ff00ff00ff")
    path = str(tmp_path / "snap.tmp")
    size = write_snapshot_file(path, meta, iter(items))
    assert size == os.path.getsize(path)
    assert verify_snapshot_file(path) == meta
    got_meta, it = read_snapshot_file(path)
    assert got_meta == meta
    got = list(it)
    assert sorted(got, key=lambda t: t[0]) == sorted(items, key=lambda t: t[0])


def test_snapshot_meta_carries_the_cluster_configuration(tmp_path):
    """Raft §4.1: the configuration in force at the snapshot point is stored in its header and
    comes back from write/read, install and load (a restart restores membership from it)."""
    cfg = {"voters": {"node1": "127.0.0.1:7001", "node4": "127.0.0.1:7004"},
           "learners": {"node5": "127.0.0.1:7005"}}
    st, _ = open_storage(tmp_path)
    for i in range(1, 6):
        st.append(filler(i, 1))
    meta = SnapshotMeta(3, 1, 1, "d", cfg)
    tmp = st.snapshot_path + ".tmp-3"
    write_snapshot_file(tmp, meta, [("a", "j", 1)])
    assert verify_snapshot_file(tmp).config == cfg
    assert st.install_snapshot(tmp, meta) is True
    st.close()
    rec = reload(tmp_path)
    assert rec.snapshot_meta == meta and rec.snapshot_meta.config == cfg


def test_snapshot_without_configuration_still_loads(tmp_path):
    """A snapshot written before membership changes existed has no "config": it loads with
    config None (the node then uses its bootstrap membership)."""
    path = str(tmp_path / "s")
    write_snapshot_file(path, SnapshotMeta(2, 1, 0, "d"), [])
    with open(path, "rb") as f:
        assert b"config" not in f.readline()
    assert verify_snapshot_file(path).config is None


def test_empty_snapshot(tmp_path):
    path = str(tmp_path / "s")
    meta = SnapshotMeta(0, 0, 0, "0" * 16)
    write_snapshot_file(path, meta, [])
    m, it = read_snapshot_file(path)
    assert m == meta and list(it) == []


def test_snapshot_writer_checks_count_and_cleans_up(tmp_path):
    path = str(tmp_path / "s")
    with pytest.raises(ValueError, match="meta.count"):
        write_snapshot_file(path, SnapshotMeta(1, 1, 5, "d"), [("a", "j", 1)])
    assert not os.path.exists(path)
    for bad, match in [(("a", "", 1), "tag"), (("a", 5, 1), "tag"), (("a", "b", b"raw"), "not JSON")]:
        with pytest.raises(ValueError, match=match):
            write_snapshot_file(path, SnapshotMeta(1, 1, 1, "d"), [bad])
        assert not os.path.exists(path)


def test_snapshot_records_are_opaque_and_version_2_files_still_read(tmp_path):
    """The writer stores (key, tag, payload) records as given, tags it never heard of
    included; a version 2 file ([J] / [J, B] body lines) reads back as tags "j" and "b"."""
    path = str(tmp_path / "v3")
    records = [("a", "zz-new-type", {"any": ["json", 1]}), ("b", "j", [1, 2]), ("c", "b", "AAE=")]
    write_snapshot_file(path, SnapshotMeta(3, 1, 3, "d"), records)
    with open(path, "rb") as f:
        assert json.loads(f.readline())["version"] == 3
    assert list(read_snapshot_file(path)[1]) == records
    v2 = tmp_path / "v2"
    header = b'{"format":"kv-snapshot","version":2,"last_index":3,"last_term":1,"count":3,"digest":"d"}\n'
    body = header + b'[{"a":1,"b":{"x":null}},{"c":"AAE="}]\n{"ttl":{"a":99}}\n{"state":{"clock_ms":5}}\n'
    v2.write_bytes(body + b'{"end":true,"count":3,"crc":%d}\n' % zlib.crc32(body))
    meta, it = read_snapshot_file(str(v2))
    assert meta.count == 3
    assert list(it) == [("a", "j", 1), ("b", "j", {"x": None}), ("c", "b", "AAE="),
                        (None, "state", {"clock_ms": 5, "expires": {"a": 99}})]


@pytest.mark.parametrize("damage", ["flip", "truncate", "trailer", "header"])
def test_corrupt_snapshot_is_detected(tmp_path, damage):
    items = snapshot_items(3000)
    path = str(tmp_path / "snap")
    write_snapshot_file(path, SnapshotMeta(9, 1, len(items), "d"), items)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if damage == "flip":
            f.seek(size // 3)
            b = f.read(1)
            f.seek(size // 3)
            f.write(bytes([b[0] ^ 0x20]))
        elif damage == "truncate":
            f.truncate(size // 2)
        elif damage == "trailer":
            f.truncate(size - 3)
        else:
            f.seek(2)
            f.write(b"X")
    with pytest.raises(StorageCorruption, match="snap"):
        read_snapshot_file(path)
    with pytest.raises(StorageCorruption):
        verify_snapshot_file(path)


def test_install_snapshot_and_load_skips_covered_entries(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=400)
    for i in range(1, 41):
        st.append(filler(i, 1))
    items = [("a", "j", 1), ("b", "b", "AA==")]
    meta = SnapshotMeta(25, 1, 2, "abc")
    tmp = st.snapshot_path + ".tmp-25"
    write_snapshot_file(tmp, meta, items)
    assert st.install_snapshot(tmp, meta) is True
    assert not os.path.exists(tmp) and st.snapshot_meta == meta
    st.close()
    rec = reload(tmp_path, segment_bytes=400)
    assert rec.snapshot_meta == meta
    assert [e.index for e in rec.entries] == list(range(26, 41))
    st2 = LogStorage(str(tmp_path))
    st2.load()
    m, it = st2.read_snapshot()
    assert m == meta and list(it) == items
    st2.close()


def test_install_snapshot_rejects_mismatch_and_ignores_older(tmp_path):
    st, _ = open_storage(tmp_path)
    st.append(filler(1, 50))
    p = str(tmp_path / "s1")
    write_snapshot_file(p, SnapshotMeta(40, 1, 1, "d"), [("k", "j", 1)])
    with pytest.raises(StorageCorruption, match="does not match"):
        st.install_snapshot(p, SnapshotMeta(41, 1, 1, "d"))
    assert st.install_snapshot(p, SnapshotMeta(40, 1, 1, "d"))
    p2 = str(tmp_path / "s2")
    write_snapshot_file(p2, SnapshotMeta(30, 1, 0, "e"), [])
    assert st.install_snapshot(p2, SnapshotMeta(30, 1, 0, "e")) is False
    assert st.snapshot_meta.last_index == 40
    st.close()


def test_corrupt_snapshot_dat_stops_load(tmp_path):
    st, _ = open_storage(tmp_path)
    p = str(tmp_path / "s")
    write_snapshot_file(p, SnapshotMeta(1, 1, 1, "d"), [("k", "j", 1)])
    st.append(filler(1, 1))
    st.install_snapshot(p, SnapshotMeta(1, 1, 1, "d"))
    st.close()
    with open(tmp_path / "snapshot.dat", "r+b") as f:
        f.seek(-20, os.SEEK_END)
        f.write(b"9")
    with pytest.raises(StorageCorruption, match="snapshot.dat"):
        LogStorage(str(tmp_path)).load()


# ---------------------------------------------------------------------------------------------
# compaction and reset

def install(st, index, term=1):
    p = st.snapshot_path + f".tmp-{index}"
    meta = SnapshotMeta(index, term, 1, "d")
    write_snapshot_file(p, meta, [("k", "j", index)])
    assert st.install_snapshot(p, meta)
    return meta


def test_compact_deletes_covered_segments(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 61):
        st.append(filler(i, 1))
    before = segment_files(tmp_path)
    assert st.compact(30) == 0                 # no snapshot installed yet: nothing goes
    install(st, 30)
    removed = st.compact(30)
    after = segment_files(tmp_path)
    assert removed == len(before) - len(after) > 0
    firsts = [int(f[4:24]) for f in after]
    assert firsts[0] <= 31                     # the straddling segment stays
    st.append(filler(61, 1))
    st.close()
    rec = reload(tmp_path, segment_bytes=300)
    assert [e.index for e in rec.entries] == list(range(31, 62))


def test_compact_clamps_to_installed_snapshot(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 61):
        st.append(filler(i, 1))
    install(st, 20)
    st.compact(59)                             # asks for more than the snapshot covers
    st.close()
    rec = reload(tmp_path, segment_bytes=300)
    assert [e.index for e in rec.entries] == list(range(21, 61))


def test_compact_everything_rolls_a_fresh_segment(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 21):
        st.append(filler(i, 1))
    install(st, 20)
    st.compact(20)
    assert segment_files(tmp_path) == [f"wal-{21:020d}.log"]
    assert st.compact(20) == 0                 # idempotent
    st.append(filler(21, 2))
    st.close()
    rec = reload(tmp_path)
    assert [e.index for e in rec.entries] == [21, 22]


def test_reset_log_after_snapshot_beyond_the_log(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 31):
        st.append(filler(i, 1))
    with pytest.raises(ValueError):
        st.reset_log(51)                       # would leave a gap: snapshot not installed yet
    install(st, 50, term=3)
    st.reset_log(51)
    assert segment_files(tmp_path) == [f"wal-{51:020d}.log"]
    assert st.next_index == 51
    st.append(filler(51, 3, term=3))
    st.close()
    rec = reload(tmp_path)
    assert rec.snapshot_meta.last_index == 50
    assert [e.index for e in rec.entries] == [51, 52, 53]


def test_reset_log_with_conflicting_tail_beyond_snapshot(tmp_path):
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 61):
        st.append(filler(i, 1))
    install(st, 40, term=2)
    st.reset_log(41)
    st.append(filler(41, 2, term=2))
    with pytest.raises(ValueError):
        st.truncate_suffix(40)                 # covered by the snapshot
    st.close()
    rec = reload(tmp_path)
    assert [(e.index, e.term) for e in rec.entries] == [(41, 2), (42, 2)]


def test_load_tolerates_leftovers_below_the_snapshot(tmp_path):
    """What a crash in the middle of reset_log() leaves: old segments that end below the
    snapshot, then the new empty segment (or none yet)."""
    st, _ = open_storage(tmp_path, segment_bytes=300)
    for i in range(1, 21):
        st.append(filler(i, 1))
    install(st, 50)
    st.close()
    st, rec = open_storage(tmp_path, segment_bytes=300)   # no segment at 51 yet
    assert rec.entries == [] and st.next_index == 51
    st.append(filler(51, 1))                   # starts wal-51
    st.close()
    st, rec = open_storage(tmp_path, segment_bytes=300)
    assert [e.index for e in rec.entries] == [51]
    st.compact(50)
    assert segment_files(tmp_path) == [f"wal-{51:020d}.log"]
    st.close()


# ---------------------------------------------------------------------------------------------
# a real crash

CHILD = r"""
import sys, threading
sys.path.insert(0, sys.argv[1])
from kv_storage import LogStorage, ReplicationLog
st = LogStorage(sys.argv[2], fsync=sys.argv[3], segment_bytes=4096)
st.load()
append_lock = threading.Lock()
out_lock = threading.Lock()
nxt = [1]
def work(t):
    while True:
        with append_lock:
            i = nxt[0]
            nxt[0] += 1
            st.append([ReplicationLog(i, 1, "SET", f"k{i}", {"t": t, "pad": "x" * (i % 97)})])
        st.sync()
        with out_lock:
            sys.stdout.write(f"{i}\n")
            sys.stdout.flush()
threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_kill_9_loses_no_acknowledged_entry(tmp_path, policy):
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, HERE, str(data), policy],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fd = proc.stdout.fileno()
    buf = b""
    acked = 0
    try:
        deadline = time.monotonic() + 20
        while acked < 400:
            assert time.monotonic() < deadline, "child too slow"
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"child exited early: {proc.stderr.read().decode()[-2000:]}"
                buf += chunk
                acked = buf.count(b"\n")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    buf += rest
    lines = buf.split(b"\n")[:-1]              # a partial last line was not acknowledged
    acked_ids = {int(x) for x in lines}
    assert len(acked_ids) >= 400
    rec = reload(data, segment_bytes=4096)
    have = [e.index for e in rec.entries]
    assert have == list(range(1, len(have) + 1))
    missing = acked_ids - set(have)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
    assert len(segment_files(data)) > 1       # the crash ran across segment rolls


def test_module_has_no_stray_dependencies():
    """kv_storage is stdlib only (the forked snapshot writer relies on it)."""
    import ast
    tree = ast.parse(open(kv_storage.__file__).read())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    assert mods <= set(sys.stdlib_module_names) | {"__future__"}


# ---------------------------------------------------------------------------------------------
# every crash point of a structural change leaves a loadable log

class _Crash(OSError):
    pass


def _crash_after(monkeypatch, steps):
    """Make the `steps`-th file-changing call (unlink, ftruncate, creating open) fail, as if the
    process died there; earlier calls go through."""
    count = [0]
    real = {"unlink": os.unlink, "ftruncate": os.ftruncate, "open": os.open}

    def tick():
        count[0] += 1
        if count[0] > steps:
            raise _Crash(5, "simulated crash")

    def unlink(p, *a, **k):
        tick()
        return real["unlink"](p, *a, **k)

    def ftruncate(fd, n):
        tick()
        return real["ftruncate"](fd, n)

    def open_(p, flags, *a, **k):
        if flags & os.O_CREAT:
            tick()
        return real["open"](p, flags, *a, **k)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("op", ["truncate", "reset-conflict", "reset-beyond", "compact", "compact-all"])
def test_every_crash_point_loads_cleanly(tmp_path, monkeypatch, op):
    for steps in range(50):
        d = tmp_path / f"{op}-{steps}"
        st, _ = open_storage(d, segment_bytes=300)
        for i in range(1, 41):
            st.append(filler(i, 1))
        st.sync()
        snap = {"truncate": 0, "reset-conflict": 25, "reset-beyond": 60, "compact": 25, "compact-all": 40}[op]
        if snap:
            install(st, snap)
        _crash_after(monkeypatch, steps)
        try:
            if op == "truncate":
                st.truncate_suffix(13)
            elif op.startswith("reset"):
                st.reset_log(snap + 1)
            else:
                st.compact(snap)
            finished = True
        except _Crash:
            finished = False
        monkeypatch.undo()
        st.close()
        rec = reload(d, segment_bytes=300)     # must never raise
        have = [e.index for e in rec.entries]
        assert have == list(range(snap + 1, snap + 1 + len(have)))
        if op == "truncate":
            assert 12 <= len(have) <= 40       # a prefix of the old log, never a gap
        elif op in ("compact", "compact-all"):
            assert have == list(range(snap + 1, 41))      # compaction never loses an entry
        if finished:
            if op == "truncate":
                assert have == list(range(1, 13))
            elif op.startswith("reset"):
                assert have == []
            assert steps > 0                   # at least one crash point was exercised
            break
    else:
        pytest.fail("operation never finished")
    # and the log is usable afterwards
    st, rec = open_storage(d, segment_bytes=300)
    st.append(filler(st.next_index, 2))
    st.close()
