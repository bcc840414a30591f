"""Tests of kv_protocol: framing, parsing, encoding, value conversion, glob.  No server needed.

FrameReader runs over socket.socketpair() (or a scripted fake socket where the exact recv()
boundaries matter).  The hypothesis fuzz tests feed random bytes through FrameReader + parse and
check that only ProtocolError ever escapes and that reading always terminates.  The last test talks
to redis-py through a ten-line dispatcher built from this module (the handshake redis-py >= 8 does).

Run: python -m pytest -q test_protocol.py
"""

from __future__ import annotations

import base64
import json
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kv_protocol as P
from kv_protocol import (BAD_REQUEST, TOO_LARGE, UNKNOWN_COMMAND, Auth, ClientCmd, CommandCmd,
                         ConfigGet, DbSize, Delete, Echo, Exists, Flush, FrameReader, Get, Hello,
                         Info, Internal, Invalid, Keys, Ping, ProtocolError, Quit, Select, Set,
                         Shutdown, Snapshot, Status, glob_match, parse_line, parse_resp)

import importlib  # noqa: E402

import kv_handler  # noqa: E402

importlib.import_module("kv_store_server")   # registers every command in kv_handler.COMMANDS

MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def resp_cmd(*args) -> bytes:
    """Encode a request the way clients do: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class ScriptedSocket:
    """recv() returns the scripted chunks one by one, then b"" (EOF); counts bytes handed out."""

    def __init__(self, chunks, then=b""):
        self.chunks = list(chunks)
        self.then = then
        self.received = 0
        self.calls = 0

    def recv(self, n):
        self.calls += 1
        if self.chunks:
            c = self.chunks.pop(0)
            if isinstance(c, BaseException):
                raise c
            assert len(c) <= n
            self.received += len(c)
            return c
        if isinstance(self.then, BaseException):
            raise self.then
        return self.then


def chunked(data: bytes, size: int) -> list:
    return [data[i:i + size] for i in range(0, len(data), size)]


def read_all(reader: FrameReader, limit: int = 1_000_000) -> list:
    frames = []
    for _ in range(limit):
        f = reader.read_frame()
        if f is None:
            return frames
        frames.append(f)
    raise AssertionError("reader did not reach EOF")


def frames_over_socketpair(data: bytes, **kw) -> list:
    a, b = socket.socketpair()
    try:
        a.settimeout(10)
        t = threading.Thread(target=lambda: (b.sendall(data), b.shutdown(socket.SHUT_WR)))
        t.start()
        frames = read_all(FrameReader(a, **kw))
        t.join(10)
        return frames
    finally:
        a.close()
        b.close()


class CountingSocket:
    """Wraps a real socket and counts what recv() returned."""

    def __init__(self, sock):
        self.sock = sock
        self.received = 0

    def recv(self, n):
        d = self.sock.recv(n)
        self.received += len(d)
        return d


# ------------------------------------------------------------------------------------------------
# FrameReader: line protocol
# ------------------------------------------------------------------------------------------------
def test_line_pipeline_many_frames_in_one_send():
    lines = [b"SET k%d %d" % (i, i) for i in range(2000)]
    frames = frames_over_socketpair(b"\n".join(lines) + b"\n")
    assert [f.proto for f in frames] == ["line"] * 2000
    assert [f.line for f in frames] == lines


def test_line_has_buffered_frame_batches_a_pipeline():
    data = b"PING\nPING\r\nGET a\nGET"
    sock = ScriptedSocket([data], then=AssertionError("has_buffered_frame must not recv"))
    r = FrameReader(sock)
    assert r.has_buffered_frame() is False          # nothing received yet, and no recv() done
    assert sock.calls == 0
    assert r.read_frame().line == b"PING"
    assert r.has_buffered_frame() is True
    assert r.has_buffered_frame() is True           # idempotent
    assert r.read_frame().line == b"PING"
    assert r.has_buffered_frame() is True
    assert r.read_frame().line == b"GET a"
    assert r.has_buffered_frame() is False          # "GET" is partial
    assert sock.calls == 1


def test_line_frame_split_into_single_bytes():
    data = b"SET key some value\r\nGET key\n"
    r = FrameReader(ScriptedSocket(chunked(data, 1)))
    assert [f.line for f in read_all(r)] == [b"SET key some value", b"GET key"]


def test_line_single_bytes_over_real_socket():
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(10)
        data = b"PING\nSET a 1\n"

        def trickle():
            for i in range(len(data)):
                b.send(data[i:i + 1])
            b.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=trickle)
        t.start()
        assert [f.line for f in read_all(FrameReader(a))] == [b"PING", b"SET a 1"]
        t.join(10)


def test_line_blank_lines_and_cr_are_dropped():
    data = b"\n\r\n   \n\t\r\nPING\r\n\n  GET a  \r\nSET k v \r\r\n"
    frames = frames_over_socketpair(data)
    assert [f.line for f in frames] == [b"PING", b"  GET a  ", b"SET k v \r"]
    # parse_line drops a last "\r" too, and keeps the value's inner/trailing spaces
    assert parse_line(frames[2].line) == Set("k", "v ", "json")


def test_line_eof_clean_and_mid_frame():
    r = FrameReader(ScriptedSocket([b"PING\n"]))
    assert r.read_frame().line == b"PING"
    assert r.read_frame() is None
    assert r.eof_mid_frame is False
    r = FrameReader(ScriptedSocket([b"PING\nGET ke"]))
    assert r.read_frame().line == b"PING"
    assert r.read_frame() is None
    assert r.eof_mid_frame is True
    assert FrameReader(ScriptedSocket([])).read_frame() is None


def test_socket_errors_propagate_and_timeouts_lose_nothing():
    r = FrameReader(ScriptedSocket([b"GET a"], then=ConnectionResetError("reset by peer")))
    with pytest.raises(OSError):
        r.read_frame()
    r = FrameReader(ScriptedSocket([b"GET ", TimeoutError("timed out"), b"abc\n"]))
    with pytest.raises(TimeoutError):
        r.read_frame()
    assert r.read_frame().line == b"GET abc"


def test_line_invalid_utf8_is_not_fatal():
    frames = frames_over_socketpair(b"GET \xff\xfe\nPING\n")
    assert len(frames) == 2
    bad = parse_line(frames[0].line)
    assert isinstance(bad, Invalid) and bad.code == BAD_REQUEST
    assert "invalid UTF-8" in bad.message
    assert parse_line(frames[1].line) == Ping()


def test_line_limit_exact_and_over():
    limit = 100
    ok = b"SET k " + b"v" * (limit - 6)
    assert len(ok) == limit
    frames = frames_over_socketpair(ok + b"\nPING\n", max_request_bytes=limit)
    assert [f.line for f in frames] == [ok, b"PING"]
    r = FrameReader(ScriptedSocket([ok + b"vv\n"]), max_request_bytes=limit)
    with pytest.raises(ProtocolError) as ei:
        r.read_frame()
    assert ei.value.code == TOO_LARGE and ei.value.fatal
    with pytest.raises(ProtocolError):              # the connection stays broken
        r.read_frame()


def test_line_20_mib_line_is_refused_without_buffering_it():
    a, b = socket.socketpair()
    counting = CountingSocket(a)
    errors = []

    def writer():
        try:
            b.sendall(b"SET big " + b"x" * (20 * MiB) + b"\n")
        except OSError as e:                        # reader closed on us: expected
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        a.settimeout(10)
        r = FrameReader(counting)
        with pytest.raises(ProtocolError) as ei:
            r.read_frame()
        assert ei.value.code == TOO_LARGE and ei.value.fatal
        assert r.buffered_bytes <= P.DEFAULT_MAX_REQUEST_BYTES + P.RECV_SIZE
        assert counting.received <= P.DEFAULT_MAX_REQUEST_BYTES + P.RECV_SIZE
        assert counting.received < 20 * MiB
    finally:
        a.close()
        t.join(10)
        b.close()
    assert not t.is_alive()


# ------------------------------------------------------------------------------------------------
# FrameReader: RESP2
# ------------------------------------------------------------------------------------------------
def test_resp_pipeline_many_frames_in_one_send():
    reqs = [("SET", "k%d" % i, "v" * (i % 50)) for i in range(3000)]
    data = b"".join(resp_cmd(*q) for q in reqs)
    frames = frames_over_socketpair(data)
    assert [f.proto for f in frames] == ["resp"] * len(reqs)
    assert [f.args for f in frames] == [[x.encode() for x in q] for q in reqs]


def test_resp_frame_split_into_single_bytes():
    data = resp_cmd("SET", "key", "a\r\nb") + resp_cmd("GET", "key") + b"*0\r\n*-1\r\n"
    r = FrameReader(ScriptedSocket(chunked(data, 1)))
    frames = read_all(r)
    assert [f.args for f in frames] == [[b"SET", b"key", b"a\r\nb"], [b"GET", b"key"]]
    assert r.eof_mid_frame is False


def test_resp_has_buffered_frame_partial_bulk():
    data = resp_cmd("GET", "a") + resp_cmd("SET", "b", "x" * 1000)
    sock = ScriptedSocket([data[:60]] + chunked(data[60:], 100))
    r = FrameReader(sock)
    assert r.read_frame().args == [b"GET", b"a"]
    assert r.has_buffered_frame() is False
    assert r.read_frame().args == [b"SET", b"b", b"x" * 1000]


def test_resp_random_chunking_across_compaction():
    """Many frames, recv boundaries everywhere, buffer compacted several times in between."""
    import random
    rng = random.Random(7)
    reqs = [[b"SET", b"k%d" % i, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))]
            for i in range(600)]
    data = b"".join(resp_cmd(*q) for q in reqs)
    chunks, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 7, 100, 4096, 65536])
        chunks.append(data[i:i + n])
        i += n
    frames = read_all(FrameReader(ScriptedSocket(chunks)))
    assert [f.args for f in frames] == reqs


def test_resp_detected_by_first_byte_only():
    frames = frames_over_socketpair(resp_cmd("PING") + b"PING hello\r\n\r\n" + resp_cmd("ECHO", "x"))
    assert [f.args for f in frames] == [[b"PING"], [b"PING", b"hello"], [b"ECHO", b"x"]]
    # a line connection never switches to RESP
    frames = frames_over_socketpair(b"PING\n" + resp_cmd("PING"))
    assert frames[0].proto == "line" and all(f.proto == "line" for f in frames)


def test_resp_null_bulk_reaches_parser_as_invalid():
    frames = frames_over_socketpair(b"*2\r\n$3\r\nGET\r\n$-1\r\n" + resp_cmd("PING"))
    assert frames[0].args == [b"GET", None]
    assert isinstance(parse_resp(frames[0].args), Invalid)
    assert parse_resp(frames[1].args) == Ping()


@pytest.mark.parametrize("data, fragment", [
    (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$', got ':'"),
    (b"*-2\r\n", "invalid multibulk length"),
    (b"*abc\r\n", "invalid multibulk length"),
    (b"*\r\n", "invalid multibulk length"),
    (b"*+1\r\n$4\r\nPING\r\n", "invalid multibulk length"),
    (b"*1\r\n$-5\r\n", "invalid bulk length"),
    (b"*1\r\n$4x\r\nPING\r\n", "invalid bulk length"),
    (b"*1\r\n$1_0\r\n", "invalid bulk length"),
    (b"*1\r\n$ 4\r\nPING\r\n", "invalid bulk length"),
    (b"*1\r\n$4\r\nPINGXX", "expected CRLF"),
    (b"*1" + b"1" * 40 + b"\r\n", "too big mbulk count string"),
    (b"*1\r\n$" + b"9" * 40, "too big bulk count string"),
])
def test_resp_broken_framing_is_fatal_bad_request(data, fragment):
    r = FrameReader(ScriptedSocket([data], then=AssertionError("must not read on")))
    with pytest.raises(ProtocolError) as ei:
        r.read_frame()
    e = ei.value
    assert (e.code, e.fatal) == (BAD_REQUEST, True)
    assert e.message.startswith("Protocol error: ") and fragment in e.message
    assert P.resp_error(e.message).startswith(b"-ERR Protocol error: ")
    with pytest.raises(ProtocolError):
        r.read_frame()


def test_has_buffered_frame_reports_a_pending_protocol_error():
    r = FrameReader(ScriptedSocket([resp_cmd("PING") + b"*1\r\n+X\r\n"]))
    assert r.read_frame().args == [b"PING"]
    assert r.has_buffered_frame() is True           # read_frame() will raise without blocking
    with pytest.raises(ProtocolError):
        r.read_frame()


def test_resp_huge_bulk_length_refused_before_reading_the_data():
    header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000000\r\n"
    sock = ScriptedSocket([header], then=AssertionError("must not wait for the 100 MB"))
    r = FrameReader(sock)
    with pytest.raises(ProtocolError) as ei:
        r.read_frame()
    assert (ei.value.code, ei.value.fatal) == (TOO_LARGE, True)
    assert r.buffered_bytes <= len(header)


def test_resp_huge_bulk_length_over_real_socket_does_not_block():
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(10)                            # writer stays open: a wait would time out
        b.sendall(b"*2\r\n$3\r\nGET\r\n$99999999999999\r\n")
        with pytest.raises(ProtocolError) as ei:
            FrameReader(a).read_frame()
        assert ei.value.code == TOO_LARGE


def test_resp_huge_multibulk_count_is_too_large():
    r = FrameReader(ScriptedSocket([b"*2000000000\r\n"], then=AssertionError("no read")))
    with pytest.raises(ProtocolError) as ei:
        r.read_frame()
    assert (ei.value.code, ei.value.fatal) == (TOO_LARGE, True)
    # the documented bound itself is accepted (frames that small are legal)
    r = FrameReader(ScriptedSocket([b"*%d\r\n" % P.MAX_MULTIBULK_ARGS]))
    assert r.read_frame() is None and r.eof_mid_frame


def test_resp_total_request_size_limit():
    limit = 1000
    ok = resp_cmd("SET", "k", "v" * 972)
    assert len(ok) == limit
    assert frames_over_socketpair(ok, max_request_bytes=limit)[0].args[2] == b"v" * 972
    r = FrameReader(ScriptedSocket([resp_cmd("SET", "k", "v" * 973)]), max_request_bytes=limit)
    with pytest.raises(ProtocolError) as ei:
        r.read_frame()
    assert ei.value.code == TOO_LARGE
    # many small args adding up past the limit
    big = resp_cmd("DEL", *["k%03d" % i for i in range(200)])
    r = FrameReader(ScriptedSocket(chunked(big, 64)), max_request_bytes=limit)
    with pytest.raises(ProtocolError) as ei:
        r.read_frame()
    assert ei.value.code == TOO_LARGE
    assert r.buffered_bytes <= limit + 64


def test_resp_large_bulk_in_many_chunks_is_linear():
    value = bytes(range(256)) * (4 * MiB // 256)
    data = resp_cmd("SET", "big", value)
    frames = read_all(FrameReader(ScriptedSocket(chunked(data, P.RECV_SIZE))))
    assert frames[0].args[2] == value


def test_resp_eof_mid_frame_returns_none():
    r = FrameReader(ScriptedSocket([b"*2\r\n$3\r\nGET\r\n$5\r\nab"]))
    assert r.read_frame() is None and r.eof_mid_frame


# ------------------------------------------------------------------------------------------------
# parse_line
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, want", [
    (b"SET a 1", Set("a", 1, "json")),
    (b"set a 1.5", Set("a", 1.5, "json")),
    (b"SET a hello", Set("a", "hello", "json")),
    (b"SET a hello world  ", Set("a", "hello world  ", "json")),
    (b"SET a    spaced  out", Set("a", "spaced  out", "json")),
    (b'SET a {"x": [1, 2]}', Set("a", {"x": [1, 2]}, "json")),
    (b'SET a "quoted"', Set("a", "quoted", "json")),
    (b"SET a null", Set("a", None, "json")),
    (b"SET a true", Set("a", True, "json")),
    (b"SET a [1, 2", Set("a", "[1, 2", "json")),
    (b"SET a NaN", Set("a", "NaN", "json")),
    (b"SET a 1e999", Set("a", "1e999", "json")),
    (b"SET a 12abc", Set("a", "12abc", "json")),
    (b"SET a " + b"[" * 100000, Set("a", "[" * 100000, "json")),
    (b"SET a v\r", Set("a", "v", "json")),
    ("SET ключ значение".encode(), Set("ключ", "значение", "json")),
    (b"GET a", Get("a")),
    (b"get\ta", Get("a")),
    (b"DELETE a", Delete(["a"])),
    (b"DEL a b", Delete(["a", "b"])),
    (b"EXISTS a b a", Exists(["a", "b", "a"])),
    (b"KEYS", Keys("*")),
    (b"KEYS user:*", Keys("user:*")),
    (b"DBSIZE", DbSize()),
    (b"PING", Ping()),
    (b"PING hello there", Ping("hello there")),
    (b"ECHO hi you", Echo("hi you")),
    (b"STATUS", Status()),
    (b"INFO", Info(None)),
    (b"INFO Replication", Info("replication")),
    (b"AUTH s3cret", Auth("s3cret")),
    (b"AUTH alice s3cret", Auth("s3cret", "alice")),
    (b"SELECT 0", Select(0)),
    (b"QUIT", Quit()),
    (b"SHUTDOWN", Shutdown()),
    (b"SNAPSHOT", Snapshot()),
    (b"flush", Flush()),
    (b'{"type": "HEARTBEAT", "term": 3}', Internal({"type": "HEARTBEAT", "term": 3})),
])
def test_parse_line_commands(line, want):
    assert parse_line(line) == want


@pytest.mark.parametrize("line, code, fragment", [
    (b"SET", BAD_REQUEST, "SET"),
    (b"SET k", BAD_REQUEST, "SET <key> <value>"),
    (b"SET k   ", BAD_REQUEST, "SET"),
    (b"GET", BAD_REQUEST, "GET <key>"),
    (b"GET a b", BAD_REQUEST, "GET"),
    (b"DELETE", BAD_REQUEST, "DELETE"),
    (b"EXISTS", BAD_REQUEST, "EXISTS"),
    (b"KEYS a b", BAD_REQUEST, "KEYS"),
    (b"DBSIZE now", BAD_REQUEST, "DBSIZE"),
    (b"ECHO", BAD_REQUEST, "ECHO"),
    (b"AUTH", BAD_REQUEST, "AUTH"),
    (b"AUTH a b c", BAD_REQUEST, "AUTH"),
    (b"SELECT x", BAD_REQUEST, "DB index"),
    (b"SELECT", BAD_REQUEST, "SELECT"),
    (b"STATUS x", BAD_REQUEST, "STATUS"),
    (b"XYZ a", UNKNOWN_COMMAND, "Unknown command 'XYZ'"),
    (b"CONFIG GET *", UNKNOWN_COMMAND, "Unknown command 'CONFIG'"),
    (b"GET \xff", BAD_REQUEST, "invalid UTF-8"),
    (b"{not json", BAD_REQUEST, "Invalid JSON"),
    (b"{" * 100000, BAD_REQUEST, "Invalid JSON"),
    (b'{"a": "\xff"}', BAD_REQUEST, "Invalid JSON"),
    (b"   ", BAD_REQUEST, "Empty"),
])
def test_parse_line_errors(line, code, fragment):
    got = parse_line(line)
    assert type(got) is Invalid
    assert got.code == code
    assert fragment in got.message


def test_parse_line_key_limits():
    k = "k" * P.KEY_MAX_BYTES
    assert parse_line(b"GET " + k.encode()) == Get(k)
    bad = parse_line(b"GET " + k.encode() + b"k")
    assert isinstance(bad, Invalid) and bad.code == BAD_REQUEST
    wide = "é" * (P.KEY_MAX_BYTES // 2)             # 2 bytes each: exactly the limit
    assert parse_line(("SET " + wide + " 1").encode()) == Set(wide, 1, "json")
    assert isinstance(parse_line(("SET " + wide + "é 1").encode()), Invalid)
    assert isinstance(parse_line(b"DEL a " + b"b" * (P.KEY_MAX_BYTES + 1)), Invalid)


def test_parse_line_accepts_newline_terminated_input():
    assert parse_line(b"GET a\r\n") == Get("a")
    assert parse_line(b"SET a b c\n") == Set("a", "b c", "json")


# ------------------------------------------------------------------------------------------------
# parse_resp
# ------------------------------------------------------------------------------------------------
def R(*a):
    return [x if isinstance(x, bytes) else x.encode() for x in a]


@pytest.mark.parametrize("args, want", [
    (R("SET", "k", "v"), Set("k", b"v", "bytes")),
    (R("set", "k", b"\x00\xff\r\n"), Set("k", b"\x00\xff\r\n", "bytes")),
    (R("SET", "k", "v", "EX", "10"), Set("k", b"v", "bytes", ex_ms=10000)),
    (R("SET", "k", "v", "px", "1500", "NX"), Set("k", b"v", "bytes", ex_ms=1500, nx=True)),
    (R("SET", "k", "v", "XX", "GET"), Set("k", b"v", "bytes", xx=True, get=True)),
    (R("SET", "k", "v", "KEEPTTL"), Set("k", b"v", "bytes", keepttl=True)),
    (R("SET", "k", "v", "EXAT", "2000000000"), Set("k", b"v", "bytes", exat_ms=2000000000000)),
    (R("SET", "k", "v", "PXAT", "5"), Set("k", b"v", "bytes", exat_ms=5)),
    (R("GET", "k"), Get("k")),
    (R("GET", b"\xff\x00k"), Get(b"\xff\x00k".decode("utf-8", "surrogateescape"))),
    (R("DEL", "a", "b"), Delete(["a", "b"])),
    (R("EXISTS", "a"), Exists(["a"])),
    (R("KEYS", "*"), Keys("*")),
    (R("DBSIZE"), DbSize()),
    (R("PING"), Ping()),
    (R("PING", "hi"), Ping("hi")),
    (R("ECHO", "x y"), Echo("x y")),
    (R("INFO"), Info(None)),
    (R("INFO", "REPLICATION"), Info("replication")),
    (R("INFO", "server", "clients"), Info("server clients")),
    (R("AUTH", "pw"), Auth("pw")),
    (R("AUTH", "default", "pw"), Auth("pw", "default")),
    (R("SELECT", "0"), Select(0)),
    (R("QUIT"), Quit()),
    (R("SHUTDOWN"), Shutdown()),
    (R("SHUTDOWN", "nosave"), Shutdown(("NOSAVE",))),
    (R("CONFIG", "GET", "save"), ConfigGet("save")),
    (R("config", "get", "save", "appendonly"), ConfigGet("save", ("appendonly",))),
    (R("CLIENT", "SETINFO", "LIB-NAME", "redis-py"), ClientCmd("SETINFO", ("LIB-NAME", "redis-py"))),
    (R("client", "setname", "me"), ClientCmd("SETNAME", ("me",))),
    (R("CLIENT", "ID"), ClientCmd("ID")),
    (R("COMMAND"), CommandCmd(None)),
    (R("COMMAND", "DOCS"), CommandCmd("DOCS")),
    (R("command", "count"), CommandCmd("COUNT")),
    (R("STATUS"), Status()),
    (R("SNAPSHOT"), Snapshot()),
    (R("FLUSH"), Flush()),
])
def test_parse_resp_commands(args, want):
    assert parse_resp(args) == want


@pytest.mark.parametrize("args, code, message", [
    (R("SET", "k"), BAD_REQUEST, "ERR wrong number of arguments for 'set' command"),
    (R("GET"), BAD_REQUEST, "ERR wrong number of arguments for 'get' command"),
    (R("GET", "a", "b"), BAD_REQUEST, "ERR wrong number of arguments for 'get' command"),
    (R("del"), BAD_REQUEST, "ERR wrong number of arguments for 'del' command"),
    (R("EXISTS"), BAD_REQUEST, "ERR wrong number of arguments for 'exists' command"),
    (R("KEYS"), BAD_REQUEST, "ERR wrong number of arguments for 'keys' command"),
    (R("PING", "a", "b"), BAD_REQUEST, "ERR wrong number of arguments for 'ping' command"),
    (R("ECHO"), BAD_REQUEST, "ERR wrong number of arguments for 'echo' command"),
    (R("AUTH", "a", "b", "c"), BAD_REQUEST, "ERR wrong number of arguments for 'auth' command"),
    (R("DBSIZE", "x"), BAD_REQUEST, "ERR wrong number of arguments for 'dbsize' command"),
    (R("SET", "k", "v", "EX"), BAD_REQUEST, "ERR syntax error"),
    (R("SET", "k", "v", "EX", "ten"), BAD_REQUEST, "ERR value is not an integer or out of range"),
    (R("SET", "k", "v", "EX", "1.5"), BAD_REQUEST, "ERR value is not an integer or out of range"),
    (R("SET", "k", "v", "EX", "99999999999999999999"), BAD_REQUEST,
     "ERR value is not an integer or out of range"),
    (R("SET", "k", "v", "EX", "0"), BAD_REQUEST, "ERR invalid expire time in 'set' command"),
    (R("SET", "k", "v", "PX", "-5"), BAD_REQUEST, "ERR invalid expire time in 'set' command"),
    (R("SET", "k", "v", "EX", "9223372036854775807"), BAD_REQUEST,
     "ERR invalid expire time in 'set' command"),
    (R("SET", "k", "v", "NX", "XX"), BAD_REQUEST, "ERR syntax error"),
    (R("SET", "k", "v", "EX", "1", "PX", "1"), BAD_REQUEST, "ERR syntax error"),
    (R("SET", "k", "v", "EX", "1", "KEEPTTL"), BAD_REQUEST, "ERR syntax error"),
    (R("SET", "k", "v", "BOGUS"), BAD_REQUEST, "ERR syntax error"),
    (R("SELECT", "x"), BAD_REQUEST, "ERR invalid DB index"),
    (R("CONFIG"), BAD_REQUEST, "ERR wrong number of arguments for 'config' command"),
    (R("CONFIG", "GET"), BAD_REQUEST, "ERR wrong number of arguments for 'config|get' command"),
    (R("CONFIG", "SET", "a", "b"), UNKNOWN_COMMAND, "ERR unknown subcommand 'SET'. Try CONFIG HELP."),
    (R("CLIENT"), BAD_REQUEST, "ERR wrong number of arguments for 'client' command"),
    (R("FOO", "a", "b"), UNKNOWN_COMMAND,
     "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "),
    (R("GET", ""), BAD_REQUEST, "ERR empty keys are not allowed"),
    ([], BAD_REQUEST, "ERR empty command"),
])
def test_parse_resp_errors(args, code, message):
    got = parse_resp(args)
    assert type(got) is Invalid
    assert (got.code, got.message) == (code, message)


def test_parse_resp_key_limits_and_binary_keys():
    assert parse_resp([b"GET", b"k" * P.KEY_MAX_BYTES]) == Get("k" * P.KEY_MAX_BYTES)
    bad = parse_resp([b"GET", b"k" * (P.KEY_MAX_BYTES + 1)])
    assert isinstance(bad, Invalid) and bad.code == BAD_REQUEST
    assert isinstance(parse_resp([b"DEL", b"a", b""]), Invalid)
    key = parse_resp([b"GET", b"a b\r\n\xff"]).key        # any bytes over RESP
    assert P.text_to_bytes(key) == b"a b\r\n\xff"


def test_parse_resp_unknown_command_message_is_sanitised():
    got = parse_resp([b"X\r\nY", b"a" * 1000])
    assert got.code == UNKNOWN_COMMAND
    reply = P.resp_error(got.message)
    assert reply.count(b"\r\n") == 1 and reply.endswith(b"\r\n") and len(reply) < 400


def test_parse_resp_hello_is_an_invalid_with_details():
    got = parse_resp(R("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "me"))
    assert isinstance(got, Hello) and isinstance(got, Invalid)
    assert got.code == UNKNOWN_COMMAND and got.message.startswith("ERR unknown command 'HELLO'")
    assert (got.protover, got.username, got.password, got.setname) == (3, "default", "pw", "me")
    assert parse_resp(R("HELLO")).protover is None
    bad = parse_resp(R("HELLO", "three"))
    assert type(bad) is Invalid and bad.code == BAD_REQUEST
    assert type(parse_resp(R("HELLO", "3", "AUTH", "x"))) is Invalid


def test_parse_frame_dispatches_by_protocol():
    assert P.parse_frame(P.Frame("line", b"GET a")) == Get("a")
    assert P.parse_frame(P.Frame("resp", None, [b"GET", b"a"])) == Get("a")


# ------------------------------------------------------------------------------------------------
# encoders
# ------------------------------------------------------------------------------------------------
def test_encode_line_matches_seed_answers():
    assert P.encode_line({"status": "OK", "message": "Key 'a' set"}) == \
        b'{"status": "OK", "message": "Key \'a\' set"}\n'
    assert P.encode_line({"status": "OK", "value": {"x": [1, 2]}}) == \
        b'{"status": "OK", "value": {"x": [1, 2]}}\n'
    assert P.LINE_OK == P.encode_line({"status": "OK"}) == P.line_ok()


def test_encode_line_is_one_ascii_line_even_with_surrogates_and_newlines():
    key = b"k\xff\n".decode("utf-8", "surrogateescape")
    out = P.encode_line({"status": "OK", "value": "a\nb\r\u2028é", "key": key})
    assert out.count(b"\n") == 1 and out.endswith(b"\n")
    assert out.isascii()
    back = json.loads(out)
    assert back["value"] == "a\nb\r\u2028é" and back["key"] == key


def test_line_error_has_definite_flag():
    e = json.loads(P.line_error(P.NOT_FOUND, "Key 'k' not found"))
    assert e == {"status": "ERROR", "code": "NOT_FOUND", "message": "Key 'k' not found",
                 "definite": True}
    e = json.loads(P.line_error(P.TIMEOUT, "timed out", primary="node2"))
    assert e["definite"] is False and e["primary"] == "node2"
    assert P.DEFINITE_CODES == {"NOT_PRIMARY", "BAD_REQUEST", "UNKNOWN_COMMAND", "TOO_LARGE",
                                "AUTH_REQUIRED", "AUTH_FAILED", "NOT_FOUND", "CHANGE_IN_PROGRESS",
                                "DISK_FULL", "TOO_MANY_CLIENTS", "WRONGTYPE"}
    assert not (P.DEFINITE_CODES & P.INDEFINITE_CODES)


def test_resp_encoders():
    assert P.resp_simple("OK") == P.RESP_OK == b"+OK\r\n"
    assert P.resp_simple("a\r\nb") == b"+a b\r\n"
    assert P.resp_error("ERR boom") == b"-ERR boom\r\n"
    assert P.resp_error("READONLY You can't write") == b"-READONLY You can't write\r\n"
    assert P.resp_error("NOAUTH Authentication required.") == b"-NOAUTH Authentication required.\r\n"
    assert P.resp_error("Protocol error: x") == b"-ERR Protocol error: x\r\n"
    assert P.resp_error("A key is missing") == b"-ERR A key is missing\r\n"
    assert P.resp_error("ERR multi\nline") == b"-ERR multi line\r\n"
    assert P.resp_int(42) == b":42\r\n" and P.resp_int(-1) == b":-1\r\n"
    assert P.resp_bulk(b"hi") == b"$2\r\nhi\r\n"
    assert P.resp_bulk(b"") == b"$0\r\n\r\n"
    assert P.resp_bulk(None) == P.RESP_NULL == b"$-1\r\n"
    assert P.resp_bulk(None, proto=3) == P.resp_null(3) == b"_\r\n"
    assert P.resp_bulk("é") == b"$2\r\n\xc3\xa9\r\n"
    big = b"x" * 100000
    assert P.resp_bulk(big) == b"$100000\r\n" + big + b"\r\n"
    assert P.resp_array([b"a", None, 3, [b"b"], "c"]) == \
        b"*5\r\n$1\r\na\r\n$-1\r\n:3\r\n*1\r\n$1\r\nb\r\n$1\r\nc\r\n"
    assert P.resp_array([]) == P.RESP_EMPTY_ARRAY
    assert P.resp_array(None) == b"*-1\r\n"
    assert P.resp_array([P.RespRaw(P.resp_error("ERR x")), P.RespRaw(P.RESP_OK)]) == \
        b"*2\r\n-ERR x\r\n+OK\r\n"
    assert P.resp_map({"save": "", "appendonly": "no"}) == \
        b"*4\r\n$4\r\nsave\r\n$0\r\n\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    assert P.resp_map({"a": 1}, proto=3) == b"%1\r\n$1\r\na\r\n:1\r\n"
    with pytest.raises(TypeError):
        P.resp_array([object()])


def test_resp_hello_reply_shapes():
    r3 = P.resp_hello_reply(3, conn_id=7)
    assert r3.startswith(b"%7\r\n") and b"$5\r\nproto\r\n:3\r\n" in r3
    assert P.resp_hello_reply(2).startswith(b"*14\r\n")


# ------------------------------------------------------------------------------------------------
# value conversion between the protocols
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, kind, want", [
    (b"\x00\xffraw", "bytes", b"\x00\xffraw"),
    ("hello", "json", b"hello"),
    ("é", "json", b"\xc3\xa9"),
    (42, "json", b"42"),
    (1.5, "json", b"1.5"),
    (-0.0, "json", b"-0.0"),
    (True, "json", b"true"),
    (False, "json", b"false"),
    (None, "json", b"null"),
    ({"x": [1, 2]}, "json", b'{"x": [1, 2]}'),
    ({"k": "é"}, "json", '{"k": "é"}'.encode()),
    ([], "json", b"[]"),
    ("", "json", b""),
])
def test_value_to_resp_bytes(value, kind, want):
    assert P.value_to_resp_bytes(value, kind) == want


def test_value_to_resp_bytes_handles_any_str():
    escaped = b"\xff\xfe".decode("utf-8", "surrogateescape")
    assert P.value_to_resp_bytes(escaped, "json") == b"\xff\xfe"
    lone = json.loads('"\\ud800x"')                  # valid JSON, lone surrogate
    assert P.value_to_resp_bytes(lone, "json") == b"\xed\xa0\x80x"
    assert P.value_to_resp_bytes({"s": lone}, "json").startswith(b'{"s": ')


def test_value_to_line_json():
    assert P.value_to_line_json({"a": 1}, "json") == ({"a": 1}, {})
    assert P.value_to_line_json(None, "json") == (None, {})
    assert P.value_to_line_json("é".encode(), "bytes") == ("é", {})
    v, extra = P.value_to_line_json(b"\xff\x00", "bytes")
    assert extra == {"encoding": "base64"} and base64.b64decode(v) == b"\xff\x00"
    reply = {"status": "OK", "value": v}
    reply.update(extra)
    assert json.loads(P.encode_line(reply))["encoding"] == "base64"
    with pytest.raises(TypeError):                  # shared mapping is read-only
        extra["encoding"] = "x"


@given(st.binary(max_size=200))
@settings(database=None, max_examples=200, deadline=None)
def test_bytes_round_trip_through_line_json(data):
    v, extra = P.value_to_line_json(data, "bytes")
    wire = json.loads(P.encode_line({"value": v, **extra}))
    assert P.line_json_to_bytes(wire["value"], wire) == data
    assert P.text_to_bytes(P.bytes_to_text(data)) == data


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                    allow_infinity=False) | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=10)


@given(JSON)
@settings(database=None, max_examples=120, deadline=None)
def test_json_values_round_trip_through_the_line_protocol(value):
    """A JSON value SET on the line protocol and printed back (GET) is the same value; over RESP
    it reads as its JSON text (or the string itself)."""
    text = json.dumps(value)
    cmd = parse_line(b"SET k " + text.encode("utf-8", "surrogatepass"))
    if isinstance(value, str) and value.strip() != value:
        return                                      # leading spaces are the separator
    assert isinstance(cmd, Set)
    assert cmd.value == value
    resp = P.value_to_resp_bytes(cmd.value, "json")
    if isinstance(value, str):
        assert resp == P.text_to_bytes(value)
    else:
        assert json.loads(resp.decode("utf-8", "surrogatepass")) == value


# ------------------------------------------------------------------------------------------------
# glob
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, key, want", [
    ("*", "", True), ("*", "anything", True),
    ("user:*", "user:1", True), ("user:*", "use", False),
    ("*:1", "user:1", True), ("*:1", "user:12", False),
    ("a*b*c", "abc", True), ("a*b*c", "axxbyyc", True), ("a*b*c", "acb", False),
    ("h?llo", "hello", True), ("h?llo", "hllo", False),
    ("h[ae]llo", "hallo", True), ("h[ae]llo", "hillo", False),
    ("h[a-c]llo", "hbllo", True), ("h[a-c]llo", "hdllo", False),
    ("h[c-a]llo", "hbllo", True),                   # reversed range, as Redis
    ("h[^e]llo", "hallo", True), ("h[^e]llo", "hello", False),
    ("h\\*llo", "h*llo", True), ("h\\*llo", "hallo", False),
    ("\\?", "?", True), ("\\?", "a", False),
    ("[\\]]", "]", True), ("[]", "a", False), ("[^]", "a", True),
    ("[abc", "b", True), ("[abc", "d", False),      # unclosed set runs to the end
    ("a\\", "a\\", True),                            # trailing backslash is literal
    ("*a*a*a*a*a*a*a*a*b", "a" * 5000, False),       # no backtracking blow-up
    ("k\udcff*", "k\udcffz", True),
    ("", "", True), ("", "a", False),
])
def test_glob_match(pattern, key, want):
    assert glob_match(pattern, key) is want


def redis_stringmatch(p: str, s: str) -> bool:
    """Literal port of Redis util.c stringmatchlen (nocase=0), the oracle for glob_match."""
    pi, si = 0, 0
    while pi < len(p) and si < len(s):
        c = p[pi]
        if c == "*":
            while pi + 1 < len(p) and p[pi + 1] == "*":
                pi += 1
            if pi + 1 == len(p):
                return True
            for k in range(si, len(s)):
                if redis_stringmatch(p[pi + 1:], s[k:]):
                    return True
            return False
        elif c == "?":
            si += 1
        elif c == "[":
            pi += 1
            neg = pi < len(p) and p[pi] == "^"
            if neg:
                pi += 1
            match = False
            while True:
                if pi < len(p) and p[pi] == "\\" and len(p) - pi >= 2:
                    pi += 1
                    if p[pi] == s[si]:
                        match = True
                elif pi < len(p) and p[pi] == "]":
                    break
                elif pi >= len(p):
                    pi -= 1
                    break
                elif len(p) - pi >= 3 and p[pi + 1] == "-":
                    lo, hi = sorted((p[pi], p[pi + 2]))
                    pi += 2
                    if lo <= s[si] <= hi:
                        match = True
                elif p[pi] == s[si]:
                    match = True
                pi += 1
            if neg:
                match = not match
            if not match:
                return False
            si += 1
        else:
            if c == "\\" and len(p) - pi >= 2:
                pi += 1
            if p[pi] != s[si]:
                return False
            si += 1
        pi += 1
        if si == len(s):
            while pi < len(p) and p[pi] == "*":
                pi += 1
            break
    return pi >= len(p) and si == len(s)


@given(st.text(alphabet="ab*?[]^-\\", max_size=8),
       st.text(alphabet="ab-]^\\*", min_size=1, max_size=8))
@settings(database=None, max_examples=600, deadline=None)
def test_glob_match_agrees_with_redis(pattern, key):
    """Keys are never empty (Redis's matcher says "*" does not match "", glob_match says it does)."""
    assert glob_match(pattern, key) == redis_stringmatch(pattern, key)


# ------------------------------------------------------------------------------------------------
# fuzz: random bytes never raise anything but ProtocolError, and reading always ends
# ------------------------------------------------------------------------------------------------
# Every parse result is something the server dispatches (kv_store_server imports every module
# that registers commands), or a peer's JSON line.
COMMAND_TYPES = (*kv_handler.COMMANDS, Internal)


def drain(data: bytes, max_request_bytes: int) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(data)
        b.close()                                   # EOF after the data: a read must end
        a.settimeout(5)                             # a wrongful wait fails instead of hanging
        r = FrameReader(a, max_request_bytes=max_request_bytes)
        for _ in range(len(data) + 2):
            try:
                frame = r.read_frame()
            except ProtocolError as e:
                assert e.fatal and e.code in (BAD_REQUEST, TOO_LARGE)
                return
            if frame is None:
                return
            assert isinstance(P.parse_frame(frame), COMMAND_TYPES)
            r.has_buffered_frame()
        raise AssertionError("more frames than bytes")


TOKENS = [b"*", b"$", b"\r\n", b"\n", b"\r", b"-1", b"-2", b"0", b"1", b"2", b"3", b"10", b"99999",
          b"SET", b"GET", b"DEL", b"EX", b"PX", b"NX", b"HELLO", b"CONFIG", b"{", b"}", b'"',
          b" ", b"k", b"\xff", b"\x00", b"PING", b"set k v", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"]


@given(st.binary(max_size=600), st.sampled_from([16, 64, 4096, P.DEFAULT_MAX_REQUEST_BYTES]))
@settings(database=None, max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_random_bytes(data, limit):
    drain(data, limit)


@given(st.lists(st.sampled_from(TOKENS), max_size=60), st.sampled_from([16, 4096]),
       st.booleans())
@settings(database=None, max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_protocol_shaped_bytes(tokens, limit, resp):
    drain((b"*" if resp else b"") + b"".join(tokens), limit)


@given(st.lists(st.lists(st.binary(max_size=20), min_size=1, max_size=5), max_size=8),
       st.integers(1, 50))
@settings(database=None, max_examples=150, deadline=None)
def test_fuzz_valid_resp_any_chunking_gives_the_same_frames(reqs, size):
    data = b"".join(resp_cmd(*q) for q in reqs)
    frames = read_all(FrameReader(ScriptedSocket(chunked(data, size))))
    assert [f.args for f in frames] == reqs
    for f in frames:
        assert isinstance(parse_resp(f.args), COMMAND_TYPES)


# ------------------------------------------------------------------------------------------------
# redis-py handshake against a dispatcher made of this module's pieces
# ------------------------------------------------------------------------------------------------
def mini_resp_server(conn: socket.socket, store: dict) -> None:
    """What the TCPServer handler does for RESP, reduced to a dict (and a HELLO 3 answer)."""
    reader, proto, out = FrameReader(conn), 2, []
    try:
        while (frame := reader.read_frame()) is not None:
            cmd = P.parse_frame(frame)
            if isinstance(cmd, Hello):              # check BEFORE Invalid: Hello is an Invalid
                if cmd.protover in (None, 2, 3):
                    proto = cmd.protover or proto
                    out.append(P.resp_hello_reply(proto, conn_id=1))
                else:
                    out.append(P.resp_error("NOPROTO unsupported protocol version"))
            elif isinstance(cmd, Invalid):
                out.append(P.resp_error(cmd.message))
            elif isinstance(cmd, Set):
                store[cmd.key] = (cmd.value, cmd.kind)
                out.append(P.RESP_OK)
            elif isinstance(cmd, Get):
                v = store.get(cmd.key)
                out.append(P.resp_bulk(None if v is None else P.value_to_resp_bytes(*v), proto))
            elif isinstance(cmd, Delete):
                out.append(P.resp_int(sum(store.pop(k, None) is not None for k in cmd.keys)))
            elif isinstance(cmd, Exists):
                out.append(P.resp_int(sum(k in store for k in cmd.keys)))
            elif isinstance(cmd, Keys):
                out.append(P.resp_array([k for k in store if glob_match(cmd.pattern, k)], proto))
            elif isinstance(cmd, DbSize):
                out.append(P.resp_int(len(store)))
            elif isinstance(cmd, Ping):
                out.append(P.RESP_PONG if cmd.message is None else P.resp_bulk(cmd.message))
            elif isinstance(cmd, ConfigGet):
                out.append(P.resp_map({"save": ""} if glob_match(cmd.pattern, "save") else {},
                                      proto))
            elif isinstance(cmd, ClientCmd) and cmd.sub in ("SETINFO", "SETNAME"):
                out.append(P.RESP_OK)
            else:
                out.append(P.resp_error(f"ERR '{type(cmd).__name__}' not supported here"))
            if not reader.has_buffered_frame():
                conn.sendall(b"".join(out))
                out.clear()
    except (ProtocolError, OSError):
        pass
    finally:
        conn.close()


@pytest.mark.parametrize("protocol", [2, 3, None])
def test_redis_py_client_speaks_to_these_encoders(protocol):
    redis = pytest.importorskip("redis")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    store: dict = {"j": (42, "json"), "n": (None, "json")}

    def accept_one():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        mini_resp_server(conn, store)

    t = threading.Thread(target=accept_one, daemon=True)
    t.start()
    kw = {} if protocol is None else {"protocol": protocol}
    client = redis.Redis(host="127.0.0.1", port=srv.getsockname()[1], socket_timeout=10, **kw)
    try:
        assert client.ping() is True
        assert client.set("k", b"\x00\xff") is True
        assert client.get("k") == b"\x00\xff"
        assert client.get("missing") is None
        assert client.get("j") == b"42" and client.get("n") == b"null"
        assert client.exists("k", "missing") == 1
        assert sorted(client.keys("*")) == [b"j", b"k", b"n"]
        assert client.dbsize() == 3
        assert client.delete("k", "missing") == 1
        assert client.config_get("save") == {"save": ""}
        pipe = client.pipeline(transaction=False)
        for i in range(50):
            pipe.set(f"p{i}", i)
        pipe.get("p49")
        assert pipe.execute()[-1] == b"49"
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command("NOSUCHCMD", "x")
    finally:
        client.close()
        srv.close()
        t.join(10)


@pytest.mark.parametrize("line,want", [
    (b"CLUSTER ADD node4 127.0.0.1:7004", P.ClusterCmd("ADD", "node4", "127.0.0.1:7004")),
    (b"cluster remove node2", P.ClusterCmd("REMOVE", "node2")),
    (b"CLUSTER MEMBERS", P.ClusterCmd("MEMBERS")),
])
def test_cluster_command_parses_on_both_protocols(line, want):
    """CLUSTER ADD/REMOVE/MEMBERS (membership changes) parse the same on the line protocol and RESP."""
    assert P.parse_line(line) == want
    assert P.parse_resp(line.split()) == want


@pytest.mark.parametrize("line,why", [
    (b"CLUSTER", "Wrong number of arguments"), (b"CLUSTER ADD node4", "Wrong number of arguments"),
    (b"CLUSTER REMOVE", "Wrong number of arguments"), (b"CLUSTER INFO", "Unknown CLUSTER subcommand"),
    (b"CLUSTER ADD no#de 127.0.0.1:1", "Invalid node id"), (b"CLUSTER ADD n4 localhost", "Invalid address"),
    (b"CLUSTER ADD n4 h:70000", "Invalid address"), (b"CLUSTER MEMBERS x", "Wrong number of arguments"),
])
def test_cluster_command_bad_input_is_a_definite_bad_request(line, why):
    cmd = P.parse_line(line)
    assert isinstance(cmd, P.Invalid) and cmd.code == P.BAD_REQUEST and why in cmd.message
    r = P.parse_resp(line.split())
    assert isinstance(r, P.Invalid) and r.message.startswith("ERR ") and why in r.message
