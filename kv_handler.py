"""Connection handling for KV Store: frames in, commands run against the node, replies out.

Layout:
    CommandError        (kv_protocol) a request-level failure: a stable code, definite or not
    Session             per-connection state (protocol, authenticated, client name)
    COMMANDS, command   the dispatch table: command class -> Command (run, auth, pipelined)
    the commands        one function per command: (conn, cmd) -> kv_protocol.Reply
    (kv_info)           INFO, and the per-connection counters behind it
    (kv_sentinel)       SENTINEL, ROLE, READONLY/READWRITE, (P)SUBSCRIBE/(P)UNSUBSCRIBE
    ConnectionHandler   socketserver handler: read frames, dispatch, encode, batch the replies of
                        a pipeline; becomes a peer connection after a HELLO handshake

A command never encodes: it returns a Reply (or raises CommandError) and the connection's one
encoder (kv_protocol.encode_reply_resp or encode_reply_line) turns it into bytes.  It reaches
the node only through KVNode's facade (write/submit/wait, get/exists/keys/size/read, role,
status, snapshot, flush, transfer, deliver, config).

Adding a command: a dataclass and its parsers in kv_protocol, then a function here (or in a
module kv_store_server imports) decorated with @command(TheClass).  A bad request costs one
error reply; a framing violation (TOO_LARGE, broken RESP) closes only that connection.
Nothing a handler does can stop the node.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Callable

import kv_protocol as P
import kv_registry
from kv_protocol import REPLY_OK, CommandError, Reply, Simple
from kv_values import parse_int
from kv_transport import WrongCluster, check_cluster, decode_entry, decode_message, handshake_proof

log = logging.getLogger("kvstore")

_REDISCOVER_CODES = ("NOT_PRIMARY", "NO_QUORUM")   # see ConnectionHandler._after_error
MAX_DEFERRED = 1024   # pipelined writes in flight per connection before replies are flushed
_REPLY_NULL = Reply(None)
NOT_NOW = object()   # KVNode.lease_get: this read cannot be answered without waiting
_GET_NAMES = frozenset((b"GET", b"get", b"Get"))   # the spellings clients send; others parse
_AUTH_REQUIRED = CommandError("AUTH_REQUIRED", "Authentication required: send AUTH <password> first")


class Session:
    """Per-connection state.  readonly: the client opted in to follower reads (READONLY).
    sub: its kv_sentinel.Subscriber once it SUBSCRIBEd (then other threads send on the socket
    too, under ConnectionHandler.send_lock).  tx: its kv_commands.Transaction once MULTI or
    WATCH is used."""
    __slots__ = ("resp", "proto", "authed", "name", "peer_id", "addr", "readonly", "sub", "tx")

    def __init__(self, addr, authed: bool):
        self.resp = False
        self.proto = 2          # RESP version: 3 after HELLO 3
        self.authed = authed
        self.name = None
        self.peer_id = None
        self.addr = addr
        self.readonly = False
        self.sub = None
        self.tx = None


# ------------------------------------------------------------------------------ dispatch table
@dataclass(frozen=True, slots=True)
class Command:
    """How to run one command class.
    run(conn, cmd) -> Reply         answer it (may raise CommandError)
    auth                            needs an authenticated session when --requirepass is set
    propose(conn, cmd, on_done)     for single writes: propose without waiting and return
      -> (waiter, to_reply)         (waiter, to_reply), to_reply(result) -> Reply.  on_done is
                                    passed on to KVNode.submit: None when the handler will wait
                                    itself (pipelines), else the callback that answers directly
    """
    run: Callable
    auth: bool = True
    propose: Callable | None = None


COMMANDS: dict[type, Command] = {}


def command(*classes: type, auth: bool = True, propose: Callable | None = None):
    """Register the decorated function as the runner of these command classes."""
    def register(fn):
        for cls in classes:
            COMMANDS[cls] = Command(fn, auth, propose)
        return fn
    return register


# ------------------------------------------------------------------------------ connection-level
@command(P.Invalid, auth=False)
def cmd_invalid(c, cmd):
    if c.session.resp:   # parse_resp gives a complete Redis error line
        raise CommandError(cmd.code, cmd.message, resp_message=cmd.message)
    raise CommandError(cmd.code, cmd.message)


@command(P.Hello, auth=False)
def cmd_hello(c, cmd):
    """HELLO [2|3] [AUTH user pass] [SETNAME name]: redis-py >= 8 opens with HELLO 3."""
    sess = c.session
    if not sess.resp:
        raise CommandError("UNKNOWN_COMMAND", "Unknown command 'HELLO'")
    if cmd.protover not in (None, 2, 3):
        raise CommandError("BAD_REQUEST", "unsupported protocol version",
                           resp_message="NOPROTO unsupported protocol version")
    if cmd.password is not None:
        cmd_auth(c, P.Auth(cmd.password, cmd.username))
    elif not sess.authed:
        raise CommandError("AUTH_REQUIRED", "HELLO must be called with the client already "
                           "authenticated, otherwise the HELLO AUTH option must be used")
    if cmd.setname is not None:
        sess.name = cmd.setname
    if cmd.protover is not None:
        sess.proto = cmd.protover
    role = "master" if c.node.role == "primary" else "replica"
    return Reply(P.RespRaw(P.resp_hello_reply(sess.proto, conn_id=c.conn_id, role=role)))


@command(P.Ping, auth=False)
def cmd_ping(c, cmd):
    if c.session.sub is not None and c.session.proto == 2:   # RESP2 subscribed mode, as Redis
        return Reply(["pong", cmd.message or ""])
    if cmd.message is None:
        return Reply(Simple("PONG"), {"message": "PONG"})
    return Reply(cmd.message, {"message": cmd.message})


@command(P.Echo)
def cmd_echo(c, cmd):
    return Reply(cmd.message, {"message": cmd.message})


@command(P.Quit, auth=False)
def cmd_quit(c, cmd):
    c.closing = True
    return Reply(Simple("OK"), {"message": "Bye"})


@command(P.Auth, auth=False)
def cmd_auth(c, cmd):
    want = c.node.config.requirepass
    if want is None:
        raise CommandError("BAD_REQUEST", "AUTH called without any password configured for the default user. "
                           "Are you sure your configuration is correct?")
    pw = cmd.password if isinstance(cmd.password, (bytes, bytearray)) else str(cmd.password).encode()
    if cmd.username not in (None, "default", b"default") or not hmac.compare_digest(pw, want.encode()):
        c.session.authed = False
        raise CommandError("AUTH_FAILED", "invalid username-password pair or user is disabled.")
    c.session.authed = True
    return Reply(Simple("OK"), {"message": "Authenticated"})


@command(P.Select)
def cmd_select(c, cmd):
    db = cmd.db if isinstance(cmd.db, (bytes, bytearray)) else str(cmd.db).encode()
    n = parse_int(bytes(db))
    if n is None:
        raise CommandError("BAD_REQUEST", "value is not an integer or out of range",
                           resp_message="ERR value is not an integer or out of range")
    if n != 0:
        raise CommandError("BAD_REQUEST", "DB index is out of range (KV Store has one database, 0)",
                           resp_message="ERR DB index is out of range")
    return REPLY_OK


@command(P.ClientCmd)
def cmd_client(c, cmd):
    sub = (cmd.sub or "").upper()
    if sub == "SETNAME" and cmd.args:
        c.session.name = cmd.args[0]
        return REPLY_OK
    if sub == "GETNAME":
        return Reply(c.session.name, {"name": c.session.name})
    if sub == "ID":
        return Reply(c.conn_id, {"id": c.conn_id})
    return REPLY_OK   # SETINFO and friends: accepted and ignored, as clients expect


@command(P.CommandCmd)
def cmd_command(c, cmd):
    """COMMAND [COUNT | INFO | DOCS | LIST | GETKEYS]: answered from the command registry."""
    try:
        value = kv_registry.command_reply(cmd.sub or "", list(cmd.args))
    except ValueError as e:
        raise CommandError("BAD_REQUEST", str(e)[4:], resp_message=str(e)) from None
    sub = (cmd.sub or "").upper()
    if sub == "COUNT":
        return Reply(value, {"count": value})
    if sub in ("", "LIST", "INFO"):
        names = [x[0] if isinstance(x, list) else x for x in value] if sub != "LIST" else value
        return Reply(value, lambda: {"commands": [n for n in names if n is not None]})
    return Reply(value, lambda: {"result": P.encode_resp_value(value).decode("utf-8", "replace")})


@command(P.ConfigGet)
def cmd_config_get(c, cmd):
    cfg = c.node.config
    conf = {"maxclients": str(cfg.max_clients), "appendonly": "yes", "appendfsync": cfg.fsync,
            "save": "", "databases": "1", "proto-max-bulk-len": str(cfg.max_request_bytes)}
    pats = [cmd.pattern.lower(), *(m.lower() for m in cmd.more)]
    pairs = {k: v for k, v in conf.items() if any(P.glob_match(p, k) for p in pats)}
    return Reply(pairs, {"config": pairs})


# ------------------------------------------------------------------------------ data
# SET and DEL are registered by kv_commands: a plain SET takes the fast path below (a "SET"
# entry); SET with options, and DEL, are "CMD" entries timed by the primary (key expiry).
def _set_reply(cmd, written) -> Reply:
    if written:
        return Reply(Simple("OK"), lambda: {"message": f"Key '{cmd.key}' set"})
    return Reply(None, lambda: {"message": f"Key '{cmd.key}' not set (condition not met)", "written": False})


def propose_set(c, cmd, on_done):
    def to_reply(written):
        return _set_reply(cmd, written)
    return c.node.submit("SET", cmd.key, cmd.value, cmd.kind, on_done and on_done(to_reply)), to_reply


def cmd_set(c, cmd):
    return _set_reply(cmd, c.node.write("SET", cmd.key, cmd.value, cmd.kind))


def _get_line(item):
    value, extra = P.value_to_line_json(item[1], item[0])
    d = {"value": value}
    if extra:
        d.update(extra)
    return d


_WRONGTYPE = CommandError("WRONGTYPE", "Operation against a key holding the wrong kind of value")
_STRING_KINDS = frozenset(("bytes", "json"))


@command(P.Get)
def cmd_get(c, cmd):
    item = c.node.get(cmd.key, c.session.readonly)
    if item is not None and item[0] not in _STRING_KINDS:
        raise _WRONGTYPE
    if c.session.resp:   # the hot path: no line-protocol fields to prepare
        if item is None:
            c.stats.misses += 1
            return _REPLY_NULL
        c.stats.hits += 1
        kind, value = item
        return Reply(value if kind == "bytes" else P.value_to_resp_bytes(value, kind))
    if item is None:
        c.stats.misses += 1
        raise CommandError("NOT_FOUND", f"Key '{cmd.key}' not found")
    c.stats.hits += 1
    return Reply(None, _get_line(item))


@command(P.Exists)
def cmd_exists(c, cmd):
    n = c.node.exists(cmd.keys, stale_ok=c.session.readonly)
    return Reply(n, {"exists": n > 0, "count": n})


@command(P.Keys)
def cmd_keys(c, cmd):
    keys = c.node.keys(cmd.pattern if cmd.pattern is not None else "*", stale_ok=c.session.readonly)
    return Reply(keys, {"keys": keys, "count": len(keys)})


@command(P.DbSize)
def cmd_dbsize(c, cmd):
    n = c.node.size(stale_ok=c.session.readonly)
    return Reply(n, {"size": n})


# ------------------------------------------------------------------------------ node
@command(P.Status, auth=False)   # STATUS shows no data
def cmd_status(c, cmd):
    st = c.node.status()
    return Reply(json.dumps(st).encode(), st)


@command(P.Shutdown)
def cmd_shutdown(c, cmd):
    threading.Thread(target=c.node.shutdown, daemon=False, name="shutdown").start()
    return Reply(Simple("OK"), {"message": "Server shutting down"})


@command(P.Snapshot)
def cmd_snapshot(c, cmd):
    index = c.node.snapshot()
    return Reply(Simple("OK"), {"message": f"Snapshot taken at index {index}", "index": index})


@command(P.Flush)
def cmd_flush(c, cmd):
    c.node.flush()
    return Reply(Simple("OK"), {"message": "Log flushed to disk"})


@command(P.Transfer)
def cmd_transfer(c, cmd):
    node = c.node
    if node.role != "primary":
        raise node.not_primary()
    t0 = time.monotonic()
    target = cmd.target
    if target is not None and target not in node.voter_ids:
        raise CommandError("BAD_REQUEST", f"unknown node {target!r}" if target not in node.peer_ids
                           else f"{target} is a learner: leadership goes to voters only")
    new = node.transfer(target)
    if new is None:
        raise CommandError("TIMEOUT", "leadership transfer did not complete; this node still leads "
                           "or an election is under way", definite=False)
    return Reply(Simple("OK"), {"message": f"Leadership transferred to {new}", "primary": new,
                                "primary_addr": node.member_addr(new),
                                "seconds": round(time.monotonic() - t0, 3)})


@command(P.ClusterCmd)
def cmd_cluster(c, cmd):
    """CLUSTER ADD/REMOVE/MEMBERS (Raft §4.1, one server at a time), on the primary only.
    ADD answers once the node is a learner in a committed configuration (the primary promotes
    it to voter once it has caught up: watch CLUSTER MEMBERS or STATUS); REMOVE once the
    configuration without it is committed (removing the primary itself hands leadership to a
    voter).  Errors are definite (NOT_PRIMARY, BAD_REQUEST, CHANGE_IN_PROGRESS: nothing was
    appended) or indefinite (TIMEOUT, NO_QUORUM after the change was appended), as for writes."""
    node = c.node
    if node.role != "primary":
        raise node.not_primary()
    t0 = time.monotonic()
    if cmd.sub == "ADD":
        node.change_membership("add", cmd.node_id, cmd.addr)
        msg = f"{cmd.node_id} added as a learner at {cmd.addr}; it becomes a voter once caught up"
    elif cmd.sub == "REMOVE":
        node.change_membership("remove", cmd.node_id)
        msg = f"{cmd.node_id} removed from the cluster"
    else:
        m = node.membership()
        text = "\n".join([f"{nid} {addr} voter" for nid, addr in m["voters"].items()] +
                         [f"{nid} {addr} learner" for nid, addr in m["learners"].items()])
        return Reply(text.encode(), m)
    m = node.membership()
    return Reply(Simple("OK"), {"message": msg, "seconds": round(time.monotonic() - t0, 3), **m})


# ------------------------------------------------------------------------------ the connection
class ConnectionHandler(socketserver.BaseRequestHandler):
    """One connection: a client (line protocol or RESP) or, after HELLO, a peer node.

    Reads frames, looks each command up in COMMANDS, runs it and encodes its Reply with the
    session's encoder.  Replies of a pipeline are sent together once no further request is
    buffered; pipelined writes are proposed at once and answered in order when the batch is
    flushed, so they share one commit.

    A lone write (nothing else buffered or waiting to be sent) is proposed with a callback and
    this thread goes straight back to reading: the cluster manager, which resolves a whole
    batch of commits at once, sends the answer from its own thread (answer_directly).  That
    saves a sleep and a wake-up of this thread per write.  `inflight` is that write until its
    answer is out; every later answer of the connection waits for it, so answers stay in
    request order, and the connection is not closed under it.

    A RESP GET, the commonest request, is answered by _fast_get straight from the frame's
    arguments while the lease is held; in any other state it takes the general path above."""

    def setup(self):
        self.node = self.server.node
        self.sock = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session = Session(self.client_address, authed=self.node.config.requirepass is None)
        self.reader = P.FrameReader(self.sock, self.node.config.max_request_bytes)
        self.conn_id = id(self) & 0xFFFFFFF
        self.closing = False
        self.blocking = False   # waiting in BLPOP & co. (kv_blocking)
        self.inflight = None
        self.stats = self.node.stats.opened(self)    # kv_info.ConnStats: plain int counters
        self.send_lock = threading.Lock()        # used once other threads send here (pub/sub)

    def finish(self):
        node = self.node
        node.stats.closed(self.stats)
        if self.session.sub is not None:
            node.sentinel.hub.drop(self.session.sub)

    def kill(self) -> None:
        """Close this connection from another thread (kv_sentinel.DemotionWatch): the handler
        thread's next recv sees EOF, or its send fails, and it ends."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError as e:
            log.debug("%s connection %s already closed: %s", self.node.node_id, self.client_address, e)

    def send_locked(self, data: bytes) -> None:
        """sendall under send_lock: for pub/sub messages from other threads, and for this
        connection's own replies once it subscribed."""
        with self.send_lock:
            self.sock.sendall(data)

    def _send(self, data: bytes) -> None:
        if self.session.sub is None:
            self.sock.sendall(data)
        else:
            self.send_locked(data)

    def encode(self, reply) -> bytes:
        sess = self.session
        return P.encode_reply_resp(reply, sess.proto) if sess.resp else P.encode_reply_line(reply)

    def handle(self):
        reader = self.reader
        out: list = []          # encoded replies, or callables for pipelined writes in flight
        deferred = False
        sess = self.session
        try:
            while True:
                try:
                    frame = reader.read_frame()
                except P.ProtocolError as e:
                    if self.inflight is not None:
                        self._await_inflight()
                    self._send_error_and_close(out, e)
                    return
                if frame is None:
                    break
                if self.inflight is not None:
                    self._await_inflight()
                if frame.proto == "resp":
                    sess.resp = True
                    args = frame.args
                    if len(args) == 2 and args[0] in _GET_NAMES and not deferred:
                        data = self._fast_get(args[1])
                        if data is not None:
                            out.append(data)
                            if not reader.has_buffered_frame():
                                self._send(b"".join(out) if len(out) > 1 else out[0])
                                out.clear()
                            continue
                    cmd = kv_registry.parse_resp(args)
                else:
                    cmd = kv_registry.parse_line(frame.line)
                if sess.tx is not None and sess.tx.active and type(cmd) not in P.TX_IMMEDIATE:
                    cmd = P.Queued(cmd)   # inside MULTI (kv_commands)
                spec = COMMANDS.get(type(cmd))
                if spec is None:
                    if type(cmd) is P.Internal:
                        if out:
                            self.sock.sendall(b"".join(out))
                            out.clear()
                        self._peer(cmd.message)
                        return
                    self.stats.commands += 1
                    self.stats.errors += 1
                    out.append(self.encode(CommandError("UNKNOWN_COMMAND",
                                                        f"Command {type(cmd).__name__} is not supported")))
                elif spec.propose is not None and (type(cmd) is not P.Delete or len(cmd.keys) == 1) \
                        and (type(cmd) is not P.DataCommand or cmd.write) \
                        and sess.sub is None \
                        and (not out or len(out) < MAX_DEFERRED and reader.has_buffered_frame()):
                    if not out and not reader.has_buffered_frame():
                        # a lone write: the manager thread answers it (answer_directly)
                        err = self._propose_direct(spec, cmd)
                        if err is not None:
                            self.sock.sendall(err)
                            if self.closing:
                                break
                        continue
                    # a pipeline: propose now, answer when the batch is flushed (group commit)
                    item = self._propose(spec, cmd)
                    deferred = deferred or callable(item)
                    out.append(item)
                    if self.closing:
                        break
                    continue
                else:
                    if deferred:   # keep per-connection order: earlier writes finish first
                        self._resolve(out)
                        deferred = False
                    out.append(self.run(spec, cmd))
                    if self.closing:
                        break
                if not reader.has_buffered_frame():
                    self._send(b"".join(out) if len(out) > 1 else out[0])
                    out.clear()
        except OSError as e:
            log.debug("%s connection %s ended: %s", self.node.node_id, self.client_address, e)
            return
        finally:
            if self.inflight is not None:
                self._release_inflight()
        if out:
            self._resolve(out)
            try:
                self._send(b"".join(out))
            except OSError as e:
                log.debug("%s could not send final reply to %s: %s", self.node.node_id, self.client_address, e)

    def _fast_get(self, key: bytes) -> bytes | None:
        """GET answered without building a command object: the encoded answer, or None when the
        general path must run it (a session in MULTI, not authenticated, subscribed or reading
        from a secondary; a bad key; no valid lease now).  Same answer, same counters."""
        sess = self.session
        if not sess.authed or sess.tx is not None or sess.sub is not None or not key \
                or len(key) > P.KEY_MAX_BYTES:
            return None
        item = self.node.lease_get(key.decode("utf-8", "surrogateescape"))
        if item is NOT_NOW:
            return None
        stats = self.stats
        stats.commands += 1
        if item is None:
            stats.misses += 1
            return P.RESP3_NULL if sess.proto == 3 else P.RESP_NULL
        kind, value = item
        if kind != "bytes":
            if kind != "json":      # a hash, list, ...: the general path answers WRONGTYPE
                stats.commands -= 1
                return None
            value = P.value_to_resp_bytes(value, kind)
        stats.hits += 1
        return b"$%d\r\n%b\r\n" % (len(value), value)

    def run(self, spec: Command, cmd) -> bytes:
        """Run one command and encode its answer."""
        stats = self.stats
        stats.commands += 1
        try:
            if spec.auth and not self.session.authed:
                raise _AUTH_REQUIRED
            return self.encode(spec.run(self, cmd))
        except CommandError as e:
            stats.errors += 1
            self._after_error(e)
            return self.encode(e)

    def _after_error(self, e: CommandError) -> None:
        if self._closes_after(e):
            self.closing = True
            self._cork()

    def _cork(self) -> None:
        """Hold this connection's output until it is shut down, so the last reply and the FIN
        reach the client together: a client that checks its pooled connection before the next
        command (redis-py does) then sees it closed and reconnects through discovery, instead
        of sending that command to this node and meeting redis/redis-py#3874."""
        cork = getattr(socket, "TCP_CORK", None)
        if cork is not None:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
            except OSError as e:
                log.debug("%s could not cork %s: %s", self.node.node_id, self.client_address, e)

    def _closes_after(self, e: CommandError) -> bool:
        """A Redis client told this node is not (or no longer) primary is disconnected after the
        reply, as Sentinel disconnects the clients of a master it demotes: its next command
        reconnects through Sentinel discovery instead of reusing a connection to a secondary.
        Not for READONLY (follower-read) sessions, subscribers or the line protocol."""
        if e.code in _REDISCOVER_CODES and (e.code == "NOT_PRIMARY" or not e.definite):
            sess = self.session
            return sess.resp and not sess.readonly and sess.sub is None
        return False

    def _propose(self, spec: Command, cmd):
        """Propose a pipelined write; returns an encoded error now, or a callable that waits for
        the commit and returns the encoded answer."""
        stats = self.stats
        stats.commands += 1
        try:
            if spec.auth and not self.session.authed:
                raise _AUTH_REQUIRED
            w, to_reply = spec.propose(self, cmd, None)
        except CommandError as e:
            stats.errors += 1
            self._after_error(e)
            return self.encode(e)
        node = self.node

        def done() -> bytes:
            try:
                return self.encode(to_reply(node.wait(w)))
            except CommandError as e:
                stats.errors += 1
                self._after_error(e)
                return self.encode(e)
        return done

    # -- lone writes answered by the cluster manager's thread
    def _propose_direct(self, spec: Command, cmd) -> bytes | None:
        """Propose a lone write whose answer the resolving thread sends; an encoded error if it
        could not be proposed."""
        stats = self.stats
        stats.commands += 1
        try:
            if spec.auth and not self.session.authed:
                raise _AUTH_REQUIRED
            self.inflight, _ = spec.propose(self, cmd, self.answer_directly)
        except CommandError as e:
            stats.errors += 1
            self._after_error(e)
            return self.encode(e)
        return None

    def answer_directly(self, to_reply):
        """The on_done callback for one write: encode its outcome and send it without blocking
        (a reply that does not fit the socket buffer is finished by a helper thread), then mark
        the waiter done.  Runs on the cluster manager's thread: it must neither raise nor block."""
        node = self.node
        sock = self.sock

        def on_done(w) -> None:
            close = False
            try:
                try:
                    reply = to_reply(node.outcome(w))
                except CommandError as e:
                    reply = e
                    self.stats.errors += 1   # this connection's thread waits for w: no race
                    close = self._closes_after(e)
                    if close:
                        self._cork()        # the reply leaves with the FIN (kill below)
                data = self.encode(reply)
            except Exception:   # a bug in a command's reply: answer it, never kill the manager
                log.exception("%s could not encode the answer for %s", node.node_id, self.client_address)
                data = self.encode(CommandError("TIMEOUT", "internal error while answering; the write "
                                                "may or may not be applied", definite=False))
            try:
                n = sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            except OSError as e:   # the client is gone; its handler notices on its next read
                log.debug("%s answer to %s not sent: %s", node.node_id, self.client_address, e)
                w.set()
                return
            if n < len(data):
                threading.Thread(target=self._send_rest, args=(data[n:], w, close), daemon=True,
                                 name="send-rest").start()
                return
            if close:
                self.kill()     # see _closes_after; the handler thread reads EOF and ends
            w.set()
        return on_done

    def _send_rest(self, data: bytes, w, close: bool = False) -> None:
        try:
            self.sock.sendall(data)
            if close:
                self.kill()
        except OSError as e:
            log.debug("%s answer to %s not sent: %s", self.node.node_id, self.client_address, e)
        finally:
            w.set()

    def _await_inflight(self) -> None:
        """Before any other answer: wait until the lone write's answer is out."""
        w = self.inflight
        self.inflight = None
        if w.done or w.wait(self.node.config.request_timeout + 2.0):
            return
        if self.node.abandon(w):   # never resolved (cannot happen while the manager runs)
            self.sock.sendall(self.encode(CommandError(
                "TIMEOUT", "The write was not answered in time; it may or may not be applied", definite=False)))
        else:
            w.wait(5.0)

    def _release_inflight(self) -> None:
        """The connection is ending: make sure no thread sends on its socket after it closes."""
        w = self.inflight
        self.inflight = None
        if not w.done and not self.node.abandon(w):
            w.wait(5.0)   # being answered right now: the send does not block

    def _resolve(self, out: list) -> None:
        """Replace the callables of pipelined writes with their encoded replies, in order."""
        for i, item in enumerate(out):
            if callable(item):
                out[i] = item()

    def _send_error_and_close(self, out: list, e: P.ProtocolError) -> None:
        self._resolve(out)
        err = CommandError(e.code, e.message)
        out.append(err.resp() if self.reader.proto == "resp" else P.encode_line(err.line()))
        try:
            self.sock.sendall(b"".join(out))
        except OSError:
            pass   # the client went away; the connection closes either way

    # ------------------------------------------------------------------ peers
    def _peer(self, hello: dict) -> None:
        """Handshake, then feed every message from this peer into the node."""
        node = self.node
        sock = self.sock

        sparse = node.sparse_log

        def refuse(code: str, message: str, why: str, hint: str = "", **extra) -> None:
            # once per peer and reason per minute: a refused peer retries ten times a second
            sparse.warning((why, hello.get("from") if isinstance(hello.get("from"), str) else self.client_address[0]),
                           "%s refused internal message from %s: %s%s", node.node_id, self.client_address,
                           message, hint)
            sock.sendall(P.encode_line({"status": "ERROR", "code": code, "message": message, "definite": True,
                                        "reason": why, **extra}))

        if hello.get("type") != "HELLO":
            refuse("AUTH_REQUIRED", "internal message refused: peer handshake (HELLO) required first", "hello")
            return
        sender = hello.get("from")
        if not node.accepts_peer(sender):
            refuse("AUTH_REQUIRED", f"internal message refused: {sender!r} is not a member of this cluster",
                   "member", f"; check that node's --peers / --cluster-file (this node's members: "
                             f"{', '.join(sorted(node.peer_ids))})")
            return
        if hello.get("to") not in (None, node.node_id):
            refuse("BAD_REQUEST", f"this is {node.node_id}, not {hello.get('to')!r}", "address")
            return
        ident = node.identity
        theirs = hello.get("cluster")
        try:
            check_cluster(ident, theirs if isinstance(theirs, str) else None, node.node_id, sender, sparse,
                          "peer")
        except WrongCluster:
            sock.sendall(P.encode_line({"status": "ERROR", "code": "BAD_REQUEST", "definite": True,
                                        "reason": "cluster", "message": f"wrong cluster: {node.node_id} belongs to "
                                        f"cluster {ident.cluster_id}, {sender} to cluster {theirs}"}))
            return
        nonce = secrets.token_hex(16)
        sock.sendall(P.encode_line({"type": "CHALLENGE", "nonce": nonce,
                                    "cluster": ident.cluster_id if ident is not None else None}))
        frame = self.reader.read_frame()
        if frame is None:
            return
        try:
            proof = json.loads(frame.line) if frame.proto == "line" else {}
        except ValueError:
            proof = {}
        secret = node.config.cluster_secret
        if secret is not None:
            want = handshake_proof(secret, nonce, sender, node.node_id)
            if proof.get("type") != "PROOF" or not hmac.compare_digest(str(proof.get("proof", "")), want):
                refuse("AUTH_REQUIRED", f"internal message refused: {sender} did not prove the cluster secret",
                       "secret", f"; check --cluster-secret(-file) / KV_CLUSTER_SECRET on {sender} and on "
                                 f"{node.node_id}: they differ (if {node.node_id} accepts its other peers, "
                                 f"the wrong one is {sender}'s)")
                return
        sock.sendall(P.encode_line({"type": "WELCOME"}))
        self.session.peer_id = sender
        node.stats.closed(self.stats)       # a peer link, not a client (INFO connected_clients)
        node.peer_hello(sender, hello.get("addr") if isinstance(hello.get("addr"), str) else None)
        reader = self.reader
        reader.max_request_bytes = 4 * node.config.max_request_bytes + (1 << 20)
        deliver = node.deliver
        while True:
            frame = reader.read_frame()
            if frame is None:
                return
            try:
                msg = decode_message(json.loads(frame.line))
                if msg["type"] == "REPLICATE":
                    entries = []
                    for _ in range(msg["n"]):
                        line = reader.read_frame()
                        if line is None:
                            return
                        entries.append(decode_entry(line.line))
                    msg["entries"] = entries
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                log.warning("%s dropped a malformed message from %s: %s", node.node_id, sender, e)
                continue
            if msg["from"] != sender:
                log.warning("%s dropped a message claiming to be from %s on %s's link", node.node_id,
                            msg["from"], sender)
                continue
            deliver(msg)
