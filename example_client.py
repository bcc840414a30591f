#!/usr/bin/env python3
"""KV Store client library, demos and interactive REPL.

Layout (reading order):
    errors           KVConnectionError (transport; a ConnectionError) -> ConnectFailed, ConnectionLost,
                     RequestTimeout, ProtocolMismatch, ClusterUnavailable;
                     KVError (an error answer: .code, .definite) -> NotPrimary, KeyNotFound
    check_answer     turns an answer dict into the value it carries, or raises the matching KVError
    KVStoreClient    one node, one persistent connection, the answer dicts of DESIGN §3.1, pipeline()
    Pipeline         many requests in one write, answers read back in order
    ClusterClient    the whole cluster: primary discovery, NOT_PRIMARY hints, bounded retries under a
                     deadline, error answers as exceptions; one connection per node per thread
    Reporter, demos  `--demo basic|replication|types|restrictions|secondary|concurrent|failover|all`
    Repl             `--demo interactive`: a thin, coloured REPL over ClusterClient
    main             the command line

Write path, seen from here: ClusterClient.set() -> the primary it believes in (or the next node)
-> `SET <key> <json>` -> the primary appends, replicates, answers once a majority has it durable ->
OK; any other answer is either followed (NOT_PRIMARY names the new primary), retried after a
backoff (definite failures always, indefinite ones only for idempotent operations), or raised.

Values go over the wire as JSON (json.dumps of every value, NaN/Infinity refused), so every JSON
type round-trips exactly, and a string that looks like JSON ("42", "true") comes back a string.

The library, the demos and the REPL share this one file on purpose: users copy it as the example.
Only the standard library is needed for the library part; colorama (colours) and psutil (to tell a
killed node's zombie from a live process) are used when present.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, NamedTuple

try:                                    # optional: colours
    import colorama
except ImportError:                     # pragma: no cover - colorama is in requirements.txt
    colorama = None

try:                                    # optional: process inspection for the failover demo
    import psutil
except ImportError:                     # pragma: no cover
    psutil = None

DEFAULT_NODES = ("127.0.0.1:6379", "127.0.0.1:6380", "127.0.0.1:6381")
HERE = Path(__file__).resolve().parent
CLUSTER_MANAGER = HERE / "cluster_manager.py"

# Error codes (DESIGN §3.1).  Definite: the operation did not happen.  Indefinite: it may have.
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
DEFINITE_CODES = frozenset({NOT_PRIMARY, BAD_REQUEST, UNKNOWN_COMMAND, TOO_LARGE, AUTH_REQUIRED,
                            AUTH_FAILED, NOT_FOUND})
INDEFINITE_CODES = frozenset({TIMEOUT, NO_QUORUM})   # NO_QUORUM is definite when the answer says so
# Commands every node answers OK (so an OK answer does not show who is primary).
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
    cluster_status(), primary(), node(name) (a raw KVStoreClient), known_nodes(), close().

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
        | connection lost after sending / no answer   | indefinite | retry           | retry | retry (a)    | raise           |
        | TIMEOUT, NO_QUORUM with "definite": false   | indefinite | retry           | retry | retry (a)    | raise KVError   |
        | NOT_FOUND                                   | definite   | KeyNotFound (b) | -     | False (a)    | raise           |
        | BAD_REQUEST, UNKNOWN_COMMAND, TOO_LARGE,    | definite   | raise           | raise | raise        | raise           |
        |   AUTH_REQUIRED, AUTH_FAILED, other codes   |            |                 |       |              |                 |

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

    def execute_command(self, line: str, idempotent: bool = False) -> dict:
        """Any request line, routed to the primary; the OK answer dict, or KVError raised.
        Not re-sent after an indefinite failure unless idempotent=True."""
        if "\n" in line or "\r" in line:
            raise ValueError("a request is one line: no newline inside")
        op = line.split(None, 1)[0].upper() if line.strip() else "request"
        answer, _, addr = self._request((line + "\n").encode("utf-8"), op, idempotent,
                                        primary_only=op not in ANY_NODE_COMMANDS)
        return check_answer(answer, addr)

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
            except (KVConnectionError, KVError) as e:
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
                except (KVConnectionError, KVError) as e:
                    last = str(e)
                self._drop_primary(hint)
            best = None
            for addr, st in self.cluster_status(1.0).items():
                attempts += 1
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


# =============================================================================================
# Output: colours and the ✓/✗ reporter shared by the demos
# =============================================================================================
class Colours:
    """ANSI colours via colorama when stdout is a terminal (and NO_COLOR is unset); else none."""

    def __init__(self, enabled: bool | None = None, stream=None):
        stream = stream or sys.stdout
        if enabled is None:
            enabled = (stream.isatty() and "NO_COLOR" not in os.environ) or bool(os.environ.get("FORCE_COLOR"))
        self.enabled = enabled and colorama is not None
        if self.enabled:
            if hasattr(colorama, "just_fix_windows_console"):
                colorama.just_fix_windows_console()
            F, S = colorama.Fore, colorama.Style
            self.green, self.red, self.yellow, self.cyan = F.GREEN, F.RED, F.YELLOW, F.CYAN
            self.magenta, self.bold, self.dim, self.reset = F.MAGENTA, S.BRIGHT, S.DIM, S.RESET_ALL
        else:
            self.green = self.red = self.yellow = self.cyan = self.magenta = ""
            self.bold = self.dim = self.reset = ""

    def paint(self, colour: str, text: str) -> str:
        return f"{colour}{text}{self.reset}" if colour else text


class DemoFailed(Exception):
    """Raised inside a demo to stop it after a ✗ that makes the rest meaningless."""


class Reporter:
    """Prints coloured ✓/✗ lines and counts them; exit code 1 if any ✗."""

    def __init__(self, colours: Colours):
        self.c = colours
        self.passed = 0
        self.failed = 0
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)

    def header(self, title: str) -> None:
        c = self.c
        self._print(f"\n{c.bold}{c.cyan}== {title} =={c.reset}")

    def info(self, text: str) -> None:
        self._print(f"  {self.c.dim}{text}{self.c.reset}" if self.c.dim else f"  {text}")

    def ok(self, text: str) -> None:
        self.passed += 1
        self._print(f"  {self.c.paint(self.c.green, '✓')} {text}")

    def fail(self, text: str) -> None:
        self.failed += 1
        self._print(f"  {self.c.paint(self.c.red, '✗')} {text}")

    def warn(self, text: str) -> None:
        self._print(f"  {self.c.paint(self.c.yellow, '!')} {text}")

    def check(self, cond: bool, text: str, detail: str = "") -> bool:
        if cond:
            self.ok(text)
        else:
            self.fail(f"{text}{' — ' + detail if detail else ''}")
        return bool(cond)

    def require(self, cond: bool, text: str, detail: str = "") -> None:
        if not self.check(cond, text, detail):
            raise DemoFailed(text)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same JSON types (True != 1, 1 != 1.0, -0.0 keeps its sign)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and (a != 0 or str(a) == str(b)) or (a != a and b != b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def wait_for(predicate, timeout: float, interval: float = 0.02):
    """Poll predicate() until it returns a truthy value or the timeout passes; returns the last
    value (falsy on timeout).  Exceptions from predicate count as falsy until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = predicate()
        except (KVConnectionError, KVError):
            v = None
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


# =============================================================================================
# Demos
# =============================================================================================
class DemoContext:
    def __init__(self, args: argparse.Namespace, rep: Reporter):
        self.args = args
        self.rep = rep
        self.nodes = parse_nodes(args.nodes)
        self.run = f"{os.getpid()}-{int(time.time()) % 100000}"

    def cluster(self, **kw) -> ClusterClient:
        kw.setdefault("deadline", self.args.deadline)
        return ClusterClient(self.nodes, password=self.args.password, **kw)


def delete_many(cc: ClusterClient, keys: list[str], threads: int = 8) -> int:
    """Delete keys from several threads (each on its own connection); returns how many failed.

    Not one pipeline: a node commits the writes of one connection one after another, so a long
    pipeline of writes takes (writes x commit latency) and can outlast the socket timeout."""
    failed = [0]
    lock = threading.Lock()

    def work(part: list[str]) -> None:
        for k in part:
            try:
                cc.delete(k)
            except (KVConnectionError, KVError):
                with lock:
                    failed[0] += 1

    ths = [threading.Thread(target=work, args=(keys[i::threads],), name=f"cleanup-{i}") for i in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return failed[0]


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def demo_basic(ctx: DemoContext) -> None:
    """SET / GET / DELETE on the primary with KVStoreClient, then the same through ClusterClient."""
    rep = ctx.rep
    rep.header("basic: SET / GET / DELETE")
    with ctx.cluster() as cc:
        p = cc.primary()
        rep.ok(f"primary is {p.node_id} at {p.addr} (term {p.term})")
        host, port = split_addr(p.addr)
        with KVStoreClient(host, port, password=ctx.args.password) as c:
            a = c.ping()
            rep.check(a.get("message") == "PONG", "PING -> PONG", str(a))
            key = f"demo:basic:{ctx.run}:greeting"
            a = c.set(key, "hello world")
            rep.check(a.get("status") == OK, f"SET {key} \"hello world\" -> {a.get('message', a)}", str(a))
            a = c.get(key)
            rep.check(a.get("status") == OK and a.get("value") == "hello world",
                      f"GET {key} -> {json.dumps(a.get('value'))}", str(a))
            a = c.delete(key)
            rep.check(a.get("status") == OK, f"DELETE {key} -> OK", str(a))
            a = c.get(key)
            rep.check(a.get("code") == NOT_FOUND, f"GET after DELETE -> NOT_FOUND ({a.get('message')})", str(a))
            a = c.delete(key)
            rep.check(a.get("code") == NOT_FOUND, "DELETE of a missing key -> NOT_FOUND", str(a))

            n = 100
            pipe = c.pipeline()
            for i in range(n):
                pipe.set(f"demo:basic:{ctx.run}:p{i}", i)
            for i in range(n):
                pipe.get(f"demo:basic:{ctx.run}:p{i}")
            t0 = time.monotonic()
            answers = pipe.execute()
            took = time.monotonic() - t0
            sets_ok = all(x.get("status") == OK for x in answers[:n])
            gets_ok = all(answers[n + i].get("value") == i for i in range(n))
            rep.check(sets_ok and gets_ok, f"pipeline: {n} SETs + {n} GETs in one write, answers in order "
                      f"({_fmt_ms(took)})")

        key = f"demo:basic:{ctx.run}:cc"
        cc.set(key, {"via": "ClusterClient"})
        rep.check(same(cc.get(key), {"via": "ClusterClient"}), "ClusterClient set/get round trip")
        rep.check(cc.exists(key) is True, "ClusterClient exists -> True")
        rep.check(key in cc.keys(f"demo:basic:{ctx.run}:*"), "ClusterClient keys(pattern) lists it")
        rep.check(cc.delete(key) is True, "ClusterClient delete -> True")
        rep.check(cc.delete(key) is False, "ClusterClient delete again -> False (did not exist)")
        try:
            cc.get(key)
            rep.fail("ClusterClient get of a missing key should raise KeyNotFound")
        except KeyNotFound as e:
            rep.ok(f"ClusterClient get of a missing key raises KeyNotFound ({e.message})")
        rep.check(cc.get(key, "fallback") == "fallback", "ClusterClient get(key, default) -> default")
        delete_many(cc, [f"demo:basic:{ctx.run}:p{i}" for i in range(n)])


def _cluster_table(rep: Reporter, statuses: dict[str, dict], names: dict[str, str] | None = None) -> None:
    rep.info(f"{'node':<8} {'address':<21} {'role':<10} {'term':>4} {'commit':>7} {'applied':>8} "
             f"{'keys':>6}  digest")
    for addr, st in statuses.items():
        if st.get("status") != OK:
            name = next((i for i, a in (names or {}).items() if a == addr), "?")
            rep.info(f"{name:<8} {addr:<21} {'DOWN':<10}")
            continue
        rep.info(f"{st.get('node_id', '?'):<8} {addr:<21} {st.get('role', '?'):<10} "
                 f"{st.get('election_term', 0):>4} {st.get('commit_index', 0):>7} "
                 f"{st.get('last_applied', 0):>8} {st.get('keys', 0):>6}  {st.get('digest', '')}")


def _converged(cc: ClusterClient, min_applied: int = 0, expect_nodes: int | None = None):
    """The cluster status if every node is reachable with equal last_applied (>= min_applied)
    and equal digest; else None."""
    sts = cc.cluster_status(1.0)
    ok = [s for s in sts.values() if s.get("status") == OK]
    if expect_nodes is not None and len(ok) < expect_nodes:
        return None
    if len(ok) != len(sts) or not ok:
        return None
    applied = {s.get("last_applied") for s in ok}
    digests = {s.get("digest") for s in ok}
    if len(applied) == 1 and len(digests) == 1 and next(iter(applied)) >= min_applied:
        return sts
    return None


def demo_replication(ctx: DemoContext) -> None:
    """Write through the primary, then watch every node's last_applied and digest converge."""
    rep = ctx.rep
    rep.header("replication: every node applies the same writes")
    with ctx.cluster() as cc:
        p = cc.primary()
        rep.ok(f"primary is {p.node_id} at {p.addr}")
        n = 50
        t0 = time.monotonic()
        for i in range(n):
            cc.set(f"demo:repl:{ctx.run}:{i}", {"i": i, "square": i * i})
        rep.ok(f"wrote {n} keys through the primary in {_fmt_ms(time.monotonic() - t0)}")
        target = cc.status(p.addr).get("commit_index", 0)
        rep.info(f"primary commit index after the writes: {target}")
        t0 = time.monotonic()
        sts = wait_for(lambda: _converged(cc, target), timeout=10.0)
        took = time.monotonic() - t0
        if sts:
            _cluster_table(rep, sts)
            one = next(iter(sts.values()))
            rep.ok(f"all {len(sts)} nodes applied index {one['last_applied']} with digest "
                   f"{one['digest']} (converged in {_fmt_ms(took)})")
        else:
            _cluster_table(rep, cc.cluster_status(1.0), cc.known_nodes())
            rep.fail("the nodes did not converge to one last_applied and digest within 10 s")
        delete_many(cc, [f"demo:repl:{ctx.run}:{i}" for i in range(n)])


TYPE_SAMPLES: list[tuple[str, Any]] = [
    ("string", "hello world"),
    ("empty string", ""),
    ("unicode string", "héllo wörld ✓ 日本語 🚀"),
    ("string with newline and tab", "line 1\nline 2\tend"),
    ("string that looks like a number", "42"),
    ("string that looks like true", "true"),
    ("string that looks like null", "null"),
    ("string that looks like JSON", '{"a": [1, 2]}'),
    ("string with spaces around", "  padded  "),
    ("integer", 42),
    ("negative integer", -7),
    ("zero", 0),
    ("big integer", 2 ** 63 + 1),
    ("float", 3.14159),
    ("negative float", -0.5),
    ("tiny float", 1e-300),
    ("float that is whole", 2.0),
    ("boolean true", True),
    ("boolean false", False),
    ("null", None),
    ("list", [1, "two", 3.0, None, True]),
    ("empty list", []),
    ("empty object", {}),
    ("nested object", {"user": {"name": "Ada", "langs": ["en", "fr"], "age": 36,
                                "active": True, "meta": {"score": 9.5, "tags": []}}}),
    ("list of objects", [{"id": 1}, {"id": 2, "x": [None, {"deep": [[]]}]}]),
]


def demo_types(ctx: DemoContext) -> None:
    """Every JSON type round-trips exactly (type and value)."""
    rep = ctx.rep
    rep.header("types: values round-trip exactly")
    with ctx.cluster() as cc:
        for i, (label, value) in enumerate(TYPE_SAMPLES):
            key = f"demo:types:{ctx.run}:{i}"
            cc.set(key, value)
            got = cc.get(key)
            shown = json.dumps(value, ensure_ascii=False)
            shown = shown if len(shown) <= 50 else shown[:47] + "..."
            rep.check(same(got, value), f"{label:<32} {shown}",
                      f"got {got!r} ({type(got).__name__})")
            cc.delete(key)
        try:
            cc.set(f"demo:types:{ctx.run}:nan", float("nan"))
            rep.fail("NaN should be refused by the client (not JSON)")
        except ValueError:
            rep.ok("NaN / Infinity are refused before sending (not JSON)")


def demo_restrictions(ctx: DemoContext) -> None:
    """Reads and writes on a secondary answer NOT_PRIMARY naming the primary."""
    rep = ctx.rep
    rep.header("restrictions: a secondary refuses reads and writes")
    with ctx.cluster() as cc:
        p = cc.primary()
        sts = cc.cluster_status()
        secondaries = [(a, s) for a, s in sts.items() if s.get("status") == OK and s.get("role") == "secondary"]
        rep.require(bool(secondaries), "found a secondary", "no reachable secondary")
        addr, st = secondaries[0]
        rep.ok(f"primary is {p.node_id} at {p.addr}; talking to secondary {st['node_id']} at {addr}")
        key = f"demo:restrict:{ctx.run}"
        host, port = split_addr(addr)
        with KVStoreClient(host, port, password=ctx.args.password) as c:
            for what, answer in (("SET", c.set(key, "nope")), ("GET", c.get(key)), ("DELETE", c.delete(key))):
                good = (answer.get("code") == NOT_PRIMARY and answer.get("primary") == p.node_id
                        and answer.get("primary_addr") == p.addr
                        and "This node is not primary" in answer.get("message", ""))
                rep.check(good, f"{what} on {st['node_id']} -> NOT_PRIMARY, primary {answer.get('primary')} "
                          f"at {answer.get('primary_addr')}", json.dumps(answer))
            rep.check(c.ping().get("message") == "PONG", f"PING on {st['node_id']} still works")
            s2 = c.status()
            rep.check(s2.get("role") == "secondary" and s2.get("primary") == p.node_id,
                      f"STATUS on {st['node_id']} works: role secondary, primary {s2.get('primary')}")
            try:
                check_answer(c.set(key, "nope"), addr)
                rep.fail("check_answer should raise NotPrimary")
            except NotPrimary as e:
                rep.ok(f"as an exception: NotPrimary(primary={e.primary!r}, primary_addr={e.primary_addr!r})")
        rep.check(cc.get(key, default=None) is None and not cc.exists(key),
                  "the refused SET was not applied anywhere")
        with ClusterClient([addr], deadline=ctx.args.deadline, password=ctx.args.password) as only_secondary:
            only_secondary.set(key, "via hint")
            rep.check(only_secondary.get(key) == "via hint" and only_secondary.primary_hint == p.addr,
                      f"a ClusterClient given only {st['node_id']} follows the hint to {p.node_id}")
            only_secondary.delete(key)


def demo_concurrent(ctx: DemoContext, threads: int = 8, per_thread: int = 200) -> None:
    """Threads sharing one ClusterClient, each on its own connection; verified afterwards."""
    rep = ctx.rep
    rep.header(f"concurrent: {threads} threads x {per_thread} writes")
    errors: list[str] = []
    conns: set[int] = set()
    lock = threading.Lock()
    with ctx.cluster() as cc:
        cc.primary()

        def worker(t: int) -> None:
            try:
                for i in range(per_thread):
                    cc.set(f"demo:conc:{ctx.run}:{t}:{i}", {"t": t, "i": i})
                with lock:
                    conns.add(id(cc._conn(cc.primary_hint)))
            except (KVConnectionError, KVError) as e:
                with lock:
                    errors.append(f"thread {t}: {e}")

        t0 = time.monotonic()
        ths = [threading.Thread(target=worker, args=(t,), name=f"writer-{t}") for t in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        took = time.monotonic() - t0
        total = threads * per_thread
        rep.check(not errors, f"{total} writes acknowledged in {took:.2f} s ({total / took:.0f} writes/s)",
                  "; ".join(errors[:3]))
        rep.check(len(conns) == threads, f"{len(conns)} distinct connections, one per thread")
        p = cc.primary()
        host, port = split_addr(p.addr)
        bad = []
        with KVStoreClient(host, port, password=ctx.args.password) as c:
            pipe = c.pipeline()
            for t in range(threads):
                for i in range(per_thread):
                    pipe.get(f"demo:conc:{ctx.run}:{t}:{i}")
            answers = pipe.execute()
            for n, a in enumerate(answers):
                t, i = divmod(n, per_thread)
                if a.get("value") != {"t": t, "i": i}:
                    bad.append((t, i, a))
            rep.check(not bad, f"all {total} values read back correctly", f"{len(bad)} wrong, e.g. {bad[:2]}")
        delete_many(cc, [f"demo:conc:{ctx.run}:{t}:{i}" for t in range(threads) for i in range(per_thread)])


# -- coordination with cluster_manager.py ----------------------------------------------------
def _cm_usable(ctx: DemoContext) -> str | None:
    """Why cluster_manager.py must not be used for this cluster, or None if it may.

    Its `--node nodeN` names a node of the cluster it was told about: the default one, or the
    one its options (--cluster-manager-args) describe.  Against any other --nodes it could kill
    a node of a different cluster, so then we do not call it at all."""
    if ctx.args.no_cluster_manager:
        return "--no-cluster-manager given"
    if not CLUSTER_MANAGER.exists():
        return f"{CLUSTER_MANAGER.name} not found next to {Path(__file__).name}"
    if not ctx.args.cluster_manager_args and ctx.nodes != list(DEFAULT_NODES):
        return ("--nodes is not the default cluster and no --cluster-manager-args tell "
                "cluster_manager.py which cluster that is")
    return None


def _cm_command(ctx: DemoContext, action: str, node: str) -> list[str]:
    cmd = [sys.executable, str(CLUSTER_MANAGER), "--action", action, "--node", node]
    if ctx.args.cluster_manager_args:
        cmd += shlex.split(ctx.args.cluster_manager_args)
    return cmd


def _run_cm(ctx: DemoContext, action: str, node: str, timeout: float = 30.0) -> tuple[bool, str]:
    why_not = _cm_usable(ctx)
    if why_not:
        return False, why_not
    cmd = _cm_command(ctx, action, node)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(cmd[1:])}` did not finish within {timeout:.0f} s"
    out = (r.stdout + r.stderr).strip()
    last = out.splitlines()[-1] if out else ""
    return r.returncode == 0, last or f"exit code {r.returncode}"


def _pid_alive(pid: int) -> bool:
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_node(ctx: DemoContext, node_id: str, pid: int) -> str:
    """SIGKILL a node: through cluster_manager.py when it knows the node, else os.kill(pid)."""
    ok, msg = _run_cm(ctx, "kill", node_id)
    if ok and wait_for(lambda: not _pid_alive(pid), 3.0):
        return "cluster_manager.py --action kill"
    how = f"SIGKILL to pid {pid} (not via cluster_manager.py: {msg})"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass                                       # it died in the meantime: that is the goal
    return how


def demo_failover(ctx: DemoContext) -> None:
    """Kill the primary in the middle of a write loop; the writes pause, then carry on."""
    rep = ctx.rep
    args = ctx.args
    rep.header("failover: kill -9 the primary while writing")
    with ctx.cluster() as cc:
        p, st = cc._find_primary()
        pid = st.get("pid")
        rep.require(isinstance(pid, int), f"primary is {p.node_id} at {p.addr}, pid {pid}")
        rep.require(bool(wait_for(lambda: _converged(cc), 10.0)), "all nodes are up and in sync before the kill")

        acked: dict[str, int] = {}
        timeline: list[tuple[float, float, str | None]] = []   # (sent, acked, primary)
        errors: list[str] = []
        kill_at: list[float] = []
        how: list[str] = []
        before = max(50, args.failover_writes // 4)
        stop_after = args.failover_writes
        done = threading.Event()

        def killer() -> None:
            while len(acked) < before and not done.is_set():
                time.sleep(0.005)
            try:
                how.append(kill_node(ctx, p.node_id, pid))
            except OSError as e:                       # e.g. not allowed to signal that pid
                how.append(f"failed: {e}")
                done.set()
                return
            kill_at.append(time.monotonic())           # the process is gone (checked) by now

        kt = threading.Thread(target=killer, name="killer", daemon=True)
        kt.start()
        i = 0
        loop_deadline = time.monotonic() + args.deadline + 30
        try:
            while time.monotonic() < loop_deadline and not (done.is_set() and not kill_at):
                key = f"demo:failover:{ctx.run}:{i}"
                t0 = time.monotonic()
                try:
                    cc.set(key, i)
                    acked[key] = i
                    timeline.append((t0, time.monotonic(), cc.primary_hint))
                except (KVConnectionError, KVError) as e:
                    errors.append(f"write {i}: {e}")
                i += 1
                if kill_at and len(acked) >= stop_after and timeline[-1][2] != p.addr:
                    break
        finally:
            done.set()
            kt.join()
        if not kill_at:
            rep.fail(f"the primary was never killed ({how[0] if how else 'the writes never got going'})")
            return
        rep.ok(f"killed {p.node_id} (pid {pid}) after {before} writes via {how[0]}")
        rep.check(not errors, f"{len(acked)} writes acknowledged, {len(errors)} exceptions reached the caller",
                  "; ".join(errors[:3]))
        t_kill = kill_at[0]
        pause = max((b - a for a, b, _ in timeline if b >= t_kill), default=0.0)
        first_new = next((b for a, b, pr in timeline if b >= t_kill and pr != p.addr), None)
        if first_new is not None:
            rep.ok(f"longest write pause: {_fmt_ms(pause)}; kill -> first write acknowledged by the "
                   f"new primary: {_fmt_ms(first_new - t_kill)} ({cc.retries} retries)")
        else:
            rep.fail("no write was acknowledged by a new primary")
        newp = cc.primary()
        rep.check(newp.node_id != p.node_id, f"new primary is {newp.node_id} at {newp.addr} (term {newp.term})")

        host, port = split_addr(newp.addr)
        with KVStoreClient(host, port, password=args.password) as c:
            pipe = c.pipeline()
            for key in acked:
                pipe.get(key)
            answers = pipe.execute()
            lost = [k for (k, v), a in zip(acked.items(), answers) if a.get("value") != v]
        rep.check(not lost, f"all {len(acked)} acknowledged writes are on the new primary",
                  f"{len(lost)} lost, e.g. {lost[:3]}")

        if args.no_restart:
            rep.warn(f"not restarting {p.node_id} (--no-restart)")
        else:
            ok, msg = _run_cm(ctx, "restart", p.node_id, timeout=60.0)
            if not ok:
                rep.warn(f"could not restart {p.node_id}: {msg}")
                rep.warn(f"restart it yourself: python cluster_manager.py --action restart --node {p.node_id}"
                         f"{' ' + args.cluster_manager_args if args.cluster_manager_args else ''}")
            else:
                t0 = time.monotonic()
                sts = wait_for(lambda: _converged(cc, expect_nodes=len(ctx.nodes)), 20.0)
                rep.info(f"cluster_manager.py: {msg}")
                rep.check(bool(sts), f"{p.node_id} restarted via cluster_manager.py and caught up "
                          f"({_fmt_ms(time.monotonic() - t0)} after the restart returned)",
                          "it did not converge with the others within 20 s")
        failed = delete_many(cc, list(acked))
        if failed:
            rep.info(f"cleanup: {failed} demo keys could not be deleted")


DEMOS = {
    "basic": demo_basic,
    "replication": demo_replication,
    "types": demo_types,
    "restrictions": demo_restrictions,
    "secondary": demo_restrictions,
    "concurrent": demo_concurrent,
    "failover": demo_failover,
}
ALL_ORDER = ("basic", "replication", "types", "restrictions", "concurrent", "failover")


def run_demos(names: Iterable[str], args: argparse.Namespace) -> int:
    colours = Colours(False if args.no_color else None)
    rep = Reporter(colours)
    ctx = DemoContext(args, rep)
    print(f"KV Store demo against {', '.join(ctx.nodes)}", flush=True)
    for name in names:
        try:
            DEMOS[name](ctx)
        except DemoFailed as e:
            rep.info(f"{name} stopped: {e}")
        except (KVConnectionError, KVError, ValueError) as e:
            rep.fail(f"{name}: {type(e).__name__}: {e}")
    c = colours
    verdict = (c.paint(c.green, "all checks passed") if not rep.failed
               else c.paint(c.red, f"{rep.failed} check(s) failed"))
    print(f"\n{rep.passed} passed, {rep.failed} failed: {verdict}", flush=True)
    return 1 if rep.failed else 0


# =============================================================================================
# REPL
# =============================================================================================
REPL_COMMANDS = ("set", "get", "delete", "del", "keys", "exists", "status", "cluster", "use",
                 "ping", "help", "quit", "exit")
REPL_HELP = [
    ("set <key> <value>", "store a value; JSON if it parses (1, true, [1,2], \"x\"), else the text"),
    ("get <key>", "print the value as JSON"),
    ("delete <key>", "remove a key (alias: del)"),
    ("exists <key>", "true or false"),
    ("keys [pattern]", "list keys matching a glob (default *)"),
    ("status [node]", "STATUS of a node (default: the one in use, or the primary)"),
    ("cluster", "a table of every node: role, term, indexes, keys, digest"),
    ("use <node>|auto", "send commands to one node as-is (see NOT_PRIMARY); auto = follow the primary"),
    ("ping [node]", "round-trip time to a node"),
    ("help", "this list"),
    ("quit / exit", "leave (Ctrl-D and Ctrl-C too)"),
]


class Repl:
    """A thin REPL over ClusterClient: parse a line, call the library, print the result.

    Invariants: every command's failure is one red line and the loop goes on; EOF and Ctrl-C at
    the prompt exit with status 0; Ctrl-C during a command cancels that command only.  readline
    (history in ~/.kv_store_history or $KV_STORE_HISTORY, tab completion of commands, of node ids
    after `use`/`status`/`ping`, and of keys seen this session) is used only when stdin is a
    terminal, so a piped session prints nothing but prompts and answers.
    """

    def __init__(self, cc: ClusterClient, colours: Colours, out=None, interactive: bool | None = None):
        self.cc = cc
        self.c = colours
        self.out = out or sys.stdout
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.pinned: str | None = None            # address of a `use`d node, None = follow primary
        self.seen_keys: set[str] = set()
        self.readline = None
        self._matches: list[str] = []
        self.history_path = Path(os.environ.get("KV_STORE_HISTORY") or Path.home() / ".kv_store_history")

    # -- output
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        self.say(self.c.paint(self.c.red, f"(error) {text}"))

    def note(self, text: str) -> None:
        self.say(self.c.paint(self.c.yellow, text))

    # -- readline
    def setup_readline(self) -> None:
        if not self.interactive:
            return
        try:
            import readline
        except ImportError:                       # e.g. Windows without pyreadline: plain input()
            return
        self.readline = readline
        try:
            readline.read_history_file(self.history_path)
        except (FileNotFoundError, PermissionError):
            pass                                  # first session, or no access: start empty
        except OSError as e:
            self.note(f"history not loaded ({e})")
        readline.set_history_length(1000)
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self.complete)
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")

    def save_history(self) -> None:
        if self.readline is None:
            return
        try:
            self.readline.write_history_file(self.history_path)
        except OSError as e:
            self.note(f"history not saved to {self.history_path}: {e}")

    def candidates(self, buffer: str, text: str) -> list[str]:
        words = buffer.split()
        if buffer.endswith(" ") or not buffer:
            words.append("")
        if len(words) <= 1:
            return [c + " " for c in REPL_COMMANDS if c.startswith(text.lower())]
        cmd = words[0].lower()
        if len(words) == 2:
            if cmd in ("use", "status", "ping"):
                names = sorted(self.cc.known_nodes()) + (["auto"] if cmd == "use" else [])
                return [n + " " for n in names if n.startswith(text)]
            if cmd in ("get", "delete", "del", "exists", "set"):
                return [k + " " for k in sorted(self.seen_keys) if k.startswith(text)]
        return []

    def complete(self, text: str, state: int):
        """readline completer (exceptions here would be swallowed by readline: keep it simple)."""
        if state == 0:
            buffer = self.readline.get_line_buffer()[: self.readline.get_begidx()] if self.readline else ""
            self._matches = self.candidates(buffer, text)
        return self._matches[state] if state < len(self._matches) else None

    # -- loop
    def prompt(self) -> str:
        where = self.pinned or self.cc.primary_hint
        name = self._name_of(where) if where else "?"
        mark = ":" if self.pinned is None else "@"
        if self.interactive and self.c.enabled:    # \001..\002: zero-width for readline
            return f"\001{self.c.cyan}\002kv{mark}{name}\001{self.c.reset}\002> "
        return f"kv{mark}{name}> "

    def _name_of(self, addr: str | None) -> str:
        for nid, a in self.cc.known_nodes().items():
            if a == addr:
                return nid
        return addr or "?"

    def run(self) -> int:
        self.setup_readline()
        try:
            if self.interactive:
                self.banner()
            else:
                try:
                    self.cc.cluster_status(1.0)    # learn node ids for prompts and `use`
                except (KVConnectionError, KVError):
                    pass                           # nodes down: commands will retry and report
            while True:
                try:
                    line = input(self.prompt())
                except EOFError:
                    if self.interactive:
                        self.say()
                    return 0
                except KeyboardInterrupt:
                    self.say()
                    return 0
                try:
                    if self.execute(line) is False:
                        return 0
                except KeyboardInterrupt:
                    self.note("(interrupted)")
        finally:
            self.save_history()
            self.cc.close()

    def banner(self) -> None:
        c = self.c
        self.say(f"{c.bold}KV Store{c.reset} interactive client — nodes {', '.join(self.cc.nodes)}")
        try:
            p = self.cc.primary()
            self.say(f"primary: {c.paint(c.green, p.node_id)} at {p.addr} (term {p.term}); "
                     f"type 'help' for commands, Ctrl-D to leave")
        except ClusterUnavailable as e:
            self.note(f"no primary yet ({e.last_error}); commands will keep trying")

    def execute(self, line: str):
        """Run one input line.  Returns False to quit."""
        line = line.strip()
        if not line:
            return None
        m = re.match(r"(\S+)\s*(.*)$", line, re.S)
        cmd, rest = m.group(1).lower(), m.group(2)
        handler = getattr(self, f"cmd_{cmd}", None) if cmd in REPL_COMMANDS else None
        if handler is None:
            self.error(f"unknown command '{m.group(1)}' — type 'help'")
            return None
        before = self.cc.primary_hint
        try:
            result = handler(rest)
        except UsageError as e:
            self.error(f"usage: {e}")
            return None
        except NotPrimary as e:
            where = f" — primary is {e.primary} at {e.primary_addr}" if e.primary_addr else ""
            self.error(f"NOT_PRIMARY from {self._name_of(e.node)}: this node is not primary{where}")
            return None
        except KeyNotFound as e:
            self.say(self.c.paint(self.c.yellow, f"(not found) {e.message}"))
            return None
        except KVError as e:
            self.error(str(e))
            return None
        except KVConnectionError as e:
            self.error(str(e))
            return None
        except ValueError as e:
            self.error(str(e))
            return None
        after = self.cc.primary_hint
        if self.pinned is None and before and after and before != after:
            self.note(f"(primary is now {self._name_of(after)} at {after})")
        return result

    # -- routing: the pinned node as-is, or the cluster
    def _pinned_call(self, method: str, *a) -> dict:
        conn = self.cc._conn(self.pinned)
        return check_answer(getattr(conn, method)(*a), self.pinned)

    def cmd_set(self, rest: str):
        m = re.match(r"(\S+)\s+(.+)$", rest, re.S)
        if not m:
            raise UsageError("set <key> <value>")
        key, value = m.group(1), parse_value(m.group(2))
        check_key(key)
        if self.pinned:
            self._pinned_call("set", key, value)
        else:
            self.cc.set(key, value)
        self.seen_keys.add(key)
        self.say(self.c.paint(self.c.green, "OK"))

    def _one_key(self, rest: str, usage: str) -> str:
        parts = rest.split()
        if len(parts) != 1:
            raise UsageError(usage)
        return check_key(parts[0])

    def cmd_get(self, rest: str):
        key = self._one_key(rest, "get <key>")
        if self.pinned:
            value = answer_value(self._pinned_call("get", key))
        else:
            value = self.cc.get(key)
        self.seen_keys.add(key)
        self.say(_show(value))

    def cmd_delete(self, rest: str):
        key = self._one_key(rest, "delete <key>")
        if self.pinned:
            self._pinned_call("delete", key)
            removed = True
        else:
            removed = self.cc.delete(key)
        self.seen_keys.discard(key)
        self.say(self.c.paint(self.c.green, "deleted") if removed else
                 self.c.paint(self.c.yellow, f"(not found) Key '{key}' not found"))

    cmd_del = cmd_delete

    def cmd_exists(self, rest: str):
        key = self._one_key(rest, "exists <key>")
        if self.pinned:
            a = self._pinned_call("exists", key)
            found = bool(a.get("exists", a.get("count")))
        else:
            found = self.cc.exists(key)
        self.say("true" if found else "false")

    def cmd_keys(self, rest: str):
        parts = rest.split()
        if len(parts) > 1:
            raise UsageError("keys [pattern]")
        pattern = parts[0] if parts else "*"
        if self.pinned:
            keys = self._pinned_call("keys", pattern).get("keys") or []
        else:
            keys = self.cc.keys(pattern)
        self.seen_keys.update(keys[:10000])
        if not keys:
            self.say("(empty)")
        for i, k in enumerate(keys, 1):
            self.say(f"{i}) {k}")

    def cmd_status(self, rest: str):
        parts = rest.split()
        if len(parts) > 1:
            raise UsageError("status [node]")
        if parts:
            st = self.cc.status(parts[0])
        elif self.pinned:
            st = self.cc.status(self.pinned)
        else:
            st = self.cc.status()
        for k, v in st.items():
            if k == "status":
                continue
            if k == "peers" and isinstance(v, dict):
                for pid, info in v.items():
                    self.say(f"  peer {pid}: {json.dumps(info)}")
                continue
            self.say(f"{k:>15}: {v}")

    def cmd_cluster(self, rest: str):
        if rest.strip():
            raise UsageError("cluster")
        sts = self.cc.cluster_status(1.0)
        c = self.c
        self.say(f"{'node':<8} {'address':<21} {'role':<10} {'term':>5} {'commit':>8} {'applied':>8} "
                 f"{'keys':>7}  digest")
        digests = {s.get("digest") for s in sts.values() if s.get("status") == OK}
        for addr, st in sts.items():
            if st.get("status") != OK:
                self.say(c.paint(c.red, f"{self._name_of(addr):<8} {addr:<21} {'down':<10}"))
                continue
            role = st.get("role", "?")
            colour = c.green if role == "primary" else c.yellow if role == "candidate" else ""
            mark = "" if len(digests) == 1 else " *"
            self.say(f"{st.get('node_id', '?'):<8} {addr:<21} {c.paint(colour, f'{role:<10}')} "
                     f"{st.get('election_term', 0):>5} {st.get('commit_index', 0):>8} "
                     f"{st.get('last_applied', 0):>8} {st.get('keys', 0):>7}  {st.get('digest', '')}{mark}")

    def cmd_use(self, rest: str):
        parts = rest.split()
        if len(parts) != 1:
            raise UsageError("use <node>|auto")
        if parts[0].lower() in ("auto", "primary", "cluster"):
            self.pinned = None
            self.say("following the primary")
            return
        addr = self.cc.resolve(parts[0])
        if addr not in self.cc.addresses():
            raise ValueError(f"{parts[0]} is not a member of this cluster "
                             f"(members: {', '.join(sorted(self.cc.known_nodes())) or ', '.join(self.cc.addresses())})")
        self.pinned = addr
        self.say(f"using {self._name_of(self.pinned)} at {self.pinned} as-is ('use auto' to follow the primary)")

    def cmd_ping(self, rest: str):
        parts = rest.split()
        if len(parts) > 1:
            raise UsageError("ping [node]")
        target = parts[0] if parts else None
        if target is None and self.pinned is None:
            addr = self.cc.primary().addr
        else:
            addr = self.cc.resolve(target) if target else self.pinned
        conn = self.cc._conn(addr)
        t0 = time.perf_counter()
        a = check_answer(conn.ping(), addr)
        ms = (time.perf_counter() - t0) * 1000
        self.say(f"{a.get('message', 'PONG')} from {self._name_of(addr)} ({ms:.2f} ms)")

    def cmd_help(self, rest: str):
        for usage, text in REPL_HELP:
            self.say(f"  {self.c.paint(self.c.cyan, f'{usage:<20}')} {text}")

    def cmd_quit(self, rest: str):
        return False

    cmd_exit = cmd_quit


class UsageError(Exception):
    """Wrong number/shape of arguments to a REPL command."""


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


# =============================================================================================
# Command line
# =============================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="KV Store client: demos and an interactive REPL over ClusterClient.",
        epilog="Demos print ✓/✗ lines and exit 1 if any check failed.  `failover` kills the primary "
               "(via cluster_manager.py, else SIGKILL of the pid the node reports) and restarts it.")
    p.add_argument("--demo", default="basic",
                   choices=[*DEMOS, "all", "interactive"], help="what to run (default basic)")
    p.add_argument("--nodes", default=",".join(DEFAULT_NODES),
                   help="comma-separated host:port of the nodes (default the default cluster)")
    p.add_argument("--deadline", type=float, default=10.0,
                   help="seconds an operation may keep retrying before giving up (default 10)")
    p.add_argument("--password", default=None, help="AUTH secret when the nodes run with --requirepass")
    p.add_argument("--cluster-manager-args", default="",
                   help="extra options for cluster_manager.py kill/restart, e.g. \"--base-port 7000 --data-dir /tmp/kv\"")
    p.add_argument("--no-cluster-manager", action="store_true",
                   help="failover demo: kill with SIGKILL of the reported pid and do not restart via cluster_manager.py")
    p.add_argument("--no-restart", action="store_true", help="failover demo: leave the killed node down")
    p.add_argument("--failover-writes", type=int, default=1000,
                   help="failover demo: writes to acknowledge in total (default 1000)")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours (also NO_COLOR=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parse_nodes(args.nodes)
    except ValueError as e:
        print(f"error: --nodes: {e}", file=sys.stderr)
        return 2
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")   # ✓/✗ on an ASCII-only terminal
    if args.demo == "interactive":
        colours = Colours(False if args.no_color else None)
        cc = ClusterClient(args.nodes, deadline=args.deadline, password=args.password)
        return Repl(cc, colours).run()
    names = ALL_ORDER if args.demo == "all" else (args.demo,)
    try:
        return run_demos(names, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
