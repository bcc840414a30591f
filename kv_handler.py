"""Connection handling for KV Store: frames in, commands executed against the node, replies out.

Layout:
    CommandError        a request-level failure: a stable code, a message, definite or not
    Session             per-connection state (protocol, authenticated, client name)
    ConnectionHandler   socketserver handler: read frames, dispatch, batch replies of a pipeline;
                        becomes a peer connection after a HELLO handshake

Replies: the line protocol answers one JSON object per request; RESP2 answers what redis-cli and
redis-py expect.  Both share the command objects from kv_protocol and differ only in encoding.
A bad request costs one error reply; a framing violation (TOO_LARGE, broken RESP) closes only
that connection.  Nothing a handler does can stop the node.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import socket
import socketserver
import threading
import time

import kv_protocol as P
from kv_transport import decode_message, handshake_proof

log = logging.getLogger("kvstore")

RESP_PREFIX = {"NOT_PRIMARY": "READONLY", "AUTH_REQUIRED": "NOAUTH", "AUTH_FAILED": "WRONGPASS",
               "TIMEOUT": "TIMEOUT", "NO_QUORUM": "NOQUORUM", "TOO_LARGE": "ERR", "BAD_REQUEST": "ERR",
               "UNKNOWN_COMMAND": "ERR", "NOT_FOUND": "ERR"}
MAX_DEFERRED = 1024   # pipelined writes in flight per connection before replies are flushed
NO_AUTH_NEEDED = ("Auth", "Ping", "Quit", "Invalid", "Hello", "Status")  # STATUS shows no data


class CommandError(Exception):
    """A request failed.  `definite` is True when the operation certainly did not happen
    (NOT_PRIMARY, BAD_REQUEST, ...) and False when it may have (TIMEOUT, NO_QUORUM after append)."""

    def __init__(self, code: str, message: str, definite: bool | None = None, **fields):
        super().__init__(message)
        self.code = code
        self.message = message
        self.definite = (code not in P.INDEFINITE_CODES) if definite is None else definite
        self.fields = fields

    def line(self) -> dict:
        d = {"status": "ERROR", "code": self.code, "message": self.message, "definite": self.definite}
        d.update(self.fields)
        return d

    def resp(self) -> bytes:
        prefix = RESP_PREFIX.get(self.code, "ERR")
        msg = self.message
        if self.code == "NOT_PRIMARY":
            msg = "You can't write against a read only replica. " + msg
        if prefix == "ERR":
            return P.resp_error(msg)   # adds "ERR " unless msg already starts with an error word
        return P.resp_error(f"{prefix} {msg}")


class Session:
    __slots__ = ("resp", "proto", "authed", "name", "peer_id", "addr")

    def __init__(self, addr, authed: bool):
        self.resp = False
        self.proto = 2          # RESP version: 3 after HELLO 3
        self.authed = authed
        self.name = None
        self.peer_id = None
        self.addr = addr


def _json_value(value, kind):
    return P.value_to_line_json(value, kind)


class ConnectionHandler(socketserver.BaseRequestHandler):
    """One connection: a client (line protocol or RESP2) or, after HELLO, a peer node."""

    def setup(self):
        self.node = self.server.node
        self.sock = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session = Session(self.client_address, authed=self.node.requirepass is None)
        self.reader = P.FrameReader(self.sock, self.node.max_request_bytes)

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
                    self._send_error_and_close(out, e)
                    return
                if frame is None:
                    break
                if frame.proto == "resp":
                    sess.resp = True
                    cmd = P.parse_resp(frame.args)
                else:
                    cmd = P.parse_line(frame.line)
                if isinstance(cmd, P.Internal):
                    if out:
                        self.sock.sendall(b"".join(out))
                        out.clear()
                    self._peer(cmd.message)
                    return
                if (type(cmd) is P.Set or (type(cmd) is P.Delete and len(cmd.keys) == 1)) \
                        and reader.has_buffered_frame() and len(out) < MAX_DEFERRED:
                    # a pipeline: propose now, answer when the batch is flushed (group commit)
                    item = self.execute_deferred(cmd)
                    deferred = deferred or callable(item)
                    out.append(item)
                    continue
                if deferred:   # keep per-connection order: earlier writes finish first
                    _resolve(out)
                    deferred = False
                reply, close = self.execute(cmd)
                out.append(reply)
                if close:
                    break
                if not reader.has_buffered_frame():
                    self.sock.sendall(b"".join(out) if len(out) > 1 else out[0])
                    out.clear()
        except OSError as e:
            log.debug("%s connection %s ended: %s", self.node.node_id, self.client_address, e)
            return
        if out:
            _resolve(out)
            try:
                self.sock.sendall(b"".join(out))
            except OSError as e:
                log.debug("%s could not send final reply to %s: %s", self.node.node_id, self.client_address, e)

    def _send_error_and_close(self, out: list, e: P.ProtocolError) -> None:
        _resolve(out)
        err = CommandError(e.code, e.message)
        out.append(err.resp() if self.reader.proto == "resp" else P.encode_line(err.line()))
        try:
            self.sock.sendall(b"".join(out))
        except OSError:
            pass   # the client went away; the connection closes either way

    # ------------------------------------------------------------------ dispatch
    def execute(self, cmd) -> tuple[bytes, bool]:
        """Run one command; returns (encoded reply, close connection after it)."""
        sess = self.session
        name = type(cmd).__name__
        try:
            if not sess.authed and name not in NO_AUTH_NEEDED:
                raise CommandError("AUTH_REQUIRED", "Authentication required: send AUTH <password> first")
            handler = getattr(self, "cmd_" + name, None)
            if handler is None:
                raise CommandError("UNKNOWN_COMMAND", f"Command {name} is not supported")
            return handler(cmd), name == "Quit"
        except CommandError as e:
            return (e.resp() if sess.resp else P.encode_line(e.line())), False

    def ok(self, message: str | None = None, **fields) -> bytes:
        if self.session.resp:
            return P.resp_simple("OK")
        d = {"status": "OK"}
        if message is not None:
            d["message"] = message
        d.update(fields)
        return P.encode_line(d)

    # ------------------------------------------------------------------ commands
    def cmd_Invalid(self, cmd):
        if self.session.resp:
            return P.resp_error(cmd.message)   # parse_resp gives a complete Redis error line
        raise CommandError(cmd.code, cmd.message)

    def cmd_Hello(self, cmd):
        """HELLO [2|3] [AUTH user pass] [SETNAME name]: redis-py >= 8 opens with HELLO 3."""
        sess = self.session
        if not sess.resp:
            raise CommandError("UNKNOWN_COMMAND", "Unknown command 'HELLO'")
        if cmd.protover not in (None, 2, 3):
            return P.resp_error("NOPROTO unsupported protocol version")
        if cmd.password is not None:
            self.cmd_Auth(P.Auth(cmd.password, cmd.username))
        elif not sess.authed:
            raise CommandError("AUTH_REQUIRED", "HELLO must be called with the client already "
                               "authenticated, otherwise the HELLO AUTH option must be used")
        if cmd.setname is not None:
            sess.name = cmd.setname
        if cmd.protover is not None:
            sess.proto = cmd.protover
        role = "master" if self.node.core.role == "leader" else "replica"
        return P.resp_hello_reply(sess.proto, conn_id=id(self) & 0xFFFFFFF, role=role)

    def cmd_Ping(self, cmd):
        if self.session.resp:
            return P.resp_simple("PONG") if cmd.message is None else P.resp_bulk(cmd.message)
        return P.encode_line({"status": "OK", "message": "PONG" if cmd.message is None else cmd.message})

    def cmd_Echo(self, cmd):
        if self.session.resp:
            return P.resp_bulk(cmd.message)
        return P.encode_line({"status": "OK", "message": cmd.message})

    def cmd_Quit(self, cmd):
        return self.ok("Bye")

    def cmd_Auth(self, cmd):
        want = self.node.requirepass
        if want is None:
            raise CommandError("BAD_REQUEST", "AUTH called without any password configured for the default user. "
                               "Are you sure your configuration is correct?")
        pw = cmd.password if isinstance(cmd.password, (bytes, bytearray)) else str(cmd.password).encode()
        if cmd.username not in (None, "default", b"default") or not hmac.compare_digest(pw, want.encode()):
            self.session.authed = False
            raise CommandError("AUTH_FAILED", "invalid username-password pair or user is disabled.")
        self.session.authed = True
        return self.ok("Authenticated")

    def cmd_Select(self, cmd):
        if str(cmd.db) != "0":
            raise CommandError("BAD_REQUEST", "DB index is out of range (KV Store has one database, 0)")
        return self.ok()

    def execute_deferred(self, cmd):
        """Submit a SET of a pipeline; returns an error reply now, or a callable that waits for
        the commit and returns the reply."""
        is_set = type(cmd) is P.Set
        try:
            if not self.session.authed:
                raise CommandError("AUTH_REQUIRED", "Authentication required: send AUTH <password> first")
            if is_set:
                waiter = self.node.submit(_set_op(cmd), cmd.key, cmd.value, cmd.kind)
            else:
                waiter = self.node.submit("DEL", cmd.keys[0], None, "json")
        except CommandError as e:
            return e.resp() if self.session.resp else P.encode_line(e.line())

        def finish() -> bytes:
            try:
                result = self.node.wait(waiter)
                return self._set_reply(cmd, result) if is_set else self._delete_reply(cmd, int(bool(result)))
            except CommandError as e:
                return e.resp() if self.session.resp else P.encode_line(e.line())
        return finish

    def cmd_Set(self, cmd):
        return self._set_reply(cmd, self.node.write(_set_op(cmd), cmd.key, cmd.value, cmd.kind))

    def _set_reply(self, cmd, done) -> bytes:
        if self.session.resp:
            return P.resp_simple("OK") if done else P.resp_null(self.session.proto)
        if not done:
            return P.encode_line({"status": "OK", "message": f"Key '{cmd.key}' not set (condition not met)",
                                  "written": False})
        return P.encode_line({"status": "OK", "message": f"Key '{cmd.key}' set"})

    def cmd_Get(self, cmd):
        self.node.read_barrier()
        item = self.node.store.get(cmd.key)
        if self.session.resp:
            if item is None:
                return P.resp_null(self.session.proto)
            return P.resp_bulk(P.value_to_resp_bytes(item[1], item[0]))
        if item is None:
            raise CommandError("NOT_FOUND", f"Key '{cmd.key}' not found")
        value, extra = _json_value(item[1], item[0])
        d = {"status": "OK", "value": value}
        if extra:
            d.update(extra)
        return P.encode_line(d)

    def cmd_Delete(self, cmd):
        removed = 0
        for key in cmd.keys:
            if self.node.write("DEL", key, None, "json"):
                removed += 1
        return self._delete_reply(cmd, removed)

    def _delete_reply(self, cmd, removed: int) -> bytes:
        if self.session.resp:
            return P.resp_int(removed)
        if not removed:
            raise CommandError("NOT_FOUND", f"Key '{cmd.keys[0]}' not found")
        return P.encode_line({"status": "OK", "message": f"Key '{cmd.keys[0]}' deleted"})

    def cmd_Exists(self, cmd):
        self.node.read_barrier()
        store = self.node.store
        n = sum(1 for k in cmd.keys if store.get(k) is not None)
        if self.session.resp:
            return P.resp_int(n)
        return P.encode_line({"status": "OK", "exists": n > 0, "count": n})

    def cmd_Keys(self, cmd):
        self.node.read_barrier()
        pattern = cmd.pattern if cmd.pattern is not None else "*"
        keys = [k for k in list(self.node.store.data) if pattern == "*" or P.glob_match(pattern, k)]
        keys.sort()
        if self.session.resp:
            return P.resp_array(keys)
        return P.encode_line({"status": "OK", "keys": keys, "count": len(keys)})

    def cmd_DbSize(self, cmd):
        self.node.read_barrier()
        n = len(self.node.store)
        if self.session.resp:
            return P.resp_int(n)
        return P.encode_line({"status": "OK", "size": n})

    def cmd_Status(self, cmd):
        st = self.node.status()
        if self.session.resp:
            return P.resp_bulk(json.dumps(st).encode())
        return P.encode_line(st)

    def cmd_Info(self, cmd):
        text = self.node_info_text(cmd.section)
        if self.session.resp:
            return P.resp_bulk(text.encode())
        return P.encode_line({"status": "OK", "info": text})

    def cmd_Shutdown(self, cmd):
        threading.Thread(target=self.node.shutdown, daemon=False, name="shutdown").start()
        return self.ok("Server shutting down")

    def cmd_Snapshot(self, cmd):
        index = self.node.manager.take_snapshot(wait=True)
        if self.session.resp:
            return P.resp_simple("OK")
        return P.encode_line({"status": "OK", "message": f"Snapshot taken at index {index}", "index": index})

    def cmd_Flush(self, cmd):
        self.node.storage.sync(force=True)
        return self.ok("Log flushed to disk")

    def cmd_Transfer(self, cmd):
        node = self.node
        if node.core.role != "leader":
            raise node.not_primary()
        t0 = time.monotonic()
        target = getattr(cmd, "target", None)
        if target is not None and target not in node.peers:
            raise CommandError("BAD_REQUEST", f"unknown node {target!r}")
        new = node.transfer(target, timeout=3 * node.core.election_timeout)
        if new is None:
            raise CommandError("TIMEOUT", "leadership transfer did not complete; this node still leads "
                               "or an election is under way", definite=False)
        return self.ok(f"Leadership transferred to {new}", primary=new,
                       primary_addr=node.members[new].addr if new in node.members else None,
                       seconds=round(time.monotonic() - t0, 3))

    def cmd_ConfigGet(self, cmd):
        node = self.node
        conf = {"maxclients": str(node.max_clients), "appendonly": "yes",
                "appendfsync": node.args.fsync, "save": "", "databases": "1",
                "proto-max-bulk-len": str(node.max_request_bytes)}
        pats = [cmd.pattern.lower(), *(m.lower() for m in cmd.more)]
        pairs = [(k, v) for k, v in conf.items() if any(P.glob_match(p, k) for p in pats)]
        if self.session.resp:
            return P.resp_map(pairs, self.session.proto)
        return P.encode_line({"status": "OK", "config": dict(pairs)})

    def cmd_ClientCmd(self, cmd):
        sub = (cmd.sub or "").upper()
        if sub == "SETNAME" and cmd.args:
            self.session.name = cmd.args[0]
            return self.ok()
        if sub == "GETNAME":
            name = self.session.name
            return P.resp_bulk(name, self.session.proto) if self.session.resp else \
                P.encode_line({"status": "OK", "name": name})
        if sub == "ID":
            return P.resp_int(id(self) & 0xFFFFFFF) if self.session.resp else \
                P.encode_line({"status": "OK", "id": id(self) & 0xFFFFFFF})
        return self.ok()   # SETINFO and friends: accepted and ignored, as clients expect

    def cmd_CommandCmd(self, cmd):
        if self.session.resp:
            sub = (cmd.sub or "").upper()
            return P.resp_int(0) if sub == "COUNT" else P.resp_array([])
        return P.encode_line({"status": "OK", "commands": []})

    # ------------------------------------------------------------------ INFO
    def node_info_text(self, section) -> str:
        node = self.node
        st = node.status()
        core = node.core
        lines = ["# Server", "kv_store_version:1.0", f"process_id:{os.getpid()}",
                 f"tcp_port:{node.info.port}", f"uptime_in_seconds:{int(st['uptime'])}",
                 f"node_id:{node.node_id}", "",
                 "# Clients", f"connected_clients:{node.clients}", f"maxclients:{node.max_clients}", ""]
        role = "master" if st["role"] == "primary" else "slave"
        repl = ["# Replication", f"role:{role}"]
        if role == "master":
            peers = [(pid, d) for pid, d in st["peers"].items()]
            repl.append(f"connected_slaves:{sum(1 for _, d in peers if d['reachable'])}")
            for i, (pid, d) in enumerate(peers):
                host, _, port = d["addr"].rpartition(":")
                state = "online" if d["reachable"] else "offline"
                repl.append(f"slave{i}:id={pid},ip={host},port={port},state={state},"
                            f"offset={d['match_index'] or 0},lag={d['lag'] if d['lag'] is not None else -1}")
            repl.append(f"master_repl_offset:{st['commit_index']}")
        else:
            addr = st["primary_addr"] or ":"
            host, _, port = addr.rpartition(":")
            repl += [f"master_host:{host}", f"master_port:{port}",
                     f"master_link_status:{'up' if st['primary'] else 'down'}",
                     f"master_node_id:{st['primary'] or ''}",
                     f"slave_repl_offset:{st['last_applied']}", "slave_read_only:1"]
        repl += [f"raft_term:{st['election_term']}", f"commit_index:{st['commit_index']}",
                 f"last_applied:{st['last_applied']}", f"digest:{st['digest']}", ""]
        persistence = ["# Persistence", "aof_enabled:1", f"appendfsync:{st['fsync']}",
                       f"snapshot_index:{core.snapshot_index}", ""]
        keyspace = ["# Keyspace"]
        if st["keys"]:
            keyspace.append(f"db0:keys={st['keys']},expires=0,avg_ttl=0")
        keyspace.append("")
        sections = {"server": lines[:7], "clients": lines[7:], "replication": repl,
                    "persistence": persistence, "keyspace": keyspace}
        want = (section or "").lower()
        if want in ("", "all", "default", "everything"):
            parts = lines + repl + persistence + keyspace
        elif want in sections:
            parts = sections[want]
        else:
            parts = []
        return "\r\n".join(parts)

    # ------------------------------------------------------------------ peers
    def _peer(self, hello: dict) -> None:
        """Handshake, then feed every message from this peer into the cluster manager."""
        node = self.node
        sock = self.sock

        def refuse(code: str, message: str) -> None:
            log.warning("%s refused internal message from %s: %s", node.node_id, self.client_address, message)
            sock.sendall(P.encode_line({"status": "ERROR", "code": code, "message": message, "definite": True}))

        if hello.get("type") != "HELLO":
            refuse("AUTH_REQUIRED", "internal message refused: peer handshake (HELLO) required first")
            return
        sender = hello.get("from")
        if sender not in node.peers:
            refuse("AUTH_REQUIRED", f"internal message refused: {sender!r} is not a member of this cluster")
            return
        if hello.get("to") not in (None, node.node_id):
            refuse("BAD_REQUEST", f"this is {node.node_id}, not {hello.get('to')!r}")
            return
        nonce = secrets.token_hex(16)
        sock.sendall(P.encode_line({"type": "CHALLENGE", "nonce": nonce}))
        frame = self.reader.read_frame()
        if frame is None:
            return
        try:
            proof = json.loads(frame.line) if frame.proto == "line" else {}
        except ValueError:
            proof = {}
        if node.cluster_secret is not None:
            want = handshake_proof(node.cluster_secret, nonce, sender, node.node_id)
            if proof.get("type") != "PROOF" or not hmac.compare_digest(str(proof.get("proof", "")), want):
                refuse("AUTH_REQUIRED", f"internal message refused: {sender} did not prove the cluster secret")
                return
        sock.sendall(P.encode_line({"type": "WELCOME"}))
        self.session.peer_id = sender
        self.reader.max_request_bytes = 4 * node.max_request_bytes + (1 << 20)
        deliver = node.manager.deliver
        while True:
            frame = self.reader.read_frame()
            if frame is None:
                return
            try:
                msg = decode_message(json.loads(frame.line))
            except (ValueError, TypeError, KeyError, IndexError) as e:
                log.warning("%s dropped a malformed message from %s: %s", node.node_id, sender, e)
                continue
            if msg["from"] != sender:
                log.warning("%s dropped a message claiming to be from %s on %s's link", node.node_id,
                            msg["from"], sender)
                continue
            deliver(msg)


def _set_op(cmd) -> str:
    if cmd.ex_ms is not None or cmd.exat_ms is not None or cmd.keepttl:
        raise CommandError("BAD_REQUEST", "key expiry (EX/PX/EXAT/PXAT/KEEPTTL) is not supported by KV Store")
    if cmd.get:
        raise CommandError("BAD_REQUEST", "SET ... GET is not supported by KV Store")
    return "SETNX" if cmd.nx else "SETXX" if cmd.xx else "SET"


def _resolve(out: list) -> None:
    """Replace the callables of pipelined writes with their replies, in order."""
    for i, item in enumerate(out):
        if callable(item):
            out[i] = item()


