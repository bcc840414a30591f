"""Redis data commands on a node: run them, keep MULTI/WATCH state, expire keys actively.

Layout (reading order)
    resolve()        a parsed command -> the state machine's [NAME, *args], relative times made
                     absolute with the primary's clock (the only clock that ever matters)
    Transaction      one connection's MULTI queue and WATCHed keys
    DataCommands     runs commands for a connection: reads on the primary's store behind the read
                     barrier, writes as one "CMD" log entry, EXEC as one "EXEC" entry
    reply encoders   resp_reply(result, proto) / line_reply(result, cmd)
    Expirer          the primary's active expiry: finds keys past their deadline a slice at a
                     time (like Redis's expire cycle) and deletes them through the log in batches

Why writes carry the time: see kv_state.  A relative TTL becomes an absolute deadline here, on
the primary, before the entry is proposed; apply() on every node then sees the same numbers.
"""

from __future__ import annotations

import logging
import threading
import time

import kv_protocol as P
from kv_state import (NULL_ARRAY, READ_COMMANDS, RedisError, Simple, Value, encode_args,
                      now_ms)

log = logging.getLogger("kvstore")

_INT64_MAX = (1 << 63) - 1
EXECABORT = "EXECABORT Transaction discarded because of previous errors."

# command classes this module serves (the dispatch table maps each to DataCommands)
DATA_CLASSES = (P.DataCommand, P.Multi, P.Exec, P.Discard, P.Watch, P.Unwatch)


class CommandFailed(Exception):
    """A command that is refused before it reaches the log (a Redis error line)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
def _abs(t, now: int) -> int:
    """RelMs -> absolute unix ms (Redis: overflow is 'invalid expire time')."""
    if isinstance(t, P.RelMs):
        if t.ms > _INT64_MAX - now:
            raise CommandFailed(f"ERR invalid expire time in '{t.command}' command")
        return now + t.ms
    return t


def resolve(cmd, now: int) -> tuple[list, bool]:
    """A parsed command -> ([NAME, *args] for kv_state, is_write).  Raises CommandFailed."""
    t = type(cmd)
    if t is P.DataCommand:
        args = [_abs(a, now) if isinstance(a, P.RelMs) else a for a in cmd.args]
        return [cmd.name, *args], cmd.write
    if t is P.Set:
        if cmd.ex_ms is not None:
            if cmd.ex_ms > _INT64_MAX - now:
                raise CommandFailed("ERR invalid expire time in 'set' command")
            expiry = now + cmd.ex_ms
        elif cmd.exat_ms is not None:
            expiry = cmd.exat_ms
        else:
            expiry = "KEEPTTL" if cmd.keepttl else None
        cond = "NX" if cmd.nx else "XX" if cmd.xx else ""
        return ["SET", cmd.key, (cmd.kind, cmd.value), cond, 1 if cmd.get else 0, expiry], True
    if t is P.Get:
        return ["GET", cmd.key], False
    if t is P.Delete:
        return ["DEL", *cmd.keys], True
    if t is P.Exists:
        return ["EXISTS", *cmd.keys], False
    if t is P.Keys:
        return ["KEYS", cmd.pattern if cmd.pattern is not None else "*"], False
    if t is P.DbSize:
        return ["DBSIZE"], False
    if t is P.Unwatch:
        return ["UNWATCH"], False
    raise CommandFailed(f"ERR Command not allowed inside a transaction")


def is_plain_set(cmd) -> bool:
    """SET without options: the fast path ("SET" entry, no clock needed)."""
    return (cmd.ex_ms is None and cmd.exat_ms is None and not cmd.keepttl and not cmd.get
            and not cmd.nx and not cmd.xx)


# ---------------------------------------------------------------------------------------------
class Transaction:
    """One connection's transaction state.  queue: parsed commands (or an Invalid to report at
    EXEC); watches: key -> (applied index, primary time in ms) when WATCH ran."""
    __slots__ = ("active", "queue", "dirty", "watches")

    def __init__(self):
        self.active = False
        self.queue: list = []
        self.dirty = False
        self.watches: dict[str, tuple[int, int]] = {}

    def reset(self) -> None:
        self.active = False
        self.queue = []
        self.dirty = False
        self.watches = {}


class DataCommands:
    """Runs the data commands of one connection against a node.

    The node provides: store (kv_state.KeyValueStore), read_barrier(), write(op, key, value,
    kind) -> apply result (raises the handler's CommandError for NOT_PRIMARY / TIMEOUT / ...).
    run(cmd) returns a result value (kv_state result types) or raises CommandFailed.
    """

    def __init__(self, node):
        self.node = node
        self.tx = Transaction()

    # -- one command outside MULTI
    def run(self, cmd):
        name_args, write = resolve(cmd, self.node.store.read_now())
        if write:
            return self._write([name_args])
        self.node.read_barrier()
        return self.node.store.read(name_args[0], name_args[1:])

    def _write(self, cmds: list, op: str = "CMD", watches=None):
        value = {"t": now_ms(), "c": [[c[0], *encode_args(c[1:])] for c in cmds]}
        if watches:
            value["w"] = watches
        return self.node.write(op, None, value, "json")

    # -- transactions
    def multi(self):
        if self.tx.active:
            raise CommandFailed("ERR MULTI calls can not be nested")
        self.tx.active = True
        return Simple("OK")

    def queue(self, cmd):
        """A command received inside MULTI: queue it (QUEUED) or refuse it (error; EXEC will
        then abort with EXECABORT for queue-time errors, as Redis does)."""
        if isinstance(cmd, P.Invalid):
            if P.is_queue_time_error(cmd):
                self.tx.dirty = True
                raise CommandFailed(cmd.message)
            self.tx.queue.append(cmd)
            return Simple("QUEUED")
        if type(cmd) not in (P.DataCommand, P.Set, P.Get, P.Delete, P.Exists, P.Keys, P.DbSize,
                             P.Unwatch):
            self.tx.dirty = True
            raise CommandFailed("ERR Command not allowed inside a transaction")
        self.tx.queue.append(cmd)
        return Simple("QUEUED")

    def discard(self):
        if not self.tx.active:
            raise CommandFailed("ERR DISCARD without MULTI")
        self.tx.reset()
        return Simple("OK")

    def watch(self, cmd):
        if self.tx.active:
            raise CommandFailed("ERR WATCH inside MULTI is not allowed")
        node = self.node
        node.read_barrier()
        store = node.store
        with store.lock:
            index = store.last_applied
            ms = store.read_now()
        for k in cmd.keys:
            self.tx.watches.setdefault(k, (index, ms))
        return Simple("OK")

    def unwatch(self):
        self.tx.watches = {}
        return Simple("OK")

    def exec(self):
        """Returns (results, queued commands) - results a list (one per queued command) or
        NULL_ARRAY when a watched key changed."""
        tx = self.tx
        if not tx.active:
            raise CommandFailed("ERR EXEC without MULTI")
        queue, dirty, watches = tx.queue, tx.dirty, tx.watches
        tx.reset()
        if dirty:
            raise CommandFailed(EXECABORT)
        now = self.node.store.read_now()
        cmds = []
        for c in queue:
            if isinstance(c, P.Invalid):
                cmds.append(["ERROR", c.message])
                continue
            try:
                cmds.append(resolve(c, now)[0])
            except CommandFailed as e:
                cmds.append(["ERROR", e.message])
        w = [[k, i, ms] for k, (i, ms) in watches.items()]
        return self._write(cmds, "EXEC", w), queue


# ---------------------------------------------------------------------------------------------
# Reply encoding
def resp_reply(result, proto: int = 2) -> bytes:
    """A kv_state result as RESP."""
    if result is None:
        return P.resp_null(proto)
    t = type(result)
    if t is Simple:
        return P.resp_simple(result)
    if t is int:
        return P.resp_int(result)
    if t is Value:
        return P.resp_bulk(P.value_to_resp_bytes(result.value, result.kind))
    if t is str:
        return P.resp_bulk(result)
    if t is RedisError:
        return P.resp_error(result.message)
    if result is NULL_ARRAY:
        return P.RESP3_NULL if proto == 3 else P.RESP_NULL_ARRAY
    if t is list:
        return b"*%d\r\n" % len(result) + b"".join(resp_reply(x, proto) for x in result)
    if t is bool:
        return P.resp_int(int(result))
    raise TypeError(f"cannot encode {t.__name__} as RESP")


def _json_of(result):
    """A result as plain JSON for the line protocol (values keep their JSON form; RESP bytes
    read back as text, or {"base64": ...} when they are not UTF-8)."""
    if type(result) is Value:
        v, extra = P.value_to_line_json(result.value, result.kind)
        return {"base64": v} if extra else v
    if type(result) is list:
        return [_json_of(x) for x in result]
    if type(result) is RedisError:
        return {"error": _line_message(result.message)}
    if result is NULL_ARRAY:
        return None
    return result if not isinstance(result, str) else str(result)


def _line_message(msg: str) -> str:
    return msg[4:] if msg.startswith("ERR ") else msg


# line-protocol field name of the result, per state-machine command
_LINE_FIELD = {"INCRBY": "value", "INCRBYFLOAT": "value", "MGET": "values", "TTL": "ttl",
               "PEXPIREAT": "set", "PERSIST": "persisted", "DEL": "deleted", "EXISTS": "count",
               "TOUCH": "count", "APPEND": "length", "STRLEN": "length", "SETRANGE": "length",
               "SETNX": "set", "MSETNX": "set", "RENAME": "renamed", "COPY": "copied",
               "TYPE": "type", "KEYS": "keys", "DBSIZE": "size", "RANDOMKEY": "key"}
_BOOL_FIELDS = {"set", "persisted", "renamed", "copied"}


def line_fields(name: str, result) -> dict:
    """A kv_state result as the fields of a line-protocol reply (without "status")."""
    if type(result) is RedisError:
        raise CommandFailed(result.message)
    if name == "INCRBYFLOAT":
        text = P.value_to_resp_bytes(result.value, result.kind).decode()
        return {"value": float(text) if "." in text or "e" in text.lower() else int(text)}
    if name == "SCAN":
        return {"cursor": result[0], "keys": result[1]}
    if name == "CAS":
        d = {"swapped": bool(result[0]), "found": result[1] is not None}
        if result[1] is not None:
            d["value"] = _json_of(result[1])
        return d
    if name == "MGET":
        return {"values": _json_of(result), "found": [v is not None for v in result]}
    if name in ("GET", "GETDEL", "GETEX", "SET", "GETRANGE"):
        if type(result) is Value:
            v, extra = P.value_to_line_json(result.value, result.kind)
            return {"value": v, **extra}
        if type(result) is Simple:
            return {"message": str(result)}
        return {"value": None, "found": False}
    field = _LINE_FIELD.get(name, "result")
    if field in _BOOL_FIELDS and type(result) is int:
        return {field: bool(result)}
    if type(result) is Simple:
        return {field: str(result)} if field != "result" else {"message": str(result)}
    return {field: _json_of(result)}


# ---------------------------------------------------------------------------------------------
class Expirer(threading.Thread):
    """The primary's active expiry (Redis's expire cycle, through the log).

    Every `interval` seconds while this node is primary and some key has a TTL: look at the next
    `sample` keys of a walk over the keys with a TTL (the walk restarts from a fresh list of them
    when it ends), and propose one "PURGE" entry for those past their deadline.  If more than a
    quarter of a slice had expired, go on at once, within a `budget` of time per cycle; so memory
    is reclaimed without a scan of everything at once.  Secondaries never expire on their own:
    they only apply the PURGE entries (which re-check each deadline against the entry's time).
    """

    def __init__(self, node, interval: float = 0.1, sample: int = 200, batch: int = 500,
                 budget: float = 0.025):
        super().__init__(daemon=True, name="expirer")
        self.node = node
        self.interval = interval
        self.sample = sample
        self.batch = batch
        self.budget = budget
        self.stop_event = threading.Event()
        self._walk: list = []
        self._pos = 0
        self.purged = 0

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.cycle()
            except Exception as e:   # noqa: BLE001 - the cycle must outlive any one failure
                if type(e).__name__ != "CommandError":
                    log.exception("%s expire cycle failed", self.node.node_id)
                else:
                    log.debug("%s expire cycle: %s", self.node.node_id, e)

    def is_primary(self) -> bool:
        return self.node.core.role == "leader"

    def cycle(self) -> int:
        """One cycle; returns the number of keys purged."""
        store = self.node.store
        if not store.expires or not self.is_primary():
            self._walk = []
            return 0
        t0 = time.monotonic()
        purged = 0
        while True:
            if self._pos >= len(self._walk):
                self._walk = list(store.expires)
                self._pos = 0
            sl = self._walk[self._pos:self._pos + self.sample]
            self._pos += len(sl)
            now = store.read_now()
            exp = store.expires
            due = [k for k in sl if (d := exp.get(k)) is not None and d <= now]
            for i in range(0, len(due), self.batch):
                chunk = due[i:i + self.batch]
                self.node.write("CMD", None, {"t": now, "c": [["PURGE", *chunk]]}, "json")
                purged += len(chunk)
            if len(due) * 4 <= len(sl) or time.monotonic() - t0 > self.budget or not store.expires:
                break
        self.purged += purged
        return purged


_expirers: dict = {}
_expirers_lock = threading.Lock()


def ensure_expirer(node) -> Expirer:
    """TEMP: the node's Expirer, started on first use."""
    with _expirers_lock:
        e = _expirers.get(id(node))
        if e is None:
            e = _expirers[id(node)] = Expirer(node)
            e.start()
        return e
