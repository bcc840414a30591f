"""Client protocol of KV Store: bytes -> frames -> typed commands -> reply bytes.

This module owns framing, parsing and encoding of the two protocols spoken on a node's port
(DESIGN.md §3).  It never owns a socket's lifetime and never touches the store: the TCPServer
handler reads frames, turns them into commands, applies them and encodes the answer.

Layout (reading order):
    error codes     OK, NOT_PRIMARY, NOT_FOUND, BAD_REQUEST, ... and DEFINITE_CODES
    ProtocolError   a framing violation (fatal: reply once, then close) or a request-level error
    Frame           one request as framed: a line (line protocol) or a list of bulk args (RESP2)
    FrameReader     socket -> Frame, enforcing max_request_bytes; detects the protocol by first byte
    data commands   (issue 9, one block before the encoders) DataCommand + RelMs for every Redis
                    data command beyond the fast-path classes, Multi, Exec, Discard, Watch,
                    Unwatch, Queued; parsers shared by both protocols; is_queue_time_error
    commands        Set, Get, Delete, Exists, Keys, DbSize, Ping, Echo, Status, Info, Auth, Select,
                    Quit, Shutdown, Snapshot, Flush, Transfer, ClusterCmd, ConfigGet, ClientCmd, CommandCmd, Internal,
                    Invalid (+ Hello, a subclass of Invalid, see below)
    ecosystem group Sentinel, Role, ReadOnly, ReadWrite, Subscribe, Unsubscribe (one section of
                    their own, registered into the command tables there)
    parse_line      line-protocol line -> command          (never raises)
    parse_resp      RESP argument list -> command          (never raises)
    parse_frame     Frame -> command, by frame.proto
    encoders        encode_line, line_ok, line_error;  resp_simple, resp_error, resp_int, resp_bulk,
                    resp_array, resp_map, resp_null, RespRaw, resp_hello_reply
    replies         CommandError (a failed request), Reply (a command's answer before encoding),
                    Simple; encode_reply_line and encode_reply_resp: the one encoder per protocol
    values          value_to_resp_bytes, value_to_line_json, text_to_bytes, bytes_to_text
    glob            glob_match, compile_glob (Redis KEYS semantics, linear time, no regex blow-up)

The read path of one connection:

    reader = FrameReader(sock, max_request_bytes)
    while (frame := reader.read_frame()) is not None:        # ProtocolError(fatal) -> reply, close
        cmd = parse_frame(frame)                              # Invalid(...) -> error reply, go on
        ... apply, encode with encode_line / resp_* ...
        if not reader.has_buffered_frame(): sock.sendall(batched replies)

Conventions callers rely on:
  * Keys are `str`.  Line-protocol keys are strict UTF-8; RESP keys are any bytes decoded with
    errors="surrogateescape" (text_to_bytes() gives the original bytes back).  Every text field of a
    RESP command (PING/ECHO message, KEYS pattern, AUTH secret, ...) is decoded the same way.
  * Values: kind "json" (line protocol SET; any JSON value, None == JSON null) or kind "bytes"
    (RESP SET; raw bytes).  value_to_resp_bytes / value_to_line_json read either kind on either
    protocol (DESIGN §3.2: a JSON number 42 reads as b"42" over RESP; JSON null reads as b"null",
    never as a RESP nil, so a RESP client too can tell a stored null from a missing key).
  * Invalid.message: from parse_resp it is a complete Redis error line ("ERR ...") ready for
    resp_error(); from parse_line it is human text for the JSON "message" field.
    ProtocolError.message has no "ERR " prefix ("Protocol error: ..."); resp_error() adds "ERR "
    to any message whose first word is not an upper-case error code, so resp_error(e.message)
    is right for both.

Deviations from INTERFACES.md (additions only; every name in the spec exists as specified):
  * HELLO over RESP parses to `Hello`, a subclass of `Invalid` whose code/message are the Redis 5
    answer ("ERR unknown command 'HELLO', ..."), so a handler that treats it as Invalid behaves like
    Redis 5.  Beware: redis-py >= 8.0 defaults to protocol=3 and does NOT fall back to RESP2 when
    HELLO fails (redis/redis-py#4089) - with the Redis 5 answer, `redis.Redis()` cannot connect
    unless the client passes protocol=2.  A handler that checks isinstance(cmd, Hello) BEFORE
    Invalid can instead answer `resp_hello_reply(...)` for protover 3 and then encode nulls/maps
    for that connection with proto=3 (resp_null/resp_bulk/resp_array/resp_map take `proto`):
    redis-py's RESP3 parser reads every other RESP2 reply unchanged.  test_protocol.py shows both.
  * Set has extra fields `keepttl` and `exat_ms` (EXAT/PXAT, absolute unix ms); Shutdown has
    `options` (NOSAVE/SAVE/NOW/FORCE/ABORT as given); ConfigGet has `more` (further patterns);
    ClientCmd.args / CommandCmd.args are tuples of str.
  * Frame.args may contain None for a RESP null bulk ($-1); parse_resp answers it with Invalid.
  * A RESP connection also accepts inline commands (a line not starting with '*', split on
    whitespace, no quoting), as Redis does.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Callable

__all__ = [
    "OK", "NOT_PRIMARY", "NOT_FOUND", "BAD_REQUEST", "UNKNOWN_COMMAND", "TOO_LARGE", "NO_QUORUM",
    "AUTH_REQUIRED", "AUTH_FAILED", "TIMEOUT", "CHANGE_IN_PROGRESS", "DISK_FULL", "TOO_MANY_CLIENTS",
    "WRONGTYPE",
    "DEFINITE_CODES", "INDEFINITE_CODES", "ERROR_CODES",
    "KEY_MAX_BYTES", "DEFAULT_MAX_REQUEST_BYTES", "MAX_MULTIBULK_ARGS", "RECV_SIZE",
    "ProtocolError", "Frame", "FrameReader",
    "Set", "Get", "Delete", "Exists", "Keys", "DbSize", "Ping", "Echo", "Status", "Info", "Auth",
    "Select", "Quit", "Shutdown", "Snapshot", "Flush", "ConfigGet", "ClientCmd", "CommandCmd",
    "Internal", "Invalid", "Hello", "Transfer", "ClusterCmd",
    "parse_line", "parse_resp", "parse_frame",
    "encode_line", "line_ok", "line_error", "LINE_OK",
    "resp_simple", "resp_error", "resp_int", "resp_bulk", "resp_array", "resp_map", "resp_null",
    "resp_hello_reply", "RespRaw", "RESP_OK", "RESP_PONG", "RESP_NULL", "RESP3_NULL",
    "RESP_ZERO", "RESP_ONE", "RESP_EMPTY_ARRAY",
    "RESP_NULL_ARRAY", "value_to_resp_bytes", "value_to_line_json", "line_json_to_bytes",
    "text_to_bytes", "bytes_to_text",
    "glob_match", "compile_glob",
    "CommandError", "Reply", "Simple", "REPLY_OK", "encode_reply_line", "encode_reply_resp",
    "encode_resp_value",
]

# --------------------------------------------------------------------------------------------
# Error codes (DESIGN §3.1).  Definite: the operation did not happen, a client may re-send.
# Indefinite: it may have happened (TIMEOUT; NO_QUORUM once the entry was appended).
# --------------------------------------------------------------------------------------------
OK = "OK"
NOT_PRIMARY = "NOT_PRIMARY"
NOT_FOUND = "NOT_FOUND"
BAD_REQUEST = "BAD_REQUEST"
UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
TOO_LARGE = "TOO_LARGE"
NO_QUORUM = "NO_QUORUM"
AUTH_REQUIRED = "AUTH_REQUIRED"
AUTH_FAILED = "AUTH_FAILED"
TIMEOUT = "TIMEOUT"
CHANGE_IN_PROGRESS = "CHANGE_IN_PROGRESS"   # a membership change was refused for now: retry later
DISK_FULL = "DISK_FULL"     # the node cannot persist (ENOSPC): the write was refused before append
TOO_MANY_CLIENTS = "TOO_MANY_CLIENTS"       # past --max-clients: answered once, connection closed
WRONGTYPE = "WRONGTYPE"     # the key holds a value of another type (hash, list, ...): nothing done

DEFINITE_CODES = frozenset({NOT_PRIMARY, BAD_REQUEST, UNKNOWN_COMMAND, TOO_LARGE, AUTH_REQUIRED,
                            AUTH_FAILED, NOT_FOUND, CHANGE_IN_PROGRESS, DISK_FULL, TOO_MANY_CLIENTS,
                            WRONGTYPE})
INDEFINITE_CODES = frozenset({TIMEOUT, NO_QUORUM})
ERROR_CODES = DEFINITE_CODES | INDEFINITE_CODES

KEY_MAX_BYTES = 64 * 1024                      # DESIGN §3.1: keys at most 64 KiB
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024   # --max-request-bytes default
MAX_MULTIBULK_ARGS = 1024 * 1024               # bound on a RESP array's element count
RECV_SIZE = 65536                              # one recv(); the reader buffers <= limit + this
_MAX_LEN_DIGITS = 20                           # "$" / "*" header: sign + up to 19 digits
_COMPACT_AT = 256 * 1024                       # consumed bytes before the buffer is compacted
_SMALL_COPY = 65536                            # below: bytes(buf[a:b]); above: via memoryview


class ProtocolError(Exception):
    """A request that cannot be served as framed.

    `.code` is one of the error codes, `.message` human text without an "ERR " prefix
    ("Protocol error: ..." for broken RESP, like Redis).  `.fatal` True means the byte stream can
    no longer be trusted (TOO_LARGE, broken RESP framing): the handler sends one error reply and
    closes the connection.  FrameReader only raises fatal ones.
    """

    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r}, fatal={self.fatal})"


# --------------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Frame:
    """One framed request.

    proto == "line": `line` is the request line as bytes, without "\\n" and without a trailing
    "\\r"; never blank (blank lines are skipped by the reader).  `args` is None.
    proto == "resp": `args` is a non-empty list of bulk strings (bytes; None for a null bulk
    "$-1", which parse_resp rejects).  `line` is None.
    """

    proto: str
    line: bytes | None = None
    args: list | None = None


def _bad(msg: str) -> ProtocolError:
    return ProtocolError(BAD_REQUEST, "Protocol error: " + msg, fatal=True)


def _too_large(what: str, limit: int) -> ProtocolError:
    return ProtocolError(TOO_LARGE, f"{what} exceeds the limit of {limit} bytes", fatal=True)


class FrameReader:
    """Reads frames from one connected socket.

    What callers use: `read_frame()`, `has_buffered_frame()`, `proto` (None until the first byte
    arrived, then "line" or "resp" for the whole connection), `buffered_bytes`.

    Invariants:
      * The protocol is fixed by the first byte of the connection: b"*" -> RESP2, else lines.
      * Frames come out in arrival order; a frame split over any number of recv() calls (down to
        one byte each) is reassembled; many frames in one recv() are returned one by one without
        another recv().
      * Memory: the unconsumed buffer never exceeds max_request_bytes + RECV_SIZE (plus one
        partial RESP length header).  A line longer than the limit, a RESP bulk or array whose
        announced size exceeds it raise ProtocolError(TOO_LARGE, fatal=True) as soon as that is
        known, without reading the rest.  A RESP array announcing more than MAX_MULTIBULK_ARGS
        elements is TOO_LARGE as well.
      * Broken RESP (element not starting with '$', negative lengths other than -1, non-numeric
        or overlong length headers, bulk data not followed by CRLF) raises
        ProtocolError(BAD_REQUEST, "Protocol error: ...", fatal=True).  After a fatal error every
        further read_frame() raises the same error.
      * recv() returning b"" (EOF), clean or in the middle of a frame, makes read_frame() return
        None (`eof_mid_frame` tells which).  OSError from recv (reset, timeout) propagates; after a
        timeout nothing is lost and read_frame() may be called again.
      * Frames are found with bytearray.find from an offset; the consumed prefix is dropped only
        when it is large or everything was consumed, so cost is linear in the bytes received.
      * Not thread-safe: one reader per connection, used by the connection's handler thread.
    """

    __slots__ = ("_recv", "max_request_bytes", "proto", "_buf", "_pos", "_scan", "_eof",
                 "_pending", "_broken", "_r_args", "_r_left", "_r_off", "_r_start", "_r_need",
                 "eof_mid_frame")

    def __init__(self, sock, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        if max_request_bytes < 1:
            raise ValueError("max_request_bytes must be >= 1")
        self._recv = sock.recv
        self.max_request_bytes = int(max_request_bytes)
        self.proto: str | None = None
        self._buf = bytearray()
        self._pos = 0            # start of the unconsumed bytes (start of the current frame)
        self._scan = 0           # where the next b"\n" search resumes (line / inline)
        self._eof = False
        self._pending: Frame | ProtocolError | None = None   # found by has_buffered_frame()
        self._broken: ProtocolError | None = None
        # RESP array being assembled across recv() calls (None = at a frame boundary)
        self._r_args: list | None = None
        self._r_left = 0         # elements still missing
        self._r_off = 0          # buffer offset of the next element's '$'
        self._r_start = 0        # buffer offset of the frame's '*'
        self._r_need = 0         # do not retry before the buffer holds this many bytes
        self.eof_mid_frame = False

    # -- public ---------------------------------------------------------------------------
    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def read_frame(self) -> Frame | None:
        """Next frame, blocking on recv() as needed; None at EOF.  Raises fatal ProtocolError."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            if isinstance(pending, ProtocolError):
                self._broken = pending
                raise pending
            return pending
        if self._broken is not None:
            raise self._broken
        while True:
            if self._pos < len(self._buf) or self._r_args is not None:   # else nothing to parse
                try:
                    if self.proto == "line":
                        frame = self._next_line()
                    elif self.proto == "resp":
                        frame = self._next_resp()
                    else:
                        frame = None
                except ProtocolError as e:
                    self._broken = self._forget(e)
                    raise
                if frame is not None:
                    return frame
            if self._eof:
                self.eof_mid_frame = self._r_args is not None or len(self._buf) > self._pos
                return None
            self._fill()

    def has_buffered_frame(self) -> bool:
        """True if read_frame() will return (or raise) without blocking on the socket.

        Lets a handler batch the replies of a pipeline into one sendall().  Never calls recv().
        """
        if self._pending is not None or self._broken is not None:
            return True
        if self.proto is None or self._pos == len(self._buf) and self._r_args is None:
            return False
        try:
            frame = self._next_line() if self.proto == "line" else self._next_resp()
        except ProtocolError as e:
            self._pending = self._forget(e)
            return True
        if frame is None:
            return False
        self._pending = frame
        return True

    def _forget(self, e: ProtocolError) -> ProtocolError:
        """A stored copy of e without its traceback, and the buffer dropped.  Keeping e itself
        would form a cycle (reader -> e -> traceback -> frame -> reader) that pins a buffer of up
        to max_request_bytes until a full GC: one leak per oversized request."""
        self._buf = bytearray()
        self._pos = 0
        return ProtocolError(e.code, e.message, e.fatal)

    # -- buffer management ------------------------------------------------------------------
    def _fill(self) -> None:
        buf = self._buf
        pos = self._pos
        if pos:
            if pos == len(buf):
                buf.clear()
                if self._r_args is None:   # at a frame boundary: nothing else points into buf
                    self._pos = self._scan = 0
                else:
                    self._shift(pos)
            elif pos >= _COMPACT_AT:
                del buf[:pos]
                self._shift(pos)
        data = self._recv(RECV_SIZE)
        if not data:
            self._eof = True
            return
        if self.proto is None:
            self.proto = "resp" if data[0] == 0x2A else "line"
        buf += data

    def _shift(self, n: int) -> None:
        self._pos -= n
        self._scan = max(0, self._scan - n)
        if self._r_args is not None:
            self._r_off -= n
            self._r_start -= n
            self._r_need = max(0, self._r_need - n)

    def _take(self, a: int, b: int) -> bytes:
        if b - a < _SMALL_COPY:
            return bytes(self._buf[a:b])
        with memoryview(self._buf) as mv:
            return mv[a:b].tobytes()

    # -- line protocol (and RESP inline commands) --------------------------------------------
    def _next_line(self) -> Frame | None:
        while True:
            line = self._one_line()
            if line is None:
                return None
            if line:
                return Frame("line", line)

    def _one_line(self) -> bytes | None:
        """Next complete line (without "\\n" and a trailing "\\r"); b"" for a blank line;
        None if no complete line is buffered."""
        buf = self._buf
        pos = self._pos
        limit = self.max_request_bytes
        nl = buf.find(b"\n", self._scan)
        if nl < 0:
            end = len(buf)
            self._scan = end
            if end - pos > limit:
                raise _too_large("request line", limit)
            return None
        self._pos = self._scan = nl + 1
        if nl - pos > limit:
            raise _too_large("request line", limit)
        e = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
        if e == pos:
            return b""
        line = self._take(pos, e)
        return b"" if line.isspace() else line

    # -- RESP2 --------------------------------------------------------------------------------
    def _length(self, a: int, b: int, what: str) -> int:
        """Parse the decimal length in buf[a:b] (strict: digits, or -digits)."""
        s = bytes(self._buf[a:b])
        if s.isdigit():
            return int(s)
        if s[:1] == b"-" and s[1:].isdigit():
            n = int(s)
            if n == -1:
                return -1
            raise _bad(f"invalid {what} length")
        raise _bad(f"invalid {what} length")

    def _next_resp(self) -> Frame | None:
        buf = self._buf
        end = len(buf)
        limit = self.max_request_bytes
        if self._r_args is None:
            pos = self._pos
            if pos < end and buf[pos] == 0x2A:
                # Fast path: a whole small, well-formed frame is buffered (the common case).
                # Anything else - partial, large, malformed - falls through to the general parser
                # below, which keeps every error message and limit.
                h = buf.find(b"\r\n", pos + 1, pos + 5)
                if h > 0:
                    s = buf[pos + 1:h]
                    if s.isdigit():
                        left = int(s)
                        off = h + 2
                        args = []
                        while left:
                            if off >= end or buf[off] != 0x24:
                                break
                            h = buf.find(b"\r\n", off + 1, off + 8)
                            if h < 0:
                                break
                            s = buf[off + 1:h]
                            if not s.isdigit():
                                break
                            off = h + 2 + int(s)
                            if off + 2 > end or buf[off] != 0x0D or buf[off + 1] != 0x0A:
                                break
                            args.append(bytes(buf[h + 2:off]))
                            off += 2
                            left -= 1
                        else:
                            if args and off - pos <= limit:
                                self._pos = self._scan = off
                                return Frame("resp", None, args)
            while True:                                    # at a frame boundary
                pos = self._pos
                if pos >= end:
                    return None
                if buf[pos] != 0x2A:                       # not '*': inline command
                    if self._scan < pos:
                        self._scan = pos
                    line = self._one_line()
                    if line is None:
                        return None
                    args = line.split()
                    if args:
                        return Frame("resp", None, args)
                    continue                               # blank line
                h = buf.find(b"\r\n", pos + 1, pos + 3 + _MAX_LEN_DIGITS)
                if h < 0:
                    if end - pos >= 3 + _MAX_LEN_DIGITS:
                        raise _bad("too big mbulk count string")
                    return None
                s = buf[pos + 1:h]
                n = int(s) if s.isdigit() else self._length(pos + 1, h, "multibulk")
                if n > MAX_MULTIBULK_ARGS:
                    raise ProtocolError(TOO_LARGE, f"Protocol error: invalid multibulk length "
                                        f"({n} arguments, the limit is {MAX_MULTIBULK_ARGS})",
                                        fatal=True)
                if n <= 0:                                 # *0 and *-1 (null): nothing to do
                    self._pos = self._scan = h + 2
                    continue
                args: list = []
                left = n
                off = h + 2
                start = pos
                break
        else:
            if end < self._r_need:
                return None
            args = self._r_args
            left = self._r_left
            off = self._r_off
            start = self._r_start
        need = 0
        while left:
            if off >= end:
                break
            if buf[off] != 0x24:                           # '$'
                raise _bad(f"expected '$', got '{chr(buf[off])}'")
            h = buf.find(b"\r\n", off + 1, off + 3 + _MAX_LEN_DIGITS)
            if h < 0:
                if end - off >= 3 + _MAX_LEN_DIGITS:
                    raise _bad("too big bulk count string")
                break
            s = buf[off + 1:h]
            if s.isdigit():
                n = int(s)
            elif self._length(off + 1, h, "bulk") < 0:     # $-1: null bulk (else raises)
                args.append(None)
                off = h + 2
                left -= 1
                continue
            data_end = h + 2 + n
            if data_end + 2 - start > limit:
                raise _too_large("request", limit)
            if data_end + 2 > end:
                need = data_end + 2                        # wait for the whole bulk
                break
            if buf[data_end] != 0x0D or buf[data_end + 1] != 0x0A:
                raise _bad("expected CRLF after bulk string")
            if n < _SMALL_COPY:
                args.append(bytes(buf[h + 2:data_end]))
            else:
                args.append(self._take(h + 2, data_end))
            off = data_end + 2
            left -= 1
        else:
            self._r_args = None
            self._pos = self._scan = off
            return Frame("resp", None, args)
        # incomplete: remember where we are; the bytes stay buffered from the frame start
        self._r_args = args
        self._r_left = left
        self._r_off = off
        self._r_start = start
        self._r_need = need
        return None


# --------------------------------------------------------------------------------------------
# Commands.  Shared by both protocols; the handler tells them apart only to encode the answer.
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Set:
    """SET key value.  kind "json" (line protocol: value is any JSON value, None == null) or
    "bytes" (RESP: raw bytes).  ex_ms: relative expiry in ms (EX*1000 or PX), exat_ms: absolute
    unix time in ms (EXAT*1000 or PXAT); at most one of ex_ms/exat_ms/keepttl is set; nx and xx are
    never both True.  get: return the old value (SET ... GET).  Which options are supported is the
    server's decision."""

    key: str
    value: Any
    kind: str
    ex_ms: int | None = None
    nx: bool = False
    xx: bool = False
    get: bool = False
    keepttl: bool = False
    exat_ms: int | None = None


@dataclass(slots=True)
class Get:
    """GET key."""
    key: str


@dataclass(slots=True)
class Delete:
    """DELETE/DEL key [key ...]: keys is a non-empty list of valid keys."""
    keys: list


@dataclass(slots=True)
class Exists:
    """EXISTS key [key ...]: keys is a non-empty list (duplicates count twice, as in Redis)."""
    keys: list


@dataclass(slots=True)
class Keys:
    """KEYS [pattern]: pattern is a Redis glob (see glob_match), "*" when omitted (line only)."""
    pattern: str = "*"


@dataclass(slots=True)
class DbSize:
    """DBSIZE."""


@dataclass(slots=True)
class Ping:
    """PING [message]: message None -> "PONG"."""
    message: str | None = None


@dataclass(slots=True)
class Echo:
    """ECHO message."""
    message: str


@dataclass(slots=True)
class Status:
    """STATUS (node status, DESIGN §3.1)."""


@dataclass(slots=True)
class Info:
    """INFO [section ...]: section lower-cased; several sections joined by one space; None = all."""
    section: str | None = None


@dataclass(slots=True)
class Auth:
    """AUTH [username] password."""
    password: str
    username: str | None = None


@dataclass(slots=True)
class Select:
    """SELECT db (an int; the server accepts only 0)."""
    db: int


@dataclass(slots=True)
class Quit:
    """QUIT: answer OK, then close."""


@dataclass(slots=True)
class Shutdown:
    """SHUTDOWN [options]: options are upper-cased words as given (RESP NOSAVE/SAVE/NOW/...)."""
    options: tuple = ()


@dataclass(slots=True)
class Snapshot:
    """SNAPSHOT: take a snapshot and compact the log now."""


@dataclass(slots=True)
class Flush:
    """FLUSH: force the write-ahead log to disk now (never deletes data)."""


@dataclass(slots=True)
class Transfer:
    """TRANSFER [node-id]: planned leadership transfer to node-id (or the most caught-up
    secondary); answered on the primary once the new primary is elected."""
    target: str | None = None


@dataclass(slots=True)
class ClusterCmd:
    """CLUSTER ADD <node-id> <host:port> | CLUSTER REMOVE <node-id> | CLUSTER MEMBERS:
    membership changes, on the primary (sub is upper-cased)."""
    sub: str
    node_id: str | None = None
    addr: str | None = None


CLUSTER_USAGE = "CLUSTER ADD <node-id> <host:port> | CLUSTER REMOVE <node-id> | CLUSTER MEMBERS"
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def cluster_command(args: list, err: str = "") -> ClusterCmd:
    """The CLUSTER command from its text arguments (after the name); raises _Reject with a
    readable reason (prefixed with `err`, "ERR " for RESP)."""
    if not args:
        raise _Reject(BAD_REQUEST, f"{err}Wrong number of arguments for 'CLUSTER': usage {CLUSTER_USAGE}")
    sub = args[0].upper()
    want = {"ADD": 3, "REMOVE": 2, "MEMBERS": 1}.get(sub)
    if want is None:
        raise _Reject(BAD_REQUEST, f"{err}Unknown CLUSTER subcommand '{_shorten(args[0])}': usage {CLUSTER_USAGE}")
    if len(args) != want:
        raise _Reject(BAD_REQUEST, f"{err}Wrong number of arguments for 'CLUSTER {sub}': usage {CLUSTER_USAGE}")
    if want == 1:
        return ClusterCmd(sub)
    node_id = args[1]
    if not _NODE_ID_RE.match(node_id):
        raise _Reject(BAD_REQUEST, f"{err}Invalid node id '{_shorten(node_id)}': 1-64 of A-Z a-z 0-9 _ . -")
    if want == 2:
        return ClusterCmd(sub, node_id)
    host, _, port = args[2].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise _Reject(BAD_REQUEST, f"{err}Invalid address '{_shorten(args[2])}': expected host:port")
    return ClusterCmd(sub, node_id, f"{host}:{int(port)}")


@dataclass(slots=True)
class ConfigGet:
    """CONFIG GET pattern [pattern ...] (RESP only): `more` holds the further patterns."""
    pattern: str
    more: tuple = ()


@dataclass(slots=True)
class ClientCmd:
    """CLIENT <sub> [args] (RESP only): sub upper-cased (SETINFO, SETNAME, GETNAME, ID, ...)."""
    sub: str
    args: tuple = ()


@dataclass(slots=True)
class CommandCmd:
    """COMMAND [sub [args]] (RESP only): sub upper-cased (DOCS, COUNT, INFO, ...) or None."""
    sub: str | None = None
    args: tuple = ()


@dataclass(slots=True)
class Internal:
    """A line-protocol line starting with "{": a JSON object from a peer (REPLICATE, ...)."""
    message: dict


@dataclass(slots=True)
class Invalid:
    """A request that was framed fine but cannot be run: answer one error, the connection goes on.

    code: BAD_REQUEST or UNKNOWN_COMMAND.  message: see the module docstring (RESP: "ERR ...").
    """
    code: str
    message: str


@dataclass(slots=True)
class Hello(Invalid):
    """HELLO [protover [AUTH username password] [SETNAME name]] over RESP.

    It IS an Invalid carrying the Redis 5 answer (UNKNOWN_COMMAND, "ERR unknown command 'HELLO'
    ..."), so a handler unaware of HELLO answers like Redis 5.  A handler that supports RESP3
    checks for Hello first and uses protover/username/password/setname.
    """
    protover: int | None = None
    username: str | None = None
    password: str | None = None
    setname: str | None = None


class _Reject(Exception):
    """Internal: a parse helper found the request invalid; carries the Invalid to return."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.invalid = Invalid(code, message)


# --------------------------------------------------------------------------------------------
# Line protocol parsing
# --------------------------------------------------------------------------------------------
def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(s: str) -> float:
    f = float(s)
    if f in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return f


# SET values: strict JSON only (no NaN/Infinity, no overflowing floats -> stored as raw strings)
_value_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_JSON_START = frozenset('{["-0123456789tfn \t"')


def _line_value(raw: str) -> Any:
    """SET value: the JSON value if `raw` parses as JSON, else the raw string."""
    if raw[0] not in _JSON_START:
        return raw
    try:
        return _value_decoder.decode(raw)
    except (ValueError, RecursionError):
        return raw


def _line_key(key: str) -> str:
    if len(key) > KEY_MAX_BYTES // 4 and len(key.encode("utf-8")) > KEY_MAX_BYTES:
        raise _Reject(BAD_REQUEST, f"Key too long (max {KEY_MAX_BYTES} bytes)")
    return key


def _usage(name: str, usage: str) -> _Reject:
    return _Reject(BAD_REQUEST, f"Wrong number of arguments for '{name}': usage {usage}")


def _l_set(rest: str):
    parts = rest.split(None, 1)
    if len(parts) < 2:
        raise _usage("SET", "SET <key> <value>")
    return Set(_line_key(parts[0]), _line_value(parts[1]), "json")


def _l_get(rest: str):
    parts = rest.split()
    if len(parts) != 1:
        raise _usage("GET", "GET <key>")
    return Get(_line_key(parts[0]))


def _l_delete(rest: str):
    parts = rest.split()
    if not parts:
        raise _usage("DELETE", "DELETE <key> [key ...]")
    return Delete([_line_key(k) for k in parts])


def _l_exists(rest: str):
    parts = rest.split()
    if not parts:
        raise _usage("EXISTS", "EXISTS <key> [key ...]")
    return Exists([_line_key(k) for k in parts])


def _l_keys(rest: str):
    parts = rest.split()
    if len(parts) > 1:
        raise _usage("KEYS", "KEYS [pattern]")
    return Keys(parts[0] if parts else "*")


def _no_args(name: str, cls):
    def parse(rest: str):
        if rest:
            raise _usage(name, name)
        return cls()
    return parse


def _l_ping(rest: str):
    return Ping(rest or None)


def _l_echo(rest: str):
    if not rest:
        raise _usage("ECHO", "ECHO <message>")
    return Echo(rest)


def _l_info(rest: str):
    parts = rest.split()
    return Info(" ".join(parts).lower() if parts else None)


def _l_auth(rest: str):
    parts = rest.split()
    if len(parts) == 1:
        return Auth(parts[0])
    if len(parts) == 2:
        return Auth(parts[1], parts[0])
    raise _usage("AUTH", "AUTH <secret> | AUTH <user> <secret>")


def _l_select(rest: str):
    parts = rest.split()
    if len(parts) != 1:
        raise _usage("SELECT", "SELECT <db>")
    db = _strict_int(parts[0])
    if db is None:
        raise _Reject(BAD_REQUEST, "Invalid DB index")
    return Select(db)


def _l_shutdown(rest: str):
    return Shutdown(tuple(w.upper() for w in rest.split()))


def _l_transfer(rest: str):
    parts = rest.split()
    if len(parts) > 1:
        raise _usage("TRANSFER", "TRANSFER [node-id]")
    return Transfer(parts[0] if parts else None)


_LINE_COMMANDS: dict[str, Callable[[str], Any]] = {
    "SET": _l_set,
    "GET": _l_get,
    "DELETE": _l_delete,
    "DEL": _l_delete,
    "EXISTS": _l_exists,
    "KEYS": _l_keys,
    "DBSIZE": _no_args("DBSIZE", DbSize),
    "PING": _l_ping,
    "ECHO": _l_echo,
    "STATUS": _no_args("STATUS", Status),
    "INFO": _l_info,
    "AUTH": _l_auth,
    "SELECT": _l_select,
    "QUIT": lambda rest: Quit(),
    "SHUTDOWN": _l_shutdown,
    "SNAPSHOT": _no_args("SNAPSHOT", Snapshot),
    "FLUSH": _no_args("FLUSH", Flush),
    "TRANSFER": _l_transfer,
    "CLUSTER": lambda rest: cluster_command(rest.split()),
}


def _shorten(s: str, n: int = 64) -> str:
    return s if len(s) <= n else s[:n] + "..."


def parse_line(line: bytes) -> Any:
    """One line-protocol request -> command.  Never raises: bad requests become Invalid.

    `line` may still carry its "\\n" / "\\r\\n".  Command names are case-insensitive.
    """
    if line[-1:] == b"\n":
        line = line[:-1]
    if line[-1:] == b"\r":
        line = line[:-1]
    if line[:1] == b"{":
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError) as e:         # UnicodeDecodeError is a ValueError
            return Invalid(BAD_REQUEST, f"Invalid JSON message: {_shorten(str(e), 120)}")
        if not isinstance(msg, dict):
            return Invalid(BAD_REQUEST, "Invalid JSON message: not an object")
        return Internal(msg)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Invalid(BAD_REQUEST, f"invalid UTF-8 in request at byte {e.start}")
    parts = text.split(None, 1)
    if not parts:
        return Invalid(BAD_REQUEST, "Empty request")
    handler = _LINE_COMMANDS.get(parts[0].upper())
    if handler is None:
        return Invalid(UNKNOWN_COMMAND, f"Unknown command '{_shorten(parts[0])}'")
    try:
        return handler(parts[1] if len(parts) > 1 else "")
    except _Reject as r:
        return r.invalid


# --------------------------------------------------------------------------------------------
# RESP parsing
# --------------------------------------------------------------------------------------------
_ERR_SYNTAX = "ERR syntax error"
_ERR_NOT_INT = "ERR value is not an integer or out of range"
_INT64_MAX = (1 << 63) - 1


def _strict_int(s: str | bytes) -> int | None:
    """Redis-style integer: optional '-', 1..19 digits; else None."""
    d = s[1:] if s[:1] in ("-", b"-") else s
    if not d.isdigit() or len(d) > 19 or not d.isascii():
        return None
    n = int(s)
    return n if -_INT64_MAX - 1 <= n <= _INT64_MAX else None


def bytes_to_text(b: bytes) -> str:
    """RESP bytes -> str, losslessly (utf-8 with surrogateescape)."""
    return b.decode("utf-8", "surrogateescape")


def _arity(name: bytes) -> _Reject:
    return _Reject(BAD_REQUEST,
                   f"ERR wrong number of arguments for '{_printable(name.lower())}' command")


def _printable(b: bytes, n: int = 128) -> str:
    s = b[:n].decode("utf-8", "backslashreplace")
    return s.replace("\r", "\\r").replace("\n", "\\n").replace("'", "\\'")


def _r_key(b: bytes) -> str:
    if not b:
        raise _Reject(BAD_REQUEST, "ERR empty keys are not allowed")
    if len(b) > KEY_MAX_BYTES:
        raise _Reject(BAD_REQUEST, f"ERR key too long (max {KEY_MAX_BYTES} bytes)")
    return b.decode("utf-8", "surrogateescape")


def _r_set(args: list):
    n = len(args)
    if n < 3:
        raise _arity(b"set")
    key = _r_key(args[1])
    if n == 3:
        return Set(key, args[2], "bytes")
    cmd = Set(key, args[2], "bytes")
    expiry = None
    i = 3
    while i < n:
        opt = args[i].upper()
        if opt == b"NX" and not cmd.xx:
            cmd.nx = True
        elif opt == b"XX" and not cmd.nx:
            cmd.xx = True
        elif opt == b"GET":
            cmd.get = True
        elif opt == b"KEEPTTL" and expiry in (None, opt):      # (Redis lets an option repeat)
            expiry = opt
            cmd.keepttl = True
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and expiry in (None, opt) and i + 1 < n:
            expiry = opt
            i += 1
            t = _strict_int(args[i])
            if t is None:
                raise _Reject(BAD_REQUEST, _ERR_NOT_INT)
            scale = 1000 if opt in (b"EX", b"EXAT") else 1
            if t <= 0 or t > _INT64_MAX // scale:
                raise _Reject(BAD_REQUEST, "ERR invalid expire time in 'set' command")
            if opt in (b"EX", b"PX"):
                cmd.ex_ms = t * scale
            else:
                cmd.exat_ms = t * scale
        else:
            raise _Reject(BAD_REQUEST, _ERR_SYNTAX)
        i += 1
    return cmd


def _r_get(args: list):
    if len(args) != 2:
        raise _arity(b"get")
    return Get(_r_key(args[1]))


def _r_del(args: list):
    if len(args) < 2:
        raise _arity(args[0])
    return Delete([_r_key(k) for k in args[1:]])


def _r_exists(args: list):
    if len(args) < 2:
        raise _arity(b"exists")
    return Exists([_r_key(k) for k in args[1:]])


def _r_keys(args: list):
    if len(args) != 2:
        raise _arity(b"keys")
    return Keys(bytes_to_text(args[1]))


def _r_fixed(name: bytes, cls):
    def parse(args: list):
        if len(args) != 1:
            raise _arity(name)
        return cls()
    return parse


def _r_ping(args: list):
    if len(args) > 2:
        raise _arity(b"ping")
    return Ping(bytes_to_text(args[1]) if len(args) == 2 else None)


def _r_echo(args: list):
    if len(args) != 2:
        raise _arity(b"echo")
    return Echo(bytes_to_text(args[1]))


def _r_info(args: list):
    if len(args) == 1:
        return Info(None)
    return Info(" ".join(bytes_to_text(a) for a in args[1:]).lower())


def _r_auth(args: list):
    if len(args) == 2:
        return Auth(bytes_to_text(args[1]))
    if len(args) == 3:
        return Auth(bytes_to_text(args[2]), bytes_to_text(args[1]))
    raise _arity(b"auth")


def _r_select(args: list):
    if len(args) != 2:
        raise _arity(b"select")
    db = _strict_int(args[1])
    if db is None:
        raise _Reject(BAD_REQUEST, "ERR invalid DB index")
    return Select(db)


def _r_shutdown(args: list):
    return Shutdown(tuple(bytes_to_text(a).upper() for a in args[1:]))


def _r_config(args: list):
    if len(args) < 2:
        raise _arity(b"config")
    sub = args[1].upper()
    if sub == b"GET":
        if len(args) < 3:
            raise _arity(b"config|get")
        return ConfigGet(bytes_to_text(args[2]), tuple(bytes_to_text(a) for a in args[3:]))
    raise _Reject(UNKNOWN_COMMAND, f"ERR unknown subcommand '{_printable(args[1])}'. "
                                   "Try CONFIG HELP.")


def _r_client(args: list):
    if len(args) < 2:
        raise _arity(b"client")
    return ClientCmd(bytes_to_text(args[1]).upper(), tuple(bytes_to_text(a) for a in args[2:]))


def _r_command(args: list):
    if len(args) == 1:
        return CommandCmd(None)
    return CommandCmd(bytes_to_text(args[1]).upper(), tuple(bytes_to_text(a) for a in args[2:]))


def _r_hello(args: list):
    redis5 = _unknown_message(args)
    n = len(args)
    protover = None
    if n >= 2:
        protover = _strict_int(args[1])
        if protover is None:
            raise _Reject(BAD_REQUEST, "ERR Protocol version is not an integer or out of range")
    cmd = Hello(UNKNOWN_COMMAND, redis5, protover)
    i = 2
    while i < n:
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < n:
            cmd.username = bytes_to_text(args[i + 1])
            cmd.password = bytes_to_text(args[i + 2])
            i += 3
        elif opt == b"SETNAME" and i + 1 < n:
            cmd.setname = bytes_to_text(args[i + 1])
            i += 2
        else:
            raise _Reject(BAD_REQUEST, f"ERR Syntax error in HELLO option '{_printable(args[i])}'")
    return cmd


_RESP_COMMANDS: dict[bytes, Callable[[list], Any]] = {
    b"SET": _r_set,
    b"GET": _r_get,
    b"DEL": _r_del,
    b"DELETE": _r_del,
    b"EXISTS": _r_exists,
    b"KEYS": _r_keys,
    b"DBSIZE": _r_fixed(b"dbsize", DbSize),
    b"PING": _r_ping,
    b"ECHO": _r_echo,
    b"INFO": _r_info,
    b"AUTH": _r_auth,
    b"SELECT": _r_select,
    b"QUIT": lambda args: Quit(),
    b"SHUTDOWN": _r_shutdown,
    b"CONFIG": _r_config,
    b"CLIENT": _r_client,
    b"COMMAND": _r_command,
    b"HELLO": _r_hello,
    b"STATUS": _r_fixed(b"status", Status),
    b"SNAPSHOT": _r_fixed(b"snapshot", Snapshot),
    b"FLUSH": _r_fixed(b"flush", Flush),
    b"TRANSFER": lambda args: Transfer(bytes_to_text(args[1]) if len(args) > 1 else None),
    b"CLUSTER": lambda args: cluster_command([bytes_to_text(a) for a in args[1:]], "ERR "),
}


def _unknown_message(args: list) -> str:
    tail = "".join(f"'{_printable(a)}' " for a in args[1:] if a is not None)[:128]
    return f"ERR unknown command '{_printable(args[0])}', with args beginning with: {tail}"


def parse_resp(args: list) -> Any:
    """One RESP request (list of bulk strings) -> command.  Never raises: errors become Invalid
    whose message is a full Redis error line ("ERR ...")."""
    if not args:
        return Invalid(BAD_REQUEST, "ERR empty command")
    if None in args:
        return Invalid(BAD_REQUEST, "ERR Protocol error: null bulk string in request")
    handler = _RESP_COMMANDS.get(args[0].upper())
    if handler is None:
        return Invalid(UNKNOWN_COMMAND, _unknown_message(args))
    try:
        return handler(args)
    except _Reject as r:
        return r.invalid


def parse_frame(frame: Frame) -> Any:
    """Frame -> command, by frame.proto (parse_line or parse_resp).  Never raises."""
    if frame.proto == "resp":
        return parse_resp(frame.args)
    return parse_line(frame.line)


# --------------------------------------------------------------------------------------------
# Redis ecosystem: Sentinel discovery, ROLE, opt-in follower reads, failover events.
# (One group, registered into the command tables here, so the data commands above stay apart.)
#
#   SENTINEL <sub> [name]   RESP only: every node answers the Sentinel commands that redis-py,
#                           Jedis, ioredis and go-redis use to find the primary (kv_sentinel.py)
#   ROLE                    Redis's ROLE reply (RESP); a JSON object on the line protocol
#   READONLY / READWRITE    this connection may / may not read from a secondary (stale reads)
#   SUBSCRIBE / PSUBSCRIBE / UNSUBSCRIBE / PUNSUBSCRIBE
#                           RESP only: Sentinel's event channels (+switch-master, ...); there
#                           is no PUBLISH
# --------------------------------------------------------------------------------------------
SENTINEL_SUBCOMMANDS = frozenset({"MASTERS", "MASTER", "GET-MASTER-ADDR-BY-NAME", "REPLICAS",
                                  "SENTINELS", "CKQUORUM", "MYID", "FAILOVER", "IS-MASTER-DOWN-BY-ADDR",
                                  "CONFIG", "RESET", "MONITOR", "REMOVE", "SET", "FLUSHCONFIG",
                                  "INFO-CACHE", "SIMULATE-FAILURE", "DEBUG", "PENDING-SCRIPTS"})
_SENTINEL_NO_NAME = frozenset({"MASTERS", "MYID"})
_SENTINEL_ONE_NAME = frozenset({"MASTER", "GET-MASTER-ADDR-BY-NAME", "REPLICAS", "SENTINELS",
                                "CKQUORUM", "FAILOVER"})


@dataclass(slots=True)
class Sentinel:
    """SENTINEL <sub> [name] (RESP only).

    sub: upper-cased; SLAVES is folded into REPLICAS.  name: the service (master) name for the
    subcommands that take one (MASTER, GET-MASTER-ADDR-BY-NAME, REPLICAS, SENTINELS, CKQUORUM,
    FAILOVER), else None.  Subcommands that change a real Sentinel's configuration (MONITOR,
    REMOVE, SET, RESET, ...) parse with their raw `args` so the server can refuse them clearly.
    """
    sub: str
    name: str | None = None
    args: tuple = ()


@dataclass(slots=True)
class Role:
    """ROLE: the node's replication role, in Redis's format over RESP."""


@dataclass(slots=True)
class ReadOnly:
    """READONLY: this connection may read from a secondary (data as of its last applied entry)."""


@dataclass(slots=True)
class ReadWrite:
    """READWRITE: back to the default, reads only on the primary (linearizable)."""


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE / PSUBSCRIBE channel [channel ...] (RESP only): pattern True for PSUBSCRIBE.
    channels: non-empty tuple of str."""
    channels: tuple
    pattern: bool = False


@dataclass(slots=True)
class Unsubscribe:
    """UNSUBSCRIBE / PUNSUBSCRIBE [channel ...] (RESP only): empty channels = all of that kind."""
    channels: tuple = ()
    pattern: bool = False


def _r_sentinel(args: list):
    if len(args) < 2:
        raise _arity(b"sentinel")
    sub = bytes_to_text(args[1]).upper()
    if sub == "SLAVES":
        sub = "REPLICAS"
    if sub not in SENTINEL_SUBCOMMANDS:
        raise _Reject(UNKNOWN_COMMAND, f"ERR Unknown sentinel subcommand '{_printable(args[1])}'")
    rest = args[2:]
    if sub in _SENTINEL_NO_NAME:
        if rest:
            raise _arity(b"sentinel|" + args[1].lower())
        return Sentinel(sub)
    if sub in _SENTINEL_ONE_NAME:
        if len(rest) != 1:
            raise _arity(b"sentinel|" + args[1].lower())
        return Sentinel(sub, bytes_to_text(rest[0]))
    return Sentinel(sub, None, tuple(bytes_to_text(a) for a in rest))


def _r_subscribe(pattern: bool):
    name = b"psubscribe" if pattern else b"subscribe"

    def parse(args: list):
        if len(args) < 2:
            raise _arity(name)
        return Subscribe(tuple(bytes_to_text(a) for a in args[1:]), pattern)
    return parse


def _r_unsubscribe(pattern: bool):
    def parse(args: list):
        return Unsubscribe(tuple(bytes_to_text(a) for a in args[1:]), pattern)
    return parse


_RESP_COMMANDS.update({
    b"SENTINEL": _r_sentinel,
    b"ROLE": _r_fixed(b"role", Role),
    b"READONLY": _r_fixed(b"readonly", ReadOnly),
    b"READWRITE": _r_fixed(b"readwrite", ReadWrite),
    b"SUBSCRIBE": _r_subscribe(False),
    b"PSUBSCRIBE": _r_subscribe(True),
    b"UNSUBSCRIBE": _r_unsubscribe(False),
    b"PUNSUBSCRIBE": _r_unsubscribe(True),
})
_LINE_COMMANDS.update({
    "ROLE": _no_args("ROLE", Role),
    "READONLY": _no_args("READONLY", ReadOnly),
    "READWRITE": _no_args("READWRITE", ReadWrite),
})
__all__ += ["Sentinel", "Role", "ReadOnly", "ReadWrite", "Subscribe", "Unsubscribe",
            "SENTINEL_SUBCOMMANDS"]

# --------------------------------------------------------------------------------------------
# Redis data commands (issue 9): strings, counters, multi-key, keyspace, expiry, transactions.
# Kept in one block: the parsers register themselves in _RESP_COMMANDS / _LINE_COMMANDS below.
#
# Every data command other than the fast-path classes above (Set, Get, Delete, Exists, Keys,
# DbSize) parses to DataCommand(name, args, write): `name` is the state machine's command
# (kv_state: INCRBY for INCR/DECR/DECRBY, PEXPIREAT for EXPIRE/PEXPIRE/EXPIREAT, TTL for
# TTL/PTTL/EXPIRETIME/PEXPIRETIME, ...), `args` its normalised arguments: keys str, stored
# values (kind, value) tuples ("bytes" over RESP, "json" over the line protocol), numbers int,
# option words upper-case str, and RelMs for a time relative to "now" that the primary turns
# into an absolute unix-ms deadline before proposing (kv_commands.resolve).  The per-command
# argument shapes are listed in kv_state next to each command.  Both protocols share these
# parsers: a line-protocol request is split on whitespace and parsed like a RESP one, except
# that its values are JSON-or-string (as SET's) and its error messages carry no "ERR ".
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class DataCommand:
    """A Redis data command, normalised for the state machine (see the block comment)."""
    name: str
    args: list
    write: bool
    redis_name: str = ""          # as the client spelled it, lower-case (for error messages)


@dataclass(slots=True)
class RelMs:
    """A relative time in ms ("EX 10" -> RelMs(10000, "set")); see DataCommand."""
    ms: int
    command: str


@dataclass(slots=True)
class Multi:
    """MULTI: start queueing commands."""


@dataclass(slots=True)
class Exec:
    """EXEC: run the queued commands as one log entry."""


@dataclass(slots=True)
class Discard:
    """DISCARD: drop the queued commands and the watches."""


@dataclass(slots=True)
class Watch:
    """WATCH key [key ...]."""
    keys: list


@dataclass(slots=True)
class Unwatch:
    """UNWATCH."""


@dataclass(slots=True)
class Queued:
    """Any command received while the connection is inside MULTI (the handler wraps it)."""
    command: Any


# run at once even inside MULTI (everything else is wrapped in Queued)
TX_IMMEDIATE = (Exec, Discard, Multi, Watch, Quit)


def is_queue_time_error(inv: "Invalid") -> bool:
    """Inside MULTI, Redis rejects at once (and aborts EXEC with EXECABORT) only unknown
    commands and wrong argument counts; every other error is reported when EXEC runs."""
    m = inv.message[4:] if inv.message.startswith("ERR ") else inv.message
    return (inv.code == UNKNOWN_COMMAND or m.startswith("wrong number of arguments")
            or m.startswith("Wrong number of arguments") or m.startswith("unknown command")
            or m.startswith("Unknown command"))


_ERR_NOT_FLOAT = "ERR value is not a valid float"


def _d_val(b: bytes, line: bool):
    return ("json", _line_value(b.decode("utf-8"))) if line else ("bytes", b)


def _d_int(b: bytes) -> int:
    n = _strict_int(b)
    if n is None:
        raise _Reject(BAD_REQUEST, _ERR_NOT_INT)
    return n


def _d_time(b: bytes, scale: int, relative: bool, cmd: str, positive: bool):
    """An expiry argument: int seconds/ms -> RelMs (relative) or absolute ms."""
    t = _d_int(b)
    if positive and t <= 0:
        raise _Reject(BAD_REQUEST, f"ERR invalid expire time in '{cmd}' command")
    if t > _INT64_MAX // scale or t < (-_INT64_MAX - 1) // scale:
        raise _Reject(BAD_REQUEST, f"ERR invalid expire time in '{cmd}' command")
    return RelMs(t * scale, cmd) if relative else t * scale


def _d_arity(args: list, n: int) -> None:
    """Redis arity: n > 0 exactly n words (with the name), n < 0 at least -n."""
    if (n > 0 and len(args) != n) or (n < 0 and len(args) < -n):
        raise _arity(args[0].lower())


def _d_simple(name: str, arity: int, write: bool, shape: str):
    """A parser for a command whose arguments are, in order, of the kinds in `shape`:
    k key, v value, i int, K every remaining word a key."""
    def parse(args: list, line: bool):
        _d_arity(args, arity)
        out: list = []
        rest = args[1:]
        for j, s in enumerate(shape):
            if s == "K":
                out.extend(_r_key(b) for b in rest[j:])
                break
            b = rest[j]
            out.append(_r_key(b) if s == "k" else _d_val(b, line) if s == "v" else _d_int(b))
        return DataCommand(name, out, write, bytes_to_text(args[0]).lower())
    return parse


def _d_getset(args, line):
    _d_arity(args, 3)
    return DataCommand("SET", [_r_key(args[1]), _d_val(args[2], line), "", 1, None], True, "getset")


def _d_getex(args, line):
    _d_arity(args, -2)
    key = _r_key(args[1])
    exp = kind = None
    i, n = 2, len(args)
    while i < n:
        opt = args[i].upper()
        if opt == b"PERSIST" and kind in (None, opt):
            exp = "PERSIST"
            kind = opt
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and kind in (None, opt) and i + 1 < n:
            kind = opt
            i += 1
            try:
                exp = _d_time(args[i], 1000 if opt in (b"EX", b"EXAT") else 1,
                              opt in (b"EX", b"PX"), "getex", True)
            except _Reject as r:     # Redis reads the time only when the key exists
                exp = r.invalid.message
        else:
            raise _Reject(BAD_REQUEST, _ERR_SYNTAX)
        i += 1
    return DataCommand("GETEX", [key, exp], exp is not None, "getex")


def _d_setex(scale: int, name: str):
    def parse(args, line):
        _d_arity(args, 4)
        key = _r_key(args[1])
        t = _d_time(args[2], scale, True, name, True)
        return DataCommand("SET", [key, _d_val(args[3], line), "", 0, t], True, name)
    return parse


def _d_incr(sign: int, by_arg: bool, name: str):
    def parse(args, line):
        _d_arity(args, 3 if by_arg else 2)
        key = _r_key(args[1])
        by = _d_int(args[2]) if by_arg else 1
        if sign < 0:
            if by == -_INT64_MAX - 1:
                raise _Reject(BAD_REQUEST, "ERR decrement would overflow")
            by = -by
        return DataCommand("INCRBY", [key, by], True, name)
    return parse


def _d_incrbyfloat(args, line):
    _d_arity(args, 3)
    return DataCommand("INCRBYFLOAT", [_r_key(args[1]), ("bytes", args[2])], True, "incrbyfloat")


def _d_mset(name: str, exec_name: str):
    def parse(args, line):
        if len(args) < 3:
            raise _arity(name.encode())
        if len(args) % 2 == 0:   # Redis checks the pairs when it runs the command (EXEC too)
            return DataCommand("ERROR", [_arity(name.encode()).invalid.message], False, name)
        out: list = []
        for j in range(1, len(args), 2):
            out += [_r_key(args[j]), _d_val(args[j + 1], line)]
        return DataCommand(exec_name, out, True, name)
    return parse


def _d_rename(nx: bool):
    def parse(args, line):
        _d_arity(args, 3)
        return DataCommand("RENAME", [_r_key(args[1]), _r_key(args[2]), 1 if nx else 0], True,
                           "renamenx" if nx else "rename")
    return parse


def _d_copy(args, line):
    _d_arity(args, -3)
    replace = 0
    i, n = 3, len(args)
    while i < n:
        opt = args[i].upper()
        if opt == b"REPLACE":
            replace = 1
        elif opt == b"DB" and i + 1 < n:
            i += 1
            db = _d_int(args[i])
            if db != 0:
                raise _Reject(BAD_REQUEST, "ERR DB index is out of range")
        else:
            raise _Reject(BAD_REQUEST, _ERR_SYNTAX)
        i += 1
    return DataCommand("COPY", [_r_key(args[1]), _r_key(args[2]), replace], True, "copy")


def _d_scan(args, line):
    _d_arity(args, -2)
    c = args[1]
    if not c.isdigit() or not c.isascii() or int(c) > (1 << 64) - 1:
        raise _Reject(BAD_REQUEST, "ERR invalid cursor")
    cursor = int(c)
    pattern = typ = None
    count = 10
    i, n = 2, len(args)
    while i < n:
        opt = args[i].upper()
        if i + 1 >= n:
            raise _Reject(BAD_REQUEST, _ERR_SYNTAX)
        if opt == b"COUNT":
            count = _d_int(args[i + 1])
            if count < 1:
                raise _Reject(BAD_REQUEST, _ERR_SYNTAX)
        elif opt == b"MATCH":
            pattern = bytes_to_text(args[i + 1])
        elif opt == b"TYPE":
            typ = bytes_to_text(args[i + 1]).lower()
        else:
            raise _Reject(BAD_REQUEST, _ERR_SYNTAX)
        i += 2
    return DataCommand("SCAN", [min(cursor, 1 << 32), pattern, count, typ], False, "scan")


def _d_flush(name: str):
    def parse(args, line):
        if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
            raise _Reject(BAD_REQUEST, _ERR_SYNTAX)
        return DataCommand("FLUSHDB", [], True, name)
    return parse


def _d_expire(scale: int, relative: bool, name: str):
    def parse(args, line):
        _d_arity(args, -3)
        flags = set()
        for b in args[3:]:
            f = b.upper()
            if f not in (b"NX", b"XX", b"GT", b"LT"):
                raise _Reject(BAD_REQUEST, f"ERR Unsupported option {_printable(b)}")
            flags.add(f.decode())
        if "NX" in flags and len(flags) > 1:
            raise _Reject(BAD_REQUEST, "ERR NX and XX, GT or LT options at the same time are not compatible")
        if "GT" in flags and "LT" in flags:
            raise _Reject(BAD_REQUEST, "ERR GT and LT options at the same time are not compatible")
        key = _r_key(args[1])
        when = _d_time(args[2], scale, relative, name, False)
        cond = "".join(sorted(flags))          # "", "NX", "XX", "GT", "LT", "GTXX", "LTXX"
        return DataCommand("PEXPIREAT", [key, when, cond], True, name)
    return parse


def _d_ttl(unit: str, absolute: int, name: str):
    def parse(args, line):
        _d_arity(args, 2)
        return DataCommand("TTL", [_r_key(args[1]), unit, absolute], False, name)
    return parse


def _d_tx(cls, name: bytes):
    def parse(args, line):
        if len(args) != 1:
            raise _arity(name)
        return cls()
    return parse


def _d_watch(args, line):
    _d_arity(args, -2)
    return Watch([_r_key(b) for b in args[1:]])


def _d_cas(args, line):
    """CAS key expected new: line protocol only (new is the rest of the line there)."""
    _d_arity(args, 4)
    return DataCommand("CAS", [_r_key(args[1]), _d_val(args[2], line), _d_val(args[3], line)],
                       True, "cas")


# name -> parser(args: list[bytes], line: bool).  SET/GET/DEL/EXISTS/KEYS/DBSIZE keep their
# typed fast-path classes above; UNLINK is DEL.
_DATA_PARSERS: dict[bytes, Callable[[list, bool], Any]] = {
    b"GETSET": _d_getset,
    b"GETDEL": _d_simple("GETDEL", 2, True, "k"),
    b"GETEX": _d_getex,
    b"SETNX": _d_simple("SETNX", 3, True, "kv"),
    b"SETEX": _d_setex(1000, "setex"),
    b"PSETEX": _d_setex(1, "psetex"),
    b"APPEND": _d_simple("APPEND", 3, True, "kv"),
    b"STRLEN": _d_simple("STRLEN", 2, False, "k"),
    b"GETRANGE": _d_simple("GETRANGE", 4, False, "kii"),
    b"SUBSTR": _d_simple("GETRANGE", 4, False, "kii"),
    b"SETRANGE": _d_simple("SETRANGE", 4, True, "kiv"),
    b"INCR": _d_incr(1, False, "incr"),
    b"DECR": _d_incr(-1, False, "decr"),
    b"INCRBY": _d_incr(1, True, "incrby"),
    b"DECRBY": _d_incr(-1, True, "decrby"),
    b"INCRBYFLOAT": _d_incrbyfloat,
    b"MGET": _d_simple("MGET", -2, False, "K"),
    b"MSET": _d_mset("mset", "MSET"),
    b"MSETNX": _d_mset("msetnx", "MSETNX"),
    b"TOUCH": _d_simple("TOUCH", -2, False, "K"),
    b"TYPE": _d_simple("TYPE", 2, False, "k"),
    b"RENAME": _d_rename(False),
    b"RENAMENX": _d_rename(True),
    b"COPY": _d_copy,
    b"RANDOMKEY": _d_simple("RANDOMKEY", 1, False, ""),
    b"SCAN": _d_scan,
    b"FLUSHDB": _d_flush("flushdb"),
    b"FLUSHALL": _d_flush("flushall"),
    b"EXPIRE": _d_expire(1000, True, "expire"),
    b"PEXPIRE": _d_expire(1, True, "pexpire"),
    b"EXPIREAT": _d_expire(1000, False, "expireat"),
    b"PEXPIREAT": _d_expire(1, False, "pexpireat"),
    b"TTL": _d_ttl("s", 0, "ttl"),
    b"PTTL": _d_ttl("ms", 0, "pttl"),
    b"EXPIRETIME": _d_ttl("s", 1, "expiretime"),
    b"PEXPIRETIME": _d_ttl("ms", 1, "pexpiretime"),
    b"PERSIST": _d_simple("PERSIST", 2, True, "k"),
    b"MULTI": _d_tx(Multi, b"multi"),
    b"EXEC": _d_tx(Exec, b"exec"),
    b"DISCARD": _d_tx(Discard, b"discard"),
    b"UNWATCH": _d_tx(Unwatch, b"unwatch"),
    b"WATCH": _d_watch,
}


def _resp_data(parser):
    return lambda args: parser(args, False)


def _line_data(name: bytes, parser):
    def parse(rest: str):
        args = [name] + [t.encode("utf-8") for t in rest.split()]
        try:
            return parser(args, True)
        except _Reject as r:
            m = r.invalid.message
            raise _Reject(r.invalid.code, m[4:] if m.startswith("ERR ") else m) from None
    return parse


def _l_set_ex(rest: str):
    """Line SET: `SET <key> <value> [EX <seconds> | PX <ms>]` - the value is the rest of the line
    unless it ends with EX/PX and an integer (store such a text as a JSON string instead)."""
    parts = rest.split(None, 1)
    if len(parts) < 2:
        raise _usage("SET", "SET <key> <value> [EX <seconds> | PX <milliseconds>]")
    key, raw = parts
    words = raw.rsplit(None, 2)
    if len(words) == 3 and words[1].upper() in ("EX", "PX") and _strict_int(words[2]) is not None:
        t = _strict_int(words[2])
        scale = 1000 if words[1].upper() == "EX" else 1
        if t <= 0 or t > _INT64_MAX // scale:
            raise _Reject(BAD_REQUEST, "invalid expire time in 'set' command")
        return Set(_line_key(key), _line_value(words[0]), "json", ex_ms=t * scale)
    return Set(_line_key(key), _line_value(raw), "json")


def _l_cas(rest: str):
    """CAS <key> <expected> <new>: expected is one token, new the rest of the line."""
    parts = rest.split(None, 2)
    if len(parts) < 3:
        raise _usage("CAS", "CAS <key> <expected> <new value>")
    key, expected, new = parts
    return DataCommand("CAS", [_line_key(key), ("json", _line_value(expected)),
                               ("json", _line_value(new))], True, "cas")


def _r_unlink(args: list):
    if len(args) < 2:
        raise _arity(b"unlink")
    return Delete([_r_key(k) for k in args[1:]])


_RESP_COMMANDS.update({name: _resp_data(p) for name, p in _DATA_PARSERS.items()})
_RESP_COMMANDS[b"UNLINK"] = _r_unlink
_LINE_COMMANDS.update({name.decode(): _line_data(name, p) for name, p in _DATA_PARSERS.items()})
_LINE_COMMANDS["SET"] = _l_set_ex
_LINE_COMMANDS["CAS"] = _l_cas
_LINE_COMMANDS["UNLINK"] = _LINE_COMMANDS["DELETE"]


# --------------------------------------------------------------------------------------------
# Encoders: line protocol
# --------------------------------------------------------------------------------------------
_json_line = json.JSONEncoder().encode   # ensure_ascii: one ASCII line, lone surrogates escaped


def encode_line(obj: dict) -> bytes:
    """One JSON reply line: json.dumps(obj) (default separators, ensure_ascii) + "\\n".

    ensure_ascii guarantees a single line (newlines in strings are escaped) and that str values
    with lone surrogates (RESP keys) encode.  Raises TypeError for non-JSON objects (a bug)."""
    return (_json_line(obj) + "\n").encode("ascii")


LINE_OK = b'{"status": "OK"}\n'


def line_ok(**fields: Any) -> bytes:
    """{"status": "OK", **fields} as one line."""
    if not fields:
        return LINE_OK
    return encode_line({"status": "OK", **fields})


def line_error(code: str, message: str, **extra: Any) -> bytes:
    """{"status": "ERROR", "code", "message", "definite", **extra} as one line (DESIGN §3.1)."""
    return encode_line({"status": "ERROR", "code": code, "message": message,
                        "definite": code in DEFINITE_CODES, **extra})


# --------------------------------------------------------------------------------------------
# Encoders: RESP2 (and the bits of RESP3 a HELLO 3 client needs)
# --------------------------------------------------------------------------------------------
class RespRaw(bytes):
    """Already-encoded RESP bytes: resp_array / resp_map insert these unchanged."""
    __slots__ = ()


RESP_OK = b"+OK\r\n"
RESP_PONG = b"+PONG\r\n"
RESP_NULL = b"$-1\r\n"          # RESP2 null bulk
RESP_NULL_ARRAY = b"*-1\r\n"    # RESP2 null array
RESP3_NULL = b"_\r\n"           # RESP3 null (the only null a RESP3 client parses correctly)
RESP_ZERO = b":0\r\n"
RESP_ONE = b":1\r\n"
RESP_EMPTY_ARRAY = b"*0\r\n"

_ERROR_PREFIX = re.compile(r"[A-Z][A-Z0-9_]+(?= |$)")


def _no_crlf(s: str) -> str:
    if "\r" in s or "\n" in s:
        s = s.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return s


def resp_simple(s: str) -> bytes:
    """+s\\r\\n (CR/LF in s are replaced by spaces)."""
    return b"+" + text_to_bytes(_no_crlf(s)) + b"\r\n"


def resp_error(msg: str) -> bytes:
    """-msg\\r\\n.  msg should start with an error code word ("ERR ...", "READONLY ...",
    "NOAUTH ..."); if its first word is not upper-case, "ERR " is prepended.  CR/LF -> spaces."""
    msg = _no_crlf(msg)
    if not _ERROR_PREFIX.match(msg):
        msg = "ERR " + msg
    return b"-" + text_to_bytes(msg) + b"\r\n"


def resp_int(n: int) -> bytes:
    """:n\\r\\n."""
    return b":%d\r\n" % n


def resp_null(proto: int = 2) -> bytes:
    """The null reply: $-1 (RESP2) or _ (RESP3)."""
    return RESP3_NULL if proto == 3 else RESP_NULL


def resp_bulk(b: bytes | str | None, proto: int = 2) -> bytes:
    """$len\\r\\nb\\r\\n; None -> null (resp_null(proto)); str -> text_to_bytes(str)."""
    if b is None:
        return RESP3_NULL if proto == 3 else RESP_NULL
    if type(b) is str:
        b = text_to_bytes(b)
    if len(b) < _SMALL_COPY:
        return b"$%d\r\n%b\r\n" % (len(b), b)
    return b"".join((b"$%d\r\n" % len(b), b, b"\r\n"))


def _resp_item(x: Any, out: list, proto: int) -> None:
    if isinstance(x, RespRaw):
        out.append(x)
    elif x is None:
        out.append(RESP3_NULL if proto == 3 else RESP_NULL)
    elif isinstance(x, (bytes, bytearray, memoryview, str)):
        out.append(resp_bulk(bytes(x) if not isinstance(x, (bytes, str)) else x))
    elif isinstance(x, int):
        out.append(b":%d\r\n" % x)
    elif isinstance(x, (list, tuple)):
        out.append(b"*%d\r\n" % len(x))
        for y in x:
            _resp_item(y, out, proto)
    elif isinstance(x, dict):
        out.append(resp_map(x, proto))
    else:
        raise TypeError(f"cannot encode {type(x).__name__} as RESP")


def resp_array(items: list | tuple | None, proto: int = 2) -> bytes:
    """*n then each item.  Items are RAW values, encoded here: bytes/str -> bulk string,
    None -> null, int (and bool) -> integer, list/tuple -> nested array, dict -> resp_map,
    RespRaw -> inserted unchanged (e.g. RespRaw(resp_error(...))).  items None -> null array."""
    if items is None:
        return RESP3_NULL if proto == 3 else RESP_NULL_ARRAY
    out: list = [b"*%d\r\n" % len(items)]
    for x in items:
        _resp_item(x, out, proto)
    return b"".join(out)


def resp_map(pairs: dict | list, proto: int = 2) -> bytes:
    """A map: RESP3 "%n" with key/value items; RESP2 a flat array k1 v1 k2 v2 (what Redis sends
    a RESP2 client for CONFIG GET / HELLO).  Keys and values are raw values as in resp_array."""
    items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    out: list = [(b"%%%d\r\n" if proto == 3 else b"*%d\r\n") % (len(items) * (1 if proto == 3 else 2))]
    for k, v in items:
        _resp_item(k, out, proto)
        _resp_item(v, out, proto)
    return b"".join(out)


def resp_hello_reply(proto: int, *, server: str = "kvstore", version: str = "1.0.0",
                     conn_id: int = 0, mode: str = "cluster", role: str = "master") -> bytes:
    """Reply to HELLO: server/version/proto/id/mode/role/modules, as a RESP3 map when proto == 3
    (what redis-py >= 8 expects; it checks "proto"), else as a RESP2 flat array."""
    return resp_map([("server", server), ("version", version), ("proto", proto),
                     ("id", conn_id), ("mode", mode), ("role", role), ("modules", [])], proto)


# --------------------------------------------------------------------------------------------
# Value conversion between the protocols
# --------------------------------------------------------------------------------------------
def _surrogates_to_bytes(exc: UnicodeError):
    """Codec error handler: lone surrogates from surrogateescape (U+DC80..U+DCFF) become the byte
    they stand for; other lone surrogates (from JSON "\\ud800" escapes) are UTF-8 encoded as-is."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start:exc.end]:
        c = ord(ch)
        if 0xDC80 <= c <= 0xDCFF:
            out.append(c - 0xDC00)
        elif 0xD800 <= c <= 0xDFFF:
            out += ch.encode("utf-8", "surrogatepass")
        else:
            raise exc
    return bytes(out), exc.end


_SURROGATE_HANDLER = "kv_protocol.surrogates"
codecs.register_error(_SURROGATE_HANDLER, _surrogates_to_bytes)


def text_to_bytes(s: str) -> bytes:
    """str -> bytes; inverse of bytes_to_text (surrogateescape) and total on any str."""
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", _SURROGATE_HANDLER)


_json_text = json.JSONEncoder(ensure_ascii=False).encode


def value_to_resp_bytes(value: Any, kind: str) -> bytes:
    """A stored value as a RESP bulk payload.

    kind "bytes" -> as is.  kind "json": str -> its UTF-8 (text_to_bytes); any other JSON value ->
    its JSON text as the line protocol prints it, UTF-8 (42 -> b"42", 1.5 -> b"1.5",
    True -> b"true", None -> b"null", {"x": [1, 2]} -> b'{"x": [1, 2]}').
    """
    if kind == "bytes":
        return value
    if type(value) is str:
        return text_to_bytes(value)
    return text_to_bytes(_json_text(value))


_NO_EXTRA = MappingProxyType({})
_BASE64_EXTRA = MappingProxyType({"encoding": "base64"})


def value_to_line_json(value: Any, kind: str) -> tuple[Any, Any]:
    """A stored value as (json_value, extra) for a line-protocol reply.

    kind "json" -> (value, {}).  kind "bytes": valid UTF-8 -> (the str, {}); otherwise
    (base64 ascii str, {"encoding": "base64"}).  `extra` is a read-only mapping to merge into the
    reply (reply.update(extra) / {**reply, **extra}); empty means nothing to add.
    """
    if kind != "bytes":
        return value, _NO_EXTRA
    try:
        return value.decode("utf-8"), _NO_EXTRA
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), _BASE64_EXTRA


def line_json_to_bytes(json_value: Any, extra: Any = None) -> bytes:
    """Inverse of value_to_line_json for a kind "bytes" value (clients and tests)."""
    if extra and extra.get("encoding") == "base64":
        try:
            return base64.b64decode(json_value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"bad base64 value: {e}") from None
    return text_to_bytes(json_value)



# --------------------------------------------------------------------------------------------
# Redis-style glob (KEYS)
# --------------------------------------------------------------------------------------------
def _glob_tokens(p: str) -> list:
    """Pattern -> tokens, following Redis stringmatchlen: "*" (a star) or a str regex fragment
    that matches exactly one character (literal, "?", or a [set])."""
    toks: list = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "*":
            if not toks or toks[-1] != "*":
                toks.append("*")
            i += 1
        elif c == "?":
            toks.append(".")
            i += 1
        elif c == "[":
            i += 1
            neg = i < n and p[i] == "^"
            if neg:
                i += 1
            parts = []
            while True:
                if i < n and p[i] == "\\" and n - i >= 2:
                    parts.append(re.escape(p[i + 1]))
                    i += 2
                elif i < n and p[i] == "]":
                    i += 1
                    break
                elif i >= n:
                    break                                   # unclosed: set runs to the end
                elif n - i >= 3 and p[i + 1] == "-":
                    a, b = sorted((p[i], p[i + 2]))
                    parts.append(re.escape(a) + "-" + re.escape(b))
                    i += 3
                else:
                    parts.append(re.escape(p[i]))
                    i += 1
            if parts:
                toks.append(("[^" if neg else "[") + "".join(parts) + "]")
            else:
                toks.append("." if neg else "(?!)")          # [^] any char, [] nothing
        elif c == "\\" and n - i >= 2:
            toks.append(re.escape(p[i + 1]))
            i += 2
        else:
            toks.append(re.escape(c))
            i += 1
    return toks


class _Segment:
    """A star-free run of one-char tokens: fixed length; literal fast path with str.find."""
    __slots__ = ("length", "literal", "rx")

    def __init__(self, toks: list):
        self.length = len(toks)
        src = "".join(toks)
        self.rx = re.compile(src, re.DOTALL)
        lit = []
        for t in toks:
            if t == "." or t.startswith("[") or t == "(?!)":
                lit = None
                break
            lit.append(re.sub(r"\\(.)", r"\1", t, flags=re.DOTALL))
        self.literal = "".join(lit) if lit is not None else None


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> Callable[[str], bool]:
    """Redis glob -> predicate(key) -> bool.  Cached.

    Semantics of Redis KEYS (case-sensitive): "*" any run, "?" one char, "[abc]" "[a-c]" "[^a]"
    sets (reversed ranges allowed, "\\" escapes inside), "\\x" a literal x.  Matching splits the
    pattern at stars into fixed-length segments and places each leftmost, so it runs in
    O(len(key) * len(pattern)) for any pattern (no regex backtracking blow-up)."""
    if isinstance(pattern, bytes):
        pattern = bytes_to_text(pattern)
    if pattern == "*":
        return lambda key: True
    toks = _glob_tokens(pattern)
    if "*" not in toks:
        whole = _Segment(toks)
        if whole.literal is not None:
            lit = whole.literal
            return lambda key: key == lit
        rx = whole.rx
        return lambda key: rx.fullmatch(key) is not None
    segs: list = []
    cur: list = []
    for t in toks + ["*"]:
        if t == "*":
            segs.append(_Segment(cur) if cur else None)
            cur = []
        else:
            cur.append(t)
    head, mids, tail = segs[0], [s for s in segs[1:-1] if s is not None], segs[-1]
    min_len = sum(s.length for s in segs if s is not None)

    def match(key: str) -> bool:
        n = len(key)
        if n < min_len:
            return False
        pos = 0
        if head is not None:
            if head.literal is not None:
                if not key.startswith(head.literal):
                    return False
            elif head.rx.match(key) is None:
                return False
            pos = head.length
        end = n
        if tail is not None:
            end = n - tail.length
            if end < pos:
                return False
            if tail.literal is not None:
                if not key.endswith(tail.literal):
                    return False
            elif tail.rx.match(key, end) is None:
                return False
        for seg in mids:
            if seg.literal is not None:
                i = key.find(seg.literal, pos, end)
                if i < 0:
                    return False
                pos = i + seg.length
            else:
                m = seg.rx.search(key, pos, end)
                if m is None:
                    return False
                pos = m.end()
        return True

    return match


def glob_match(pattern: str, key: str) -> bool:
    """True if `key` matches the Redis glob `pattern` (see compile_glob)."""
    return compile_glob(pattern)(key)


# --------------------------------------------------------------------------------------------
# Replies: what a command returns, and the one encoder per protocol
# --------------------------------------------------------------------------------------------
# The RESP error word for each code (a Redis client recognises READONLY, NOAUTH, WRONGPASS ...).
RESP_PREFIX = MappingProxyType({
    NOT_PRIMARY: "READONLY", AUTH_REQUIRED: "NOAUTH", AUTH_FAILED: "WRONGPASS", TIMEOUT: "TIMEOUT",
    NO_QUORUM: "NOQUORUM", TOO_LARGE: "ERR", BAD_REQUEST: "ERR", UNKNOWN_COMMAND: "ERR",
    NOT_FOUND: "ERR", WRONGTYPE: "WRONGTYPE"})


class CommandError(Exception):
    """A request failed: a stable `code`, a human `message`, and `definite` - True when the
    operation certainly did not happen (NOT_PRIMARY, BAD_REQUEST, ...), False when it may have
    (TIMEOUT, NO_QUORUM after append).  `fields` go into the line protocol's error object
    (e.g. primary, primary_addr).  `resp_message`, when given, is the exact RESP error line."""

    def __init__(self, code: str, message: str, definite: bool | None = None, *,
                 resp_message: str | None = None, **fields):
        super().__init__(message)
        self.code = code
        self.message = message
        self.definite = (code not in INDEFINITE_CODES) if definite is None else definite
        self.resp_message = resp_message
        self.fields = fields

    def line(self) -> dict:
        d = {"status": "ERROR", "code": self.code, "message": self.message, "definite": self.definite}
        d.update(self.fields)
        return d

    def resp(self) -> bytes:
        if self.resp_message is not None:
            return resp_error(self.resp_message)
        prefix = RESP_PREFIX.get(self.code, "ERR")
        msg = self.message
        if self.code == NOT_PRIMARY:
            msg = "You can't write against a read only replica. " + msg
        if prefix == "ERR":
            return resp_error(msg)   # adds "ERR " unless msg already starts with an error word
        return resp_error(f"{prefix} {msg}")


class Simple(str):
    """A RESP simple string (+OK): a str that encode_resp_value must not send as a bulk."""
    __slots__ = ()


class Reply:
    """A command's answer, before it is encoded for one protocol.

    resp   the RESP value: Simple -> +simple, bytes/str -> bulk, int/bool -> integer,
           None -> null, list/tuple -> array, dict -> map, RespRaw -> inserted as is,
           CommandError -> an error (inside an array too)
    line   the line protocol's fields besides "status": "OK": a dict, None for just the
           status, or a zero-argument callable returning the dict (computed only for a line
           client, so a RESP answer never pays for it)
    """
    __slots__ = ("resp", "line")

    def __init__(self, resp: Any = None, line: Any = None):
        self.resp = resp
        self.line = line


REPLY_OK = Reply(Simple("OK"))


class RespSet(list):
    """A RESP3 set (`~`): an array in RESP2."""
    __slots__ = ()


def encode_resp_value(v: Any, proto: int = 2) -> bytes:
    """One RESP value (see Reply.resp) as bytes."""
    t = type(v)
    if t is Simple:
        return RESP_OK if v == "OK" else resp_simple(v)
    if t is bytes or t is str:
        return resp_bulk(v)
    if t is int:
        return b":%d\r\n" % v
    if v is None:
        return RESP3_NULL if proto == 3 else RESP_NULL
    if isinstance(v, CommandError):
        return v.resp()
    if t is bool:
        return RESP_ONE if v else RESP_ZERO
    if t is list or t is tuple:
        return b"*%d\r\n" % len(v) + b"".join(encode_resp_value(x, proto) for x in v)
    if t is dict:
        out = [(b"%%%d\r\n" if proto == 3 else b"*%d\r\n") % (len(v) * (1 if proto == 3 else 2))]
        for k, x in v.items():
            out.append(encode_resp_value(k, proto))
            out.append(encode_resp_value(x, proto))
        return b"".join(out)
    if isinstance(v, RespRaw):
        return bytes(v)
    if t is RespSet:
        return (b"~%d\r\n" if proto == 3 else b"*%d\r\n") % len(v) + b"".join(encode_resp_value(x, proto) for x in v)
    text = getattr(v, "text", None)     # kv_values.Double: RESP3 double, RESP2 bulk string
    if type(text) is bytes and hasattr(v, "value"):
        return b",%b\r\n" % text if proto == 3 else resp_bulk(text)
    raise TypeError(f"cannot encode {t.__name__} as RESP")


def encode_reply_resp(r: Reply, proto: int = 2) -> bytes:
    """The RESP encoder: a Reply or a CommandError as the bytes of one RESP answer."""
    if type(r) is CommandError:
        return r.resp()
    v = r.resp
    if type(v) is bytes and len(v) < _SMALL_COPY:   # the GET answer: the hot path, inline
        return b"$%d\r\n%b\r\n" % (len(v), v)
    return encode_resp_value(v, proto)


def encode_reply_line(r: Reply) -> bytes:
    """The line-protocol encoder: a Reply or a CommandError as one JSON line."""
    if type(r) is CommandError:
        return encode_line(r.line())
    fields = r.line
    if fields is None:
        return LINE_OK
    if callable(fields):
        fields = fields()
    return encode_line({"status": "OK", **fields})
