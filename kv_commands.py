"""Redis data commands on a node: run them, keep MULTI/WATCH state, expire keys actively.

Layout (reading order)
    resolve()        a parsed command -> the state machine's [NAME, *args], relative times made
                     absolute with the primary's clock (the only clock that ever matters)
    execute()        one command outside MULTI: a read on the primary's store behind the read
                     barrier, or a write as one "CMD" log entry
    Transaction      one connection's MULTI queue and WATCHed keys (in its Session)
    replies          resp_value(), line_fields(), reply(): kv_state results -> kv_protocol.Reply
    the commands     registered in kv_handler's dispatch table: DataCommand, Set (options),
                     Delete, MULTI/EXEC/DISCARD/WATCH/UNWATCH and Queued (anything inside MULTI)
    Expirer          the primary's active expiry: finds keys past their deadline a slice at a
                     time (like Redis's expire cycle) and deletes them through the log in batches

Why writes carry the time: see kv_state.  A relative TTL becomes an absolute deadline here, on
the primary, before the entry is proposed; apply() on every node then sees the same numbers.
"""

from __future__ import annotations

import logging
import threading
import time

import kv_handler
import kv_protocol as P
from kv_handler import command
from kv_protocol import CommandError, Reply, Simple
from kv_registry import SM_SPECS
from kv_spec import Blocking
from kv_state import NULL_ARRAY, RedisError, Value, encode_args, now_ms
from kv_values import Double, Members, Pairs

log = logging.getLogger("kvstore")

_INT64_MAX = (1 << 63) - 1
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
MAX_QUEUED = 100_000      # commands in one MULTI (EXEC is one log entry: keep it bounded)
QUEUEABLE = (P.DataCommand, P.Set, P.Get, P.Delete, P.Exists, P.Keys, P.DbSize, P.Unwatch,
             P.Invalid)


def failed(message: str) -> CommandError:
    """A Redis error line as a definite error: WRONGTYPE for a key of another type, else
    BAD_REQUEST (the line protocol drops the "ERR " / "WRONGTYPE " word: the code says it)."""
    if message.startswith("WRONGTYPE "):
        return CommandError("WRONGTYPE", message[10:], resp_message=message)
    return CommandError("BAD_REQUEST", message[4:] if message.startswith("ERR ") else message,
                        resp_message=message)


# ---------------------------------------------------------------------------------------------
def _abs(t, now: int) -> int:
    """RelMs -> absolute unix ms (Redis: overflow is 'invalid expire time')."""
    if t.ms > _INT64_MAX - now:
        raise failed(f"ERR invalid expire time in '{t.command}' command")
    return now + t.ms


def resolve(cmd, now: int) -> tuple[list, bool]:
    """A parsed command -> ([NAME, *args] for kv_state, is_write).  Raises CommandError."""
    t = type(cmd)
    if t is P.DataCommand:
        args = [_abs(a, now) if type(a) is P.RelMs else a for a in cmd.args]
        return [cmd.name, *args], cmd.write
    if t is P.Set:
        if cmd.ex_ms is not None:
            expiry = _abs(P.RelMs(cmd.ex_ms, "set"), now)
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
    if t is P.Invalid:
        return ["ERROR", cmd.message if cmd.message.startswith("ERR") else "ERR " + cmd.message], False
    raise failed("ERR Command not allowed inside a transaction")


def is_plain_set(cmd) -> bool:
    """SET without options: the fast path ("SET" entry, no clock needed)."""
    return (cmd.ex_ms is None and cmd.exat_ms is None and not cmd.keepttl and not cmd.get
            and not cmd.nx and not cmd.xx)


def entry_value(cmds: list, watches=None) -> dict:
    """The value of a "CMD"/"EXEC" entry: the primary's time, the commands, the watches."""
    value = {"t": now_ms(), "c": [[c[0], *encode_args(c[1:])] for c in cmds]}
    if watches:
        value["w"] = watches
    return value


def execute(node, cmd, stale_ok: bool = False):
    """Run one command outside MULTI: a read on the primary's store behind the read barrier (or
    this node's own state for a READONLY connection on a secondary: stale_ok), a write as one
    "CMD" log entry.  Returns (state-machine name, result)."""
    name_args, write = resolve(cmd, node.clock_ms())
    if write:
        return name_args[0], node.write("CMD", None, entry_value([name_args]), "json")
    return name_args[0], node.read(lambda st: st.read(name_args[0], name_args[1:]), stale_ok=stale_ok)


# ---------------------------------------------------------------------------------------------
class Transaction:
    """One connection's transaction state (kept in its Session).  queue: the parsed commands;
    dirty: a queue-time error was seen (EXEC answers EXECABORT); watches: key -> (applied index,
    primary time in ms) when WATCH ran."""
    __slots__ = ("active", "queue", "dirty", "watches")

    def __init__(self):
        self.active = False
        self.queue: list = []
        self.dirty = False
        self.watches: dict[str, tuple[int, int]] = {}

    def end(self) -> None:
        self.active = False
        self.queue = []
        self.dirty = False
        self.watches = {}


def _tx(c) -> Transaction:
    tx = c.session.tx
    if tx is None:
        tx = c.session.tx = Transaction()
    return tx


# ---------------------------------------------------------------------------------------------
# Results -> replies
def resp_value(result, proto: int = 2):
    """A kv_state result as a Reply.resp value."""
    t = type(result)
    if t is Value:
        return P.value_to_resp_bytes(result.value, result.kind)
    if t is list:
        return [resp_value(x, proto) for x in result]
    if t is Members:
        return P.RespSet(resp_value(x, proto) for x in result)
    if t is Pairs:
        if proto == 3:
            return [[resp_value(a, proto), resp_value(b, proto)] for a, b in result]
        return [resp_value(x, proto) for pair in result for x in pair]
    if t is RedisError:
        return failed(result.message)
    if result is NULL_ARRAY:
        return P.RespRaw(P.RESP3_NULL if proto == 3 else P.RESP_NULL_ARRAY)
    return result


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _json_of(result):
    """A result as plain JSON for the line protocol (values keep their JSON form; RESP bytes
    read back as text, or {"base64": ...} when they are not UTF-8)."""
    t = type(result)
    if t is Value:
        v, extra = P.value_to_line_json(result.value, result.kind)
        return {"base64": v} if extra else v
    if t is list:
        return [_json_of(x) for x in result]
    if t is Pairs:
        return [[_json_of(a), _json_of(b)] for a, b in result]
    if t is Members:
        return [_json_of(x) for x in result]
    if t is RedisError:
        return {"error": result.message[4:] if result.message.startswith("ERR ") else result.message}
    if result is NULL_ARRAY:
        return None
    if t is bytes:
        return _text(result)
    if t is dict:
        return {(_text(k) if type(k) is bytes else k): _json_of(v) for k, v in result.items()}
    if t is Double:
        return result.value if result.value not in (float("inf"), float("-inf")) else _text(result.text)
    return str(result) if isinstance(result, str) else result


# the line-protocol field of a result, per state-machine command
_LINE_FIELD = {"INCRBY": "value", "MGET": "values", "TTL": "ttl", "PEXPIREAT": "set",
               "PERSIST": "persisted", "DEL": "deleted", "EXISTS": "count", "TOUCH": "count",
               "APPEND": "length", "STRLEN": "length", "SETRANGE": "length", "SETNX": "set",
               "MSETNX": "set", "RENAME": "renamed", "COPY": "copied", "TYPE": "type",
               "KEYS": "keys", "DBSIZE": "size", "RANDOMKEY": "key", "PURGE": "deleted"}
_BOOL_FIELDS = {"set", "persisted", "renamed", "copied"}


def line_fields(name: str, result) -> dict:
    """A kv_state result as the fields of a line-protocol reply (besides "status"): the
    command's declared reply shape (kv_registry Spec.line), else the table below."""
    spec = SM_SPECS.get(name)
    if spec is not None and spec.line is not None:
        return spec.line(result)
    if name == "INCRBYFLOAT":
        text = P.value_to_resp_bytes(result.value, result.kind).decode()
        return {"value": float(text) if any(ch in text for ch in ".eE") else int(text)}
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
    if type(result) is RedisError:
        return {"result": _json_of(result)}
    if field in _BOOL_FIELDS and type(result) is int:
        return {field: bool(result)}
    if type(result) is Simple:
        return {"message": str(result)}
    return {field: _json_of(result)}


def reply(c, name: str, result) -> Reply:
    """One command's result as a Reply (an error result raises CommandError)."""
    if type(result) is RedisError:
        raise failed(result.message)
    return Reply(resp_value(result, c.session.proto), lambda: line_fields(name, result))


# ---------------------------------------------------------------------------------------------
# The commands (registered in kv_handler's dispatch table)
def propose_data(c, cmd, on_done):
    """A data-command write without waiting (kv_handler's propose contract): every write
    command shares this one path, so a pipeline of INCR / HSET / LPUSH shares commits."""
    name_args, _ = resolve(cmd, c.node.clock_ms())
    return _propose_cmd(c, name_args, on_done, lambda result: reply(c, name_args[0], result))


@command(P.DataCommand, propose=propose_data)
def cmd_data(c, cmd):
    name, result = execute(c.node, cmd, stale_ok=c.session.readonly)
    return reply(c, name, result)


def _set_reply(c, cmd, result) -> Reply:
    """The answer to a SET with options (or GETSET-like: with GET)."""
    if type(result) is RedisError:
        raise failed(result.message)
    if result is None and not cmd.get:
        return Reply(None, {"message": f"Key '{cmd.key}' not set (condition not met)", "written": False})
    if type(result) is Simple:
        return Reply(result, {"message": f"Key '{cmd.key}' set"})
    return reply(c, "SET", result)


def _propose_cmd(c, name_args: list, on_done, to_reply):
    """Propose one "CMD" entry (kv_handler's propose contract: (waiter, to_reply))."""
    w = c.node.submit("CMD", None, entry_value([name_args]), "json", on_done and on_done(to_reply))
    return w, to_reply


def propose_set(c, cmd, on_done):
    if is_plain_set(cmd):
        return kv_handler.propose_set(c, cmd, on_done)
    name_args, _ = resolve(cmd, c.node.clock_ms())
    return _propose_cmd(c, name_args, on_done, lambda result: _set_reply(c, cmd, result))


@command(P.Set, propose=propose_set)
def cmd_set(c, cmd):
    """Plain SET keeps the fast path ("SET" entry); SET with options is a "CMD" entry."""
    if is_plain_set(cmd):
        return kv_handler.cmd_set(c, cmd)
    _, result = execute(c.node, cmd)
    return _set_reply(c, cmd, result)


def _delete_reply(c, cmd, result) -> Reply:
    if type(result) is RedisError:
        raise failed(result.message)
    if not result and not c.session.resp:   # RESP answers 0; the line protocol, NOT_FOUND
        raise CommandError("NOT_FOUND", f"Key '{cmd.keys[0]}' not found")
    return Reply(result, {"message": f"Key '{cmd.keys[0]}' deleted"})


def propose_delete(c, cmd, on_done):
    return _propose_cmd(c, ["DEL", *cmd.keys], on_done, lambda result: _delete_reply(c, cmd, result))


@command(P.Delete, propose=propose_delete)
def cmd_delete(c, cmd):
    """DEL/UNLINK of any number of keys: one "CMD" entry (deleted atomically), timed by the
    primary so that a key past its deadline counts as absent."""
    return _delete_reply(c, cmd, c.node.write("CMD", None, entry_value([["DEL", *cmd.keys]]), "json"))


@command(Blocking)
def cmd_blocking(c, cmd):
    """BLPOP BRPOP BLMOVE BRPOPLPUSH BLMPOP BZPOPMIN BZPOPMAX BZMPOP (kv_blocking): this
    connection's thread waits, as its client does, until a write serves it or it times out."""
    return c.node.waiters.run(c, cmd, resolve, entry_value, reply)


@command(P.Multi)
def cmd_multi(c, cmd):
    tx = _tx(c)
    if tx.active:
        raise failed("ERR MULTI calls can not be nested")
    tx.active = True
    return Reply(Simple("OK"), {"message": "OK"})


@command(P.Queued)
def cmd_queued(c, cmd):
    """A command received inside MULTI: queue it (QUEUED), or refuse it now - unknown commands
    and wrong argument counts then make EXEC answer EXECABORT, as in Redis."""
    tx = _tx(c)
    inner = cmd.command
    if type(inner) is Blocking:   # BLPOP & co. inside MULTI: the non-blocking form, as Redis
        inner = inner.command
    if type(inner) is P.Invalid and P.is_queue_time_error(inner):
        tx.dirty = True
        raise failed(inner.message if inner.message.startswith("ERR") else "ERR " + inner.message)
    if not isinstance(inner, QUEUEABLE) or type(inner) is P.Hello:
        tx.dirty = True
        raise failed("ERR Command not allowed inside a transaction")
    if len(tx.queue) >= MAX_QUEUED:
        tx.dirty = True
        raise failed(f"ERR too many commands in one transaction (at most {MAX_QUEUED})")
    tx.queue.append(inner)
    return Reply(Simple("QUEUED"), {"message": "QUEUED"})


@command(P.Discard)
def cmd_discard(c, cmd):
    tx = _tx(c)
    if not tx.active:
        raise failed("ERR DISCARD without MULTI")
    tx.end()
    return Reply(Simple("OK"), {"message": "OK"})


@command(P.Watch)
def cmd_watch(c, cmd):
    """WATCH: remember, per key, the applied index and the primary's time now; EXEC carries
    them and every node checks them when it applies the EXEC entry."""
    tx = _tx(c)
    if tx.active:
        raise failed("ERR WATCH inside MULTI is not allowed")

    def mark(store):
        with store.lock:
            return store.last_applied, store.read_now()
    seen = c.node.read(mark)
    for k in cmd.keys:
        tx.watches.setdefault(k, seen)
    return Reply(Simple("OK"), {"message": "OK", "watching": sorted(tx.watches)})


@command(P.Unwatch)
def cmd_unwatch(c, cmd):
    _tx(c).watches = {}
    return Reply(Simple("OK"), {"message": "OK"})


@command(P.Exec)
def cmd_exec(c, cmd):
    """EXEC: the queued commands (reads too) and the watches as ONE "EXEC" log entry."""
    tx = _tx(c)
    if not tx.active:
        raise failed("ERR EXEC without MULTI")
    queue, dirty, watches = tx.queue, tx.dirty, tx.watches
    tx.end()
    if dirty:
        raise failed(EXECABORT)
    now = c.node.clock_ms()
    cmds, names = [], []
    for q in queue:
        try:
            na = resolve(q, now)[0]
        except CommandError as e:
            na = ["ERROR", e.resp_message or e.message]
        cmds.append(na)
        names.append(na[0])
    w = [[k, i, ms] for k, (i, ms) in watches.items()]
    results = c.node.write("EXEC", None, entry_value(cmds, w), "json")
    if results is NULL_ARRAY:
        return Reply(resp_value(results, c.session.proto), {"aborted": True, "results": None})
    return Reply(resp_value(results, c.session.proto),
                 lambda: {"aborted": False, "results": [_json_of(r) for r in results]})


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

    def __init__(self, node, interval: float = 0.1, sample: int = 1000, batch: int = 500,
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
            except CommandError as e:   # lost leadership, no quorum, timeout: next cycle retries
                log.debug("%s expire cycle: %s", self.node.node_id, e.message)

    def is_primary(self) -> bool:
        return self.node.role == "primary"

    def cycle(self) -> int:
        """One cycle; returns the number of keys purged."""
        node = self.node
        if not self.is_primary():
            self._walk = []
            return 0
        t0 = time.monotonic()
        purged = 0
        while True:
            if self._pos >= len(self._walk):
                self._walk = node.keys_with_ttl()
                self._pos = 0
                if not self._walk:
                    return purged
            sl = self._walk[self._pos:self._pos + self.sample]
            self._pos += len(sl)
            due = node.expired(sl, node.clock_ms())
            for i in range(0, len(due), self.batch):
                chunk = due[i:i + self.batch]
                self.node.write("CMD", None, entry_value([["PURGE", *chunk]]), "json")
                purged += len(chunk)
            if len(due) * 4 <= len(sl) or time.monotonic() - t0 > self.budget:
                break
        self.purged += purged
        return purged

