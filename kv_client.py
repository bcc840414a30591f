"""kv_client.py: the KV Store client library (standard library only).

    from kv_client import ClusterClient          # (example_client re-exports every name here)
    with ClusterClient("127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381") as cc:
        cc.set("greeting", {"hello": "world"}); cc.get("greeting")

Layout (reading order):
    constants        DEFAULT_NODES, the error codes of DESIGN §3.1 (DEFINITE_CODES, INDEFINITE_CODES),
                     ANY_NODE_COMMANDS, KEY_MAX_BYTES
    errors           KVConnectionError (transport; a ConnectionError) -> ConnectFailed, ConnectionLost,
                     RequestTimeout, ProtocolMismatch, ClusterUnavailable;
                     KVError (an error answer: .code, .definite) -> NotPrimary, KeyNotFound
    check_answer     turns an answer dict into the value it carries, or raises the matching KVError
                     (error_from_answer, answer_value beside it)
    helpers          parse_nodes, split_addr, check_key, encode_value, parse_value
    KVStoreClient    one node, one persistent connection, the answer dicts of DESIGN §3.1, pipeline()
    Pipeline         many requests in one write, answers read back in order
    ClusterClient    the whole cluster: primary discovery, NOT_PRIMARY hints, bounded retries under a
                     deadline, error answers as exceptions; one connection per node per thread
                     (PrimaryInfo: what primary() returns)

Write path, seen from here: ClusterClient.set() -> the primary it believes in (or the next node)
-> `SET <key> <json>` -> the primary appends, replicates, answers once a majority has it durable ->
OK; any other answer is either followed (NOT_PRIMARY names the new primary), retried after a
backoff (definite failures always, indefinite ones only for idempotent operations), or raised.

Values go over the wire as JSON (json.dumps of every value, NaN/Infinity refused), so every JSON
type round-trips exactly, and a string that looks like JSON ("42", "true") comes back a string.

The demos and the interactive REPL that use this library are in example_client.py.
"""

from __future__ import annotations

import base64
import json
import random
import re
import select
import socket
import threading
import time
import weakref
from typing import Any, Iterable, NamedTuple

# Error codes (DESIGN §3.1), shared with the server.  Definite: the operation did not happen.
# Indefinite: it may have (NO_QUORUM is definite when the answer says so).
from kv_protocol import (AUTH_FAILED, AUTH_REQUIRED, BAD_REQUEST, CHANGE_IN_PROGRESS, DEFINITE_CODES,
                         DISK_FULL,
                         INDEFINITE_CODES, NO_QUORUM, NOT_FOUND, NOT_PRIMARY, OK, TIMEOUT, TOO_LARGE,
                         UNKNOWN_COMMAND)

__all__ = ["DEFAULT_NODES", "OK", "NOT_PRIMARY", "NOT_FOUND", "BAD_REQUEST", "UNKNOWN_COMMAND", "TOO_LARGE",
           "NO_QUORUM", "AUTH_REQUIRED", "AUTH_FAILED", "TIMEOUT", "CHANGE_IN_PROGRESS", "DISK_FULL",
           "DEFINITE_CODES", "INDEFINITE_CODES",
           "ANY_NODE_COMMANDS", "KEY_MAX_BYTES", "KVConnectionError", "ConnectFailed", "ConnectionLost",
           "RequestTimeout", "ProtocolMismatch", "ClusterUnavailable", "KVError", "NotPrimary",
           "KeyNotFound", "error_from_answer", "check_answer", "answer_value", "parse_nodes", "split_addr",
           "check_key", "encode_value", "parse_value", "KVStoreClient", "Pipeline", "PrimaryInfo",
           "ClusterClient"]

DEFAULT_NODES = ("127.0.0.1:6379", "127.0.0.1:6380", "127.0.0.1:6381")

# Commands every node answers OK (so an OK answer does not show who is primary).
AUTH_CODES = frozenset({AUTH_FAILED, AUTH_REQUIRED})   # definite, and never retried: no wait fixes them
ANY_NODE_COMMANDS = frozenset({"PING", "ECHO", "STATUS", "INFO", "AUTH", "SELECT", "CONFIG", "CLIENT", "COMMAND"})

KEY_MAX_BYTES = 64 * 1024
_WHITESPACE = re.compile(r"\s")
# Compact, strict JSON for values: the server stores NaN/Infinity as raw strings, so refuse them here.
_encode_value = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
# Before reusing a connection idle this long, check the peer has not closed it (one select()).
_IDLE_CHECK_S = 0.05


# =============================================================================================
# Errors
# =============================================================================================
class KVConnectionError(ConnectionError):
    """A transport failure talking to one node (or, for ClusterClient, to the whole cluster).

    `.definite` is True when the request certainly did not reach the server (nothing to undo, safe
    to re-send) and False when it may have been executed.  `.node` is "host:port".
    """

    definite = False

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


class ConnectFailed(KVConnectionError):
    """Could not connect (refused, unreachable, connect timeout): the request was never sent."""

    definite = True


class ConnectionLost(KVConnectionError):
    """The connection broke.  `sent` tells whether the whole request had been handed to the
    kernel: if not, the server cannot have seen a complete request line (definite)."""

    def __init__(self, message: str, node: str | None = None, sent: bool = True,
                 responses: list | None = None):
        super().__init__(message, node)
        self.sent = sent
        self.definite = not sent
        self.responses = responses or []   # answers already read (pipelines)


class RequestTimeout(ConnectionLost):
    """No answer within the socket timeout: the request may have been executed."""


class ProtocolMismatch(KVConnectionError):
    """The peer answered something that is not a JSON object line (not a KV Store node?)."""


class ClusterUnavailable(KVConnectionError):
    """ClusterClient gave up: no primary accepted the operation before the deadline.

    `.definite` False means an earlier attempt may have taken effect (an indefinite failure was
    seen); `.last_error` is the last failure, `.attempts` how many requests were sent.
    """

    def __init__(self, message: str, definite: bool, last_error: str | None, attempts: int):
        super().__init__(message)
        self.definite = definite
        self.last_error = last_error
        self.attempts = attempts


class KVError(Exception):
    """An error answer from a node: `.code` (stable, e.g. NOT_FOUND), `.message`, `.definite`
    (True: the operation did not happen), `.answer` (the whole dict), `.node` ("host:port")."""

    def __init__(self, answer: dict, node: str | None = None):
        self.answer = answer
        self.code = answer.get("code") or "ERROR"
        self.message = answer.get("message") or self.code
        definite = answer.get("definite")
        self.definite = (self.code in DEFINITE_CODES) if definite is None else bool(definite)
        self.node = node
        super().__init__(f"{self.code}: {self.message}")

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotPrimary(KVError):
    """NOT_PRIMARY: this node does not lead.  `.primary` / `.primary_addr` name the primary when
    the node knows it (None during an election)."""

    def __init__(self, answer: dict, node: str | None = None):
        super().__init__(answer, node)
        self.primary = answer.get("primary")
        self.primary_addr = answer.get("primary_addr")


class KeyNotFound(KVError, KeyError):
    """NOT_FOUND: the key does not exist.  Also a KeyError, so `except KeyError` works."""

    def __str__(self) -> str:            # KeyError would repr() the message
        return f"{self.code}: {self.message}"


_ERROR_CLASSES = {NOT_PRIMARY: NotPrimary, NOT_FOUND: KeyNotFound}


def error_from_answer(answer: dict, node: str | None = None) -> KVError:
    """The KVError subclass matching an error answer's code."""
    return _ERROR_CLASSES.get(answer.get("code"), KVError)(answer, node)


def check_answer(answer: dict, node: str | None = None) -> dict:
    """Return `answer` if its status is OK, else raise the matching KVError."""
    if answer.get("status") == OK:
        return answer
    raise error_from_answer(answer, node)


def answer_value(answer: dict) -> Any:
    """The value of an OK GET answer: the JSON value, or bytes for a binary value that was SET over
    RESP (the node sends it base64 with "encoding": "base64")."""
    value = answer.get("value")
    if answer.get("encoding") == "base64" and isinstance(value, str):
        return base64.b64decode(value)
    return value


# =============================================================================================
# Helpers
# =============================================================================================
def parse_nodes(nodes: str | Iterable) -> list[str]:
    """"h:p,h:p" or ["h:p", ("h", p), ...] -> ["h:p", ...] (validated, order kept, no duplicates)."""
    if isinstance(nodes, str):
        nodes = [n for n in nodes.split(",") if n.strip()]
    out: list[str] = []
    for n in nodes:
        if isinstance(n, (tuple, list)):
            host, port = n
        else:
            host, sep, port = str(n).strip().rpartition(":")
            if not sep:
                raise ValueError(f"node address {n!r} is not host:port")
        host = host or "127.0.0.1"
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"node address {n!r}: port {port!r} is not a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"node address {n!r}: port out of range")
        addr = f"{host}:{port}"
        if addr not in out:
            out.append(addr)
    if not out:
        raise ValueError("no node addresses given")
    return out


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def check_key(key: str) -> str:
    """Keys on the line protocol: a non-empty str without whitespace, at most 64 KiB of UTF-8.
    Checked here because a key with a space or newline would silently change the request."""
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    if not key or _WHITESPACE.search(key) is not None:
        raise ValueError(f"invalid key {key!r}: keys are non-empty and contain no whitespace")
    if len(key) > KEY_MAX_BYTES // 4 and len(key.encode("utf-8", "surrogatepass")) > KEY_MAX_BYTES:
        raise ValueError(f"key too long (max {KEY_MAX_BYTES} bytes)")
    return key


def encode_value(value: Any) -> str:
    """A value as it goes on the wire: compact JSON (NaN/Infinity refused: not valid JSON)."""
    try:
        return _encode_value(value)
    except ValueError as e:
        raise ValueError(f"value cannot be stored: {e} (NaN and Infinity are not JSON)") from None


def parse_value(text: str) -> Any:
    """What the server does with a SET value typed by hand: JSON if it parses, else the raw string.
    Used by the REPL so `set a 1` stores 1 and `set b hello world` stores "hello world"."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return text


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    f = float(text)
    if f in (float("inf"), float("-inf")):       # 1e400: the server keeps such a value as text
        raise ValueError("number out of range")
    return f


# =============================================================================================
# KVStoreClient
# =============================================================================================
class KVStoreClient:
    """A client for one node over the line protocol (DESIGN §3.1).

    Callers use: connect(), disconnect()/close(), send_command(line), set, get, delete, ping,
    status, keys, exists, dbsize, auth, pipeline(); `with KVStoreClient(...) as c:`.

    Invariants:
      - one persistent TCP connection (TCP_NODELAY), opened lazily by the first request and again
        by the first request after it broke; a request is one sendall() of one encoded line and
        its answer one readline() from a buffered socket file;
      - protocol answers come back as the node's dicts ({"status": "OK", ...} or
        {"status": "ERROR", "code", "message", "definite"}); nothing is raised for them;
      - transport failures raise KVConnectionError subclasses (ConnectionError): ConnectFailed
        (never sent), ConnectionLost(sent=False) (the line was not fully handed over), and
        ConnectionLost(sent=True) / RequestTimeout (it may have been executed).  After any of them
        the connection is closed, so a late answer can never be read as the next one's;
      - before reusing a connection idle for more than 50 ms, one select() checks that the node
        has not closed it (a restarted node), so such a request is sent on a fresh connection
        instead of failing indefinitely;
      - not thread-safe: use one client per thread (ClusterClient does this for you).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, timeout: float | None = 5.0,
                 password: str | None = None, connect_timeout: float | None = None):
        self.host = host
        self.port = int(port)
        self.address = f"{host}:{self.port}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.password = password
        self._sock: socket.socket | None = None
        self._rfile = None
        self._last_io = 0.0

    # -- connection
    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> bool:
        """Open the connection (and AUTH if a password was given).  Returns True; raises
        ConnectFailed if the node cannot be reached, KVError if AUTH is refused."""
        if self._sock is not None:
            return True
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {self.address}: {_os_reason(e)}", self.address) from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
        except OSError as e:
            sock.close()
            raise ConnectFailed(f"cannot set up connection to {self.address}: {e}", self.address) from e
        self._sock = sock
        self._rfile = sock.makefile("rb")
        self._last_io = time.monotonic()
        if self.password is not None:
            answer = self._roundtrip(f"AUTH {self.password}\n".encode())
            if answer.get("status") != OK:
                self.close()
                raise error_from_answer(answer, self.address)
        return True

    def disconnect(self) -> None:
        """Close the connection (the next request reconnects)."""
        self.close()

    def close(self) -> None:
        sock, rfile = self._sock, self._rfile
        self._sock = self._rfile = None
        if rfile is not None:
            try:
                rfile.close()
            except OSError:
                pass       # closing a broken buffered reader: nothing left to release
        if sock is not None:
            sock.close()

    def set_timeout(self, timeout: float | None) -> None:
        """Change the per-request timeout (also for the open connection)."""
        self.timeout = timeout
        if self._sock is not None:
            self._sock.settimeout(timeout)

    def __del__(self) -> None:
        # ClusterClient's per-thread clients die with their thread: close the socket with them
        if self.__dict__.get("_sock") is not None:
            self.close()

    def __enter__(self) -> "KVStoreClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KVStoreClient({self.address!r}, {'connected' if self._sock else 'idle'})"

    # -- the wire
    def _stale(self) -> bool:
        """True if the idle connection was closed by the node (EOF or error pending)."""
        try:
            readable, _, _ = select.select((self._sock,), (), (), 0)
            if not readable:
                return False
            return True   # EOF, an error, or bytes nobody asked for: either way unusable
        except (OSError, ValueError):
            return True

    def _roundtrip(self, data: bytes) -> dict:
        """Send one encoded request line, read one answer line."""
        sock = self._sock
        if sock is None:
            self.connect()
            sock = self._sock
        elif time.monotonic() - self._last_io > _IDLE_CHECK_S and self._stale():
            self.close()
            self.connect()
            sock = self._sock
        try:
            sock.sendall(data)
        except OSError as e:
            self.close()
            raise ConnectionLost(f"connection to {self.address} lost while sending: {_os_reason(e)}",
                                 self.address, sent=False) from e
        except BaseException:          # KeyboardInterrupt mid-send: the stream is unusable
            self.close()
            raise
        try:
            line = self._rfile.readline()
        except TimeoutError as e:
            self.close()
            raise RequestTimeout(f"no answer from {self.address} within {self.timeout}s "
                                 "(the request may have been executed)", self.address) from e
        except OSError as e:
            self.close()
            raise ConnectionLost(f"connection to {self.address} lost awaiting the answer: "
                                 f"{_os_reason(e)} (the request may have been executed)", self.address) from e
        except BaseException:          # KeyboardInterrupt: a late answer must not be read later
            self.close()
            raise
        if not line:
            self.close()
            raise ConnectionLost(f"{self.address} closed the connection before answering "
                                 "(the request may have been executed)", self.address)
        self._last_io = time.monotonic()
        try:
            answer = json.loads(line)
        except ValueError as e:
            self.close()
            raise ProtocolMismatch(f"{self.address} answered {line[:80]!r}, not a JSON line", self.address) from e
        if not isinstance(answer, dict):
            self.close()
            raise ProtocolMismatch(f"{self.address} answered {line[:80]!r}, not a JSON object", self.address)
        return answer

    def send_command(self, line: str) -> dict:
        """Send one raw request line (without the newline); return the answer dict."""
        if "\n" in line or "\r" in line:
            raise ValueError("a request is one line: no newline inside")
        return self._roundtrip((line + "\n").encode("utf-8"))

    # -- commands (answer dicts, as the seed)
    def set(self, key: str, value: Any) -> dict:
        """SET key to any JSON value; {"status": "OK", "message": "Key 'k' set"}."""
        return self._roundtrip(f"SET {check_key(key)} {encode_value(value)}\n".encode())

    def get(self, key: str) -> dict:
        """{"status": "OK", "value": v} or the NOT_FOUND error answer."""
        return self._roundtrip(f"GET {check_key(key)}\n".encode())

    def delete(self, key: str) -> dict:
        """{"status": "OK", ...} or the NOT_FOUND error answer."""
        return self._roundtrip(f"DELETE {check_key(key)}\n".encode())

    def exists(self, key: str) -> dict:
        """{"status": "OK", "exists": bool, "count": 0|1}."""
        return self._roundtrip(f"EXISTS {check_key(key)}\n".encode())

    def keys(self, pattern: str = "*") -> dict:
        """{"status": "OK", "keys": [...sorted], "count": n} for a Redis-style glob."""
        return self._roundtrip(f"KEYS {_check_pattern(pattern)}\n".encode())

    def dbsize(self) -> dict:
        return self._roundtrip(b"DBSIZE\n")

    def ping(self) -> dict:
        return self._roundtrip(b"PING\n")

    def status(self) -> dict:
        """The node's STATUS answer (role, term, primary, indexes, digest, peers, pid, ...)."""
        return self._roundtrip(b"STATUS\n")

    def auth(self, password: str) -> dict:
        """AUTH; on success the password is remembered for reconnections."""
        if not password or _WHITESPACE.search(password):
            raise ValueError("password must be non-empty without whitespace")
        answer = self._roundtrip(f"AUTH {password}\n".encode())
        if answer.get("status") == OK:
            self.password = password
        return answer

    def pipeline(self) -> "Pipeline":
        return Pipeline(self)

    # -- Redis data commands over the line protocol (answer dicts; see docs/CLUSTERING.md)
    def set_ex(self, key: str, value: Any, seconds: int) -> dict:
        """SET with a TTL: `SET <key> <json> EX <seconds>`."""
        return self._roundtrip(line_set_ex(key, value, seconds))

    def incr(self, key: str, by: int = 1) -> dict:
        """{"status": "OK", "value": n} (INCRBY)."""
        return self._roundtrip(line_incr(key, by))

    def mget(self, keys: Iterable[str]) -> dict:
        """{"status": "OK", "values": [...], "found": [bool, ...]}."""
        return self._roundtrip(line_mget(keys))

    def mset(self, mapping: dict) -> dict:
        """Every key at once, atomically (one log entry); values JSON without whitespace."""
        return self._roundtrip(line_mset(mapping))

    def expire(self, key: str, seconds: int) -> dict:
        """{"status": "OK", "set": bool} (false: no such key)."""
        return self._roundtrip(line_key_cmd("EXPIRE", key, seconds))

    def ttl(self, key: str) -> dict:
        """{"status": "OK", "ttl": seconds}; -1 no TTL, -2 no such key."""
        return self._roundtrip(line_key_cmd("TTL", key))

    def persist(self, key: str) -> dict:
        return self._roundtrip(line_key_cmd("PERSIST", key))

    def cas(self, key: str, expected: Any, new: Any) -> dict:
        """Compare-and-set: {"status": "OK", "swapped": bool, "found": bool, "value": old}."""
        return self._roundtrip(line_cas(key, expected, new))


# Request lines of the Redis data commands (shared by KVStoreClient and ClusterClient)
def _token(value: Any, what: str) -> str:
    text = encode_value(value)
    if _WHITESPACE.search(text):
        raise ValueError(f"{what} must encode to JSON without whitespace: {text[:40]!r}")
    return text


def line_set_ex(key: str, value: Any, seconds: int) -> bytes:
    return f"SET {check_key(key)} {encode_value(value)} EX {int(seconds)}\n".encode()


def line_incr(key: str, by: int) -> bytes:
    return f"INCRBY {check_key(key)} {int(by)}\n".encode()


def line_mget(keys: Iterable[str]) -> bytes:
    return ("MGET " + " ".join(check_key(k) for k in keys) + "\n").encode()


def line_mset(mapping: dict) -> bytes:
    return ("MSET " + " ".join(f"{check_key(k)} {_token(v, 'MSET values')}" for k, v in mapping.items())
            + "\n").encode()


def line_key_cmd(cmd: str, key: str, *args: int) -> bytes:
    return (" ".join([cmd, check_key(key), *(str(int(a)) for a in args)]) + "\n").encode()


def line_cas(key: str, expected: Any, new: Any) -> bytes:
    return f"CAS {check_key(key)} {_token(expected, 'CAS expected value')} {encode_value(new)}\n".encode()


def _check_pattern(pattern: str) -> str:
    if not pattern or _WHITESPACE.search(pattern):
        raise ValueError(f"invalid pattern {pattern!r}: non-empty, no whitespace")
    return pattern


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


class Pipeline:
    """Queue requests, then execute() sends them all in one write and reads the answers in order.

    Methods mirror KVStoreClient's and return the pipeline, so calls chain:
        answers = client.pipeline().set("a", 1).get("a").execute()
    execute() returns the list of answer dicts (errors included, never raised) and empties the
    queue.  If the connection breaks, ConnectionLost carries `.responses` read so far; the requests
    after them may or may not have been executed.  As a context manager, unexecuted requests are
    discarded on exit.
    """

    def __init__(self, client: KVStoreClient):
        self._client = client
        self._queue: list[bytes] = []

    def __len__(self) -> int:
        return len(self._queue)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self._queue.clear()

    def send_command(self, line: str) -> "Pipeline":
        if "\n" in line or "\r" in line:
            raise ValueError("a request is one line: no newline inside")
        self._queue.append((line + "\n").encode("utf-8"))
        return self

    def set(self, key: str, value: Any) -> "Pipeline":
        self._queue.append(f"SET {check_key(key)} {encode_value(value)}\n".encode())
        return self

    def get(self, key: str) -> "Pipeline":
        self._queue.append(f"GET {check_key(key)}\n".encode())
        return self

    def delete(self, key: str) -> "Pipeline":
        self._queue.append(f"DELETE {check_key(key)}\n".encode())
        return self

    def exists(self, key: str) -> "Pipeline":
        self._queue.append(f"EXISTS {check_key(key)}\n".encode())
        return self

    def keys(self, pattern: str = "*") -> "Pipeline":
        self._queue.append(f"KEYS {_check_pattern(pattern)}\n".encode())
        return self

    def ping(self) -> "Pipeline":
        self._queue.append(b"PING\n")
        return self

    def status(self) -> "Pipeline":
        self._queue.append(b"STATUS\n")
        return self

    def execute(self) -> list[dict]:
        queue, self._queue = self._queue, []
        if not queue:
            return []
        c = self._client
        try:
            first = c._roundtrip(b"".join(queue))   # sends everything, reads the first answer
        except ConnectionLost as e:
            if e.sent or len(queue) == 1:
                raise
            # sendall broke part-way: the complete lines before the break may have been executed
            raise ConnectionLost(str(e), c.address, sent=True) from e
        answers = [first]
        rfile = c._rfile
        try:
            for _ in range(len(queue) - 1):
                line = rfile.readline()
                if not line:
                    raise ConnectionLost(f"{c.address} closed the connection in the middle of a "
                                         f"pipeline ({len(answers)} of {len(queue)} answers read)",
                                         c.address, sent=True, responses=answers)
                answers.append(json.loads(line))
        except TimeoutError as e:
            c.close()
            raise RequestTimeout(f"{c.address} stopped answering a pipeline ({len(answers)} of "
                                 f"{len(queue)} answers read)", c.address, responses=answers) from e
        except ValueError as e:
            c.close()
            raise ProtocolMismatch(f"{c.address} answered a non-JSON line in a pipeline", c.address) from e
        except OSError as e:           # ConnectionLost raised above is an OSError too
            c.close()
            if isinstance(e, ConnectionLost):
                raise
            raise ConnectionLost(f"connection to {c.address} lost in a pipeline: {_os_reason(e)}",
                                 c.address, sent=True, responses=answers) from e
        except BaseException:
            c.close()
            raise
        c._last_io = time.monotonic()
        return answers


# =============================================================================================
# ClusterClient
# =============================================================================================
class PrimaryInfo(NamedTuple):
    node_id: str
    addr: str
    term: int


class ClusterClient:
    """The whole cluster as one store: finds the primary, rides through failovers.

    Callers use: set, get, delete, exists, keys, execute_command, status(node=None),
    cluster_status(), primary(), node(name) (a raw KVStoreClient), known_nodes(), close();
    the Redis data commands set_ex, incr, mget, mget_found, mset, expire, ttl, persist, cas and
    watch_update (an optimistic WATCH/MULTI/EXEC loop).

    Routing: requests go to the node believed to be primary (`primary_hint`); with no belief, to
    the nodes in turn.  A NOT_PRIMARY answer's `primary_addr` is followed at once; a node that
    does not answer is skipped.  Once every candidate failed in a round, the client sleeps
    (exponential backoff from `backoff_initial` 20 ms doubling to `backoff_max` 250 ms, with
    jitter: a random 50-100 % of the step) and starts a new round, until `deadline` seconds have
    passed since the call started; then it raises ClusterUnavailable, which says what failed last.
    (Why 250 ms and not 500: measured on a 3-node cluster, a 500 ms cap added a median ~340 ms
    between the new primary's election and the first acknowledged write, 250 ms about 70 ms; a
    client still asks each node at most four times a second while there is no primary.)

    Retry rules (definite = the operation did not happen; indefinite = it may have):

        | failure                                     | kind       | GET EXISTS KEYS | SET   | DELETE       | execute_command |
        |---------------------------------------------|------------|-----------------|-------|--------------|-----------------|
        | connect refused / unreachable               | definite   | retry           | retry | retry        | retry           |
        | connection broke before the line was sent   | definite   | retry           | retry | retry        | retry           |
        | NOT_PRIMARY (go to primary_addr, else next) | definite   | retry           | retry | retry        | retry           |
        | NO_QUORUM with "definite": true             | definite   | retry           | retry | retry        | retry           |
        | CHANGE_IN_PROGRESS (CLUSTER ADD/REMOVE)     | definite   | -               | -     | -            | retry           |
        | DISK_FULL (this node cannot persist; next)  | definite   | retry           | retry | retry        | retry           |
        | connection lost after sending / no answer   | indefinite | retry           | retry | retry (a)    | raise           |
        | TIMEOUT, NO_QUORUM with "definite": false   | indefinite | retry           | retry | retry (a)    | raise KVError   |
        | NOT_FOUND                                   | definite   | KeyNotFound (b) | -     | False (a)    | raise           |
        (the data commands: MGET, TTL, SET_EX, MSET, EXPIRE, PERSIST are retried like SET/GET;
         INCR and CAS like execute_command: never re-sent after an indefinite failure)
        | BAD_REQUEST, UNKNOWN_COMMAND, TOO_LARGE,    | definite   | raise           | raise | raise        | raise           |
        |   AUTH_REQUIRED, AUTH_FAILED, other codes   |            |                 |       |              |                 |
        |   (TOO_MANY_CLIENTS: the node is full)      |            |                 |       |              |                 |

        (a) after an indefinite failure, a DELETE retry answering NOT_FOUND returns True.
        (b) get(key, default) returns the default instead.
        "retry" = re-send, within the deadline; "raise" = the caller gets the exception at once.

    Idempotence, precisely:
      - GET, EXISTS, KEYS, STATUS read only.
      - SET is a blind overwrite: applying it twice leaves the same value.  Caveat: if the first,
        indefinite attempt did land and another client wrote the key in between, the retry puts
        our value back over theirs (last writer wins, but "last" is our retry).  Use
        execute_command(..., idempotent=False) when that matters.
      - DELETE is retried too; a retried DELETE that answers NOT_FOUND after an indefinite
        failure counts as success (True): most likely our earlier attempt removed the key.
      - execute_command() is not assumed idempotent unless told so (idempotent=True).
    ClusterUnavailable.definite is False when some attempt failed indefinitely (the write may
    have happened), True when no attempt can have taken effect.

    get(): a missing key raises KeyNotFound (also a KeyError), because null is a storable value
    and must be told from "missing"; get(key, default) returns `default` instead.

    Threads: a ClusterClient may be shared by any number of threads.  Each thread gets its own
    connection to each node (threading.local), so requests of different threads never interleave
    on a socket; the primary hint and the membership map are shared (lock-protected or single
    attribute stores).  close() closes every thread's connections: call it when the others are
    done.
    """

    def __init__(self, nodes: str | Iterable = DEFAULT_NODES, deadline: float = 10.0,
                 password: str | None = None, timeout: float = 5.0,
                 backoff_initial: float = 0.02, backoff_max: float = 0.25,
                 rng: random.Random | None = None):
        self.nodes = parse_nodes(nodes)
        self.deadline = float(deadline)
        self.password = password
        self.timeout = float(timeout)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._addrs: list[str] = list(self.nodes)     # the given nodes + members learned from STATUS
        self._ids: dict[str, str] = {}                # node id -> "host:port"
        self._primary: str | None = None              # address believed to lead
        self._rr = 0
        self._local = threading.local()
        self._all_conns: weakref.WeakSet = weakref.WeakSet()
        self.retries = 0                              # requests re-sent, for demos and curiosity

    # -- membership and connections
    @property
    def primary_hint(self) -> str | None:
        """Address of the node this client currently believes is primary (None: unknown)."""
        return self._primary

    def known_nodes(self) -> dict[str, str]:
        """Node id -> address for every member learned so far (from STATUS and NOT_PRIMARY)."""
        with self._lock:
            return dict(self._ids)

    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._addrs)

    def resolve(self, node: str) -> str:
        """A node id ("node2") or "host:port" -> "host:port"."""
        with self._lock:
            addr = self._ids.get(node)
        if addr is None and ":" not in node:
            self.cluster_status()                     # learn the member ids
            with self._lock:
                addr = self._ids.get(node)
        if addr is None:
            if ":" in node:
                return parse_nodes([node])[0]
            raise ValueError(f"unknown node {node!r} (known: {', '.join(sorted(self._ids)) or 'none'})")
        return addr

    def _learn(self, node_id: str | None, addr: str | None, reached: bool = False) -> None:
        """Remember a member.  `reached`: we talked to node_id at addr ourselves, which wins over
        what peers report (so "localhost:6380" given by the user is not listed twice)."""
        if not addr:
            return
        with self._lock:
            if node_id:
                known = self._ids.get(node_id)
                if known is not None and (not reached or (known in self.nodes and addr not in self.nodes)):
                    return                            # addresses the user gave win over learned ones
                self._ids[node_id] = addr
            if addr not in self._addrs:
                self._addrs.append(addr)

    def _learn_status(self, st: dict, addr: str) -> None:
        self._learn(st.get("node_id"), addr, reached=True)
        for pid, p in (st.get("peers") or {}).items():
            if isinstance(p, dict):
                self._learn(pid, p.get("addr"))

    def node(self, node: str) -> KVStoreClient:
        """This thread's KVStoreClient for one node (id or "host:port"): raw answer dicts."""
        return self._conn(self.resolve(node))

    def _conn(self, addr: str) -> KVStoreClient:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        c = conns.get(addr)
        if c is None:
            host, port = split_addr(addr)
            c = KVStoreClient(host, port, timeout=self.timeout, password=self.password,
                              connect_timeout=min(self.timeout, 2.0))
            conns[addr] = c
            with self._lock:
                self._all_conns.add(c)
        return c

    def close(self) -> None:
        with self._lock:
            conns = list(self._all_conns)
        for c in conns:
            c.close()

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_untried(self, tried: set) -> str | None:
        with self._lock:
            n = len(self._addrs)
            for i in range(n):
                addr = self._addrs[(self._rr + i) % n]
                if addr not in tried:
                    self._rr = (self._rr + i + 1) % n
                    return addr
        return None

    def _drop_primary(self, addr: str) -> None:
        if self._primary == addr:
            self._primary = None

    # -- the retry loop
    def _request(self, data: bytes, op: str, idempotent: bool,
                 primary_only: bool = True) -> tuple[dict, bool, str]:
        """Send one request to the primary, retrying per the class rules.

        Returns (answer, uncertain, addr): the first answer that is OK or not retryable, whether an
        earlier attempt failed indefinitely, and the node that answered.  An OK answer makes its
        node the primary hint only when `primary_only` (secondaries refuse such requests)."""
        start = time.monotonic()
        deadline = start + self.deadline
        delay = self.backoff_initial
        tried: set[str] = set()
        uncertain = False
        attempts = 0
        last: str | None = None
        while True:
            addr = self._primary
            if addr is None or addr in tried:
                addr = self._next_untried(tried)
            if addr is None:                          # a whole round failed: back off
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._unavailable(op, start, attempts, last, uncertain)
                time.sleep(min(remaining, delay * (0.5 + 0.5 * self._rng.random())))
                delay = min(delay * 2, self.backoff_max)
                tried.clear()
                continue
            if attempts and time.monotonic() >= deadline:
                raise self._unavailable(op, start, attempts, last, uncertain)
            tried.add(addr)
            if attempts:
                self.retries += 1
            attempts += 1
            conn = self._conn(addr)
            remaining = deadline - time.monotonic()
            want = self.timeout if remaining >= self.timeout else max(remaining, 0.05)
            if conn.timeout != want:
                conn.set_timeout(want)
            try:
                answer = conn._roundtrip(data)        # (a refused AUTH raises KVError: not retried)
            except KVConnectionError as e:
                last = str(e)
                self._drop_primary(addr)
                if not e.definite:
                    if not idempotent:
                        raise
                    uncertain = True
                continue
            if answer.get("status") == OK:
                if primary_only:
                    self._primary = addr
                return answer, uncertain, addr
            code = answer.get("code")
            if code == NOT_PRIMARY:
                self._drop_primary(addr)
                hint = answer.get("primary_addr")
                self._learn(answer.get("primary"), hint)
                if hint and hint != addr:
                    self._primary = hint
                last = f"{addr}: {answer.get('message') or code}"
                continue
            if code == DISK_FULL:          # refused before append: another node may lead soon
                self._drop_primary(addr)
                last = f"{addr}: {code}: {answer.get('message')}"
                continue
            if code == CHANGE_IN_PROGRESS:          # a membership change in flight: back off, retry
                last = f"{addr}: {code}: {answer.get('message')}"
                continue
            if code in INDEFINITE_CODES:
                definite = answer.get("definite")
                if definite is None:
                    definite = code in DEFINITE_CODES
                last = f"{addr}: {code}: {answer.get('message')}"
                if not definite:
                    if not idempotent:
                        raise error_from_answer(answer, addr)
                    uncertain = True
                # the node may have lost its majority: try the others before it again
                continue
            return answer, uncertain, addr            # NOT_FOUND and the rest: the caller decides

    def _unavailable(self, op: str, start: float, attempts: int, last: str | None,
                     uncertain: bool) -> ClusterUnavailable:
        took = time.monotonic() - start
        outcome = ("an earlier attempt may have been applied" if uncertain
                   else "the operation was not applied")
        msg = (f"cluster unavailable: no primary accepted {op} within {took:.1f}s "
               f"({attempts} attempts over {len(self.addresses())} node(s); {outcome}); "
               f"last error: {last or 'none'}")
        return ClusterUnavailable(msg, definite=not uncertain, last_error=last, attempts=attempts)

    # -- key/value operations
    def set(self, key: str, value: Any) -> bool:
        """Store any JSON value; True once a majority has it.  Retried as an idempotent write."""
        data = f"SET {check_key(key)} {encode_value(value)}\n".encode()
        answer, _, addr = self._request(data, "SET", idempotent=True)
        check_answer(answer, addr)
        return True

    _RAISE = object()

    def get(self, key: str, default: Any = _RAISE) -> Any:
        """The value of `key` (any JSON value, None for a stored null; bytes for a binary value
        set over RESP).  Missing: raises KeyNotFound, or returns `default` if one is given."""
        answer, _, addr = self._request(f"GET {check_key(key)}\n".encode(), "GET", idempotent=True)
        if answer.get("status") == OK:
            return answer_value(answer)
        if answer.get("code") == NOT_FOUND and default is not ClusterClient._RAISE:
            return default
        raise error_from_answer(answer, addr)

    def delete(self, key: str) -> bool:
        """Remove `key`.  True if it was removed, False if it did not exist.  A retry that finds
        the key gone after an indefinite failure returns True (see the retry table)."""
        answer, uncertain, addr = self._request(f"DELETE {check_key(key)}\n".encode(), "DELETE",
                                                idempotent=True)
        if answer.get("status") == OK:
            return True
        if answer.get("code") == NOT_FOUND:
            return uncertain
        raise error_from_answer(answer, addr)

    def exists(self, key: str) -> bool:
        answer, _, addr = self._request(f"EXISTS {check_key(key)}\n".encode(), "EXISTS", idempotent=True)
        check_answer(answer, addr)
        if "exists" in answer:
            return bool(answer["exists"])
        return bool(answer.get("count", answer.get("value")))

    def keys(self, pattern: str = "*") -> list[str]:
        """Keys matching a Redis-style glob, sorted."""
        answer, _, addr = self._request(f"KEYS {_check_pattern(pattern)}\n".encode(), "KEYS", idempotent=True)
        check_answer(answer, addr)
        keys = answer.get("keys", answer.get("value"))
        return list(keys or [])

    def set_ex(self, key: str, value: Any, seconds: int) -> bool:
        """Store a value that expires after `seconds` (an absolute deadline is fixed by the
        primary when the write is accepted).  Retried like set()."""
        answer, _, addr = self._request(line_set_ex(key, value, seconds), "SET", idempotent=True)
        check_answer(answer, addr)
        return True

    def incr(self, key: str, by: int = 1) -> int:
        """Add `by` to an integer counter (a missing key counts as 0); returns the new value.
        Not re-sent after an indefinite failure: the increment may have happened."""
        answer, _, addr = self._request(line_incr(key, by), "INCRBY", idempotent=False)
        return check_answer(answer, addr)["value"]

    def mget(self, keys: Iterable[str]) -> list:
        """The values of several keys, read at one point in time; None for a missing key (see
        mget_found() to tell a stored null apart)."""
        return [v for v, _ in self.mget_found(keys)]

    def mget_found(self, keys: Iterable[str]) -> list[tuple[Any, bool]]:
        answer, _, addr = self._request(line_mget(keys), "MGET", idempotent=True)
        a = check_answer(answer, addr)
        return list(zip(a["values"], a["found"]))

    def mset(self, mapping: dict) -> bool:
        """Set every key at once, atomically (one log entry).  Values: JSON without whitespace
        (numbers, true/false/null, compact strings/lists/objects)."""
        answer, _, addr = self._request(line_mset(mapping), "MSET", idempotent=True)
        check_answer(answer, addr)
        return True

    def expire(self, key: str, seconds: int) -> bool:
        """Give `key` a TTL; False if it does not exist.  Retried (a retry moves the deadline
        by the retry's delay at most)."""
        answer, _, addr = self._request(line_key_cmd("EXPIRE", key, seconds), "EXPIRE", idempotent=True)
        return bool(check_answer(answer, addr)["set"])

    def ttl(self, key: str) -> int:
        """Seconds left (rounded); -1: no TTL; -2: no such key."""
        answer, _, addr = self._request(line_key_cmd("TTL", key), "TTL", idempotent=True)
        return check_answer(answer, addr)["ttl"]

    def persist(self, key: str) -> bool:
        answer, _, addr = self._request(line_key_cmd("PERSIST", key), "PERSIST", idempotent=True)
        return bool(check_answer(answer, addr)["persisted"])

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Compare-and-set: write `new` only if the current value equals `expected` (compared as
        the bytes RESP would return, so 42 equals "42").  Not re-sent after an indefinite failure."""
        answer, _, addr = self._request(line_cas(key, expected, new), "CAS", idempotent=False)
        return bool(check_answer(answer, addr)["swapped"])

    def watch_update(self, key: str, fn, attempts: int = 1000) -> tuple[Any, int]:
        """Optimistic read-modify-write with WATCH/MULTI/EXEC on the primary: read `key` (None if
        missing), write fn(value); when another client changed the key in between, EXEC is aborted
        and the loop tries again.  Returns (new value, attempts used).  A failover restarts the
        attempt; an EXEC whose outcome is unknown raises (it may have applied)."""
        check_key(key)
        for n in range(1, attempts + 1):
            addr = self.primary().addr
            conn = self._conn(addr)
            try:
                check_answer(conn.send_command(f"WATCH {key}"), addr)
                cur = conn.send_command(f"GET {key}")
                value = answer_value(cur) if cur.get("status") == OK else None
                if cur.get("status") != OK and cur.get("code") != NOT_FOUND:
                    raise error_from_answer(cur, addr)
                new = fn(value)
                check_answer(conn.send_command("MULTI"), addr)
                check_answer(conn.send_command(f"SET {key} {encode_value(new)}"), addr)
            except (NotPrimary, KVConnectionError):
                self._drop_primary(addr)
                conn.close()
                continue
            answer = check_answer(conn.send_command("EXEC"), addr)   # indefinite: raises
            if not answer.get("aborted"):
                return new, n
        raise ClusterUnavailable(f"watch_update({key!r}): EXEC aborted {attempts} times", True, None, attempts)

    def execute_command(self, line: str, idempotent: bool = False) -> dict:
        """Any request line, routed to the primary; the OK answer dict, or KVError raised.
        Not re-sent after an indefinite failure unless idempotent=True."""
        if "\n" in line or "\r" in line:
            raise ValueError("a request is one line: no newline inside")
        op = line.split(None, 1)[0].upper() if line.strip() else "request"
        answer, _, addr = self._request((line + "\n").encode("utf-8"), op, idempotent,
                                        primary_only=op not in ANY_NODE_COMMANDS)
        return check_answer(answer, addr)

    # -- membership (CLUSTER ADD / REMOVE / MEMBERS on the primary)
    def cluster_add(self, node_id: str, addr: str) -> dict:
        """Add a node (started with --join or an empty data dir) as a learner; the primary
        promotes it to voter once caught up.  The OK answer carries voters and learners."""
        return self.execute_command(f"CLUSTER ADD {node_id} {addr}")

    def cluster_remove(self, node_id: str) -> dict:
        return self.execute_command(f"CLUSTER REMOVE {node_id}")

    def cluster_members(self) -> dict:
        """{"voters": {id: addr}, "learners": {id: addr}, "config_index", "config_committed",
        "progress": {id: {match_index, lag, reachable}}} from the primary."""
        return self.execute_command("CLUSTER MEMBERS", idempotent=True)

    # -- cluster inspection
    def _status_of(self, addr: str, timeout: float | None = None) -> dict:
        """STATUS of one node; one retry on a fresh connection if the old one had broken."""
        conn = self._conn(addr)
        t = min(self.timeout, timeout or self.timeout)
        if conn.timeout != t:
            conn.set_timeout(t)
        try:
            st = conn.status()
        except ConnectFailed:
            raise
        except KVConnectionError:
            st = conn.status()
        check_answer(st, addr)
        self._learn_status(st, addr)
        return st

    def status(self, node: str | None = None) -> dict:
        """STATUS of one node (id or "host:port"); of the primary when node is None."""
        if node is None:
            return self._find_primary()[1]
        return self._status_of(self.resolve(node))

    def cluster_status(self, timeout: float = 2.0) -> dict[str, dict]:
        """STATUS of every known member, keyed by address (given order, then learned ones).
        An unreachable node maps to {"status": "ERROR", "code": "UNREACHABLE", "address", "message"}."""
        out: dict[str, dict] = {}
        i = 0
        while True:
            addrs = self.addresses()                  # may grow as peers are learned
            if i >= len(addrs):
                break

            addr = addrs[i]
            i += 1
            try:
                st = self._status_of(addr, timeout)
                if any(o.get("node_id") == st.get("node_id") for o in out.values()):
                    continue                          # the same node under a second address
                out[addr] = st
            except KVError as e:          # e.g. AUTH_FAILED: the node answered, and refused
                out[addr] = {**e.answer, "status": "ERROR", "code": e.code, "address": addr, "message": e.message}
            except KVConnectionError as e:
                out[addr] = {"status": "ERROR", "code": "UNREACHABLE", "address": addr, "message": str(e)}
        leaders = [(s.get("election_term", 0), a) for a, s in out.items() if s.get("role") == "primary"]
        if leaders:
            self._primary = max(leaders)[1]           # a deposed primary has the lower term
        return out

    def _find_primary(self) -> tuple[PrimaryInfo, dict]:
        start = time.monotonic()
        deadline = start + self.deadline
        delay = self.backoff_initial
        last = None
        attempts = 0
        while True:
            hint = self._primary
            if hint is not None:                      # fast path: ask the believed primary
                try:
                    attempts += 1
                    st = self._status_of(hint, 1.0)
                    if st.get("role") == "primary":
                        return PrimaryInfo(st["node_id"], st.get("address") or hint, st.get("election_term", 0)), st
                except KVError as e:
                    if e.code in AUTH_CODES:
                        raise                      # a wrong password does not get better by waiting
                    last = str(e)
                except KVConnectionError as e:
                    last = str(e)
                self._drop_primary(hint)
            best = None
            for addr, st in self.cluster_status(1.0).items():
                attempts += 1
                if st.get("code") in AUTH_CODES:
                    raise error_from_answer(st, addr)   # definite and final: report it at once
                if st.get("status") != OK:
                    last = st.get("message")
                elif st.get("role") == "primary":
                    if best is None or st.get("election_term", 0) > best[1].get("election_term", 0):
                        best = (addr, st)
            if best is not None:
                addr, st = best
                self._primary = addr
                return PrimaryInfo(st["node_id"], st.get("address") or addr, st.get("election_term", 0)), st
            last = last or "no node reports itself primary (election in progress?)"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._unavailable("STATUS (find primary)", start, attempts, last, False)
            time.sleep(min(remaining, delay * (0.5 + 0.5 * self._rng.random())))
            delay = min(delay * 2, self.backoff_max)

    def primary(self) -> PrimaryInfo:
        """(node_id, addr, term) of the current primary, waiting up to the deadline for one.
        If two nodes claim leadership (a deposed one that has not noticed yet), the higher term wins."""
        return self._find_primary()[0]
