"""The replicated state machine of KV Store: KeyValueStore and the Redis-compatible commands it
executes (re-exported by kv_store_server under the same name).

Layout (reading order)
    Value, RedisError, NULL_ARRAY   result values besides None/int/str/list and kv_protocol.Simple
                                    (kv_commands turns them into replies for either protocol)
    encode_args / decode_args               command arguments <-> the JSON form inside log entries
    parse_ld / format_ld / ld_add           INCRBYFLOAT's long-double arithmetic, as Redis does it
    KeyValueStore                           the dict, TTL deadlines, modification slots, digest,
                                            apply(entry), read(), snapshot items, restore()

Entries (kv_storage.ReplicationLog; op, key, value, kind):
    "SET" / "SETNX" / "SETXX" / "DEL"   the fast path of plain SET and of old logs: key, value, kind
    "NOOP"                              a new term's first entry
    "CONFIG"                            a membership change: the Raft core's business, ignored here
    "CMD"   value {"t": now_ms, "c": [[NAME, arg, ...], ...]}: every other write, one entry,
            applied atomically; the result is the last command's (MSET, FLUSHDB, PURGE, ...)
    "EXEC"  value {"t": now_ms, "c": [...], "w": [[key, watched_index, watched_ms], ...]}: a
            transaction; the result is the list of per-command results, or NULL_ARRAY when a
            watched key changed (checked here, at apply time, on every node alike)
    Arguments are JSON: keys and words are str, numbers int, stored values are tagged
    {"b": base64} (RESP bytes) or {"j": any JSON} (line protocol) - see encode_args.

Determinism: apply() never reads a clock.  The primary writes its wall-clock time (unix ms) into
each "CMD"/"EXEC" entry and turns every relative TTL into an absolute deadline before proposing;
apply() uses now = max(entry time, clock_ms) and keeps clock_ms, so time as the state machine sees
it never goes backwards, even after a failover to a node whose clock lags.  A key whose deadline
is <= now is absent to that entry; reads on the primary use max(wall clock, clock_ms).

Invariants
    * data: key -> (kind, value); kind "json" (any JSON value) or "bytes" (raw bytes).
    * expires: key -> deadline (unix ms) only for keys that have a TTL; every key in expires is in
      data.  A key is *live* at time t iff it is in data and not (expires[key] <= t).
    * digest = sum mod 2**64 of item_hash(key, kind, value) over data plus ttl_hash(key, deadline)
      over expires: O(1) per write, stable across processes; equal last_applied -> equal digest.
    * mod[slot(key)] >= the index of the last entry that wrote or deleted key; gone[slot(key)] >=
      the deadline of the last expired key removed from that slot.  slot() is crc32 of the key's
      bytes modulo MOD_SLOTS (2**18 slots, 4 MiB in all): a collision can only make a WATCH abort
      spuriously, never miss a change.
    * Only apply() and restore() write; they and multi-key readers hold `lock`.  get()/exists
      work without the lock (one dict read is atomic under the GIL).
"""

from __future__ import annotations

import base64
import binascii
import gc
import hashlib
import json
import logging
import random
import threading
import time
import zlib
from array import array

from kv_blocking import BLOCKED, BlockedKeys, is_empty
from kv_protocol import Simple, compile_glob
from kv_registry import APPLY, SM_SPECS, TAGS, TYPE_NAMES, TYPES, type_keys_of
from kv_values import (E_NO_KEY, E_SYNTAX, E_WRONGTYPE, NULL_ARRAY,
                       OK, Fail, RedisError, Value, container_hash, format_ld,
                       parse_ld, to_bytes)

_Fail = Fail
log = logging.getLogger("kvstore")

__all__ = ["KeyValueStore", "Value", "RedisError", "NULL_ARRAY", "encode_args",
           "decode_args", "WRITE_COMMANDS", "READ_COMMANDS", "now_ms", "format_ld", "parse_ld",
           "MOD_SLOTS", "key_slot", "to_bytes", "OK", "E_SYNTAX", "E_WRONGTYPE"]

_MASK64 = (1 << 64) - 1
MOD_SLOTS = 1 << 18
_SLOT_MASK = MOD_SLOTS - 1
_crc32 = zlib.crc32


def now_ms() -> int:
    return int(time.time() * 1000)


def key_slot(key: str) -> int:
    return _crc32(key.encode("utf-8", "surrogatepass")) & _SLOT_MASK


# ---------------------------------------------------------------------------------------------
# Arguments inside log entries
def encode_args(args) -> list:
    """Command arguments -> JSON: Value/(kind, value) stored values become {"b": base64} or
    {"j": json}; raw bytes (hash fields, list elements, set members...) {"r": base64}; lists
    of them (a multi-member argument) are encoded element by element; str/int/None stay."""
    out = []
    for a in args:
        if isinstance(a, Value):
            a = (a.kind, a.value)
        ta = type(a)
        if ta is bytes:
            out.append({"r": base64.b64encode(a).decode("ascii")})
        elif ta is list:
            out.append(encode_args(a))
        elif ta is tuple:
            kind, v = a
            out.append({"b": base64.b64encode(v).decode("ascii")} if kind == "bytes" else {"j": v})
        else:
            out.append(a)
    return out


def decode_args(args: list) -> list:
    """Inverse of encode_args: tagged values become (kind, value) tuples."""
    out = []
    for a in args:
        ta = type(a)
        if ta is dict:
            if "r" in a or "b" in a:
                try:
                    raw = base64.b64decode(a["r"] if "r" in a else a["b"], validate=True)
                except (binascii.Error, ValueError, TypeError) as e:
                    raise ValueError(f"bad base64 argument: {e}") from None
                out.append(raw if "r" in a else ("bytes", raw))
            else:
                out.append(("json", a["j"]))
        elif ta is list:
            out.append(decode_args(a))
        else:
            out.append(a)
    return out


# ---------------------------------------------------------------------------------------------
# Integers and long doubles, exactly as Redis parses and prints them
# ---------------------------------------------------------------------------------------------
class KeyValueStore:
    """The replicated state machine (see the module docstring for entries and invariants).

    Callers use: apply(entry) on every node; get(key) (GET's fast path), read(name, args, now)
    for every other read on the primary; items()/restore() for snapshots; digest_hex(), len(),
    expires_count(), last_applied, clock_ms, lock.
    """

    types = TYPES             # kind -> TypeOps (for the command modules: COPY, OBJECT ENCODING)
    type_names = TYPE_NAMES   # kind -> what TYPE answers

    def __init__(self):
        self.data: dict[str, tuple[str, object]] = {}
        self.expires: dict[str, int] = {}
        self.mod = array("q", bytes(8 * MOD_SLOTS))
        self.gone = array("q", bytes(8 * MOD_SLOTS))
        self.clock_ms = 0
        self.digest = 0
        self.last_applied = 0
        self.lock = threading.Lock()
        self._index = 0           # index of the entry being applied (mod slots record it)
        self.blocked = BlockedKeys()   # clients blocked in BLPOP & co. (kv_blocking)

    # -- hashing
    @staticmethod
    def item_hash(key: str, kind: str, value) -> int:
        if kind == "bytes":
            vb = value
        elif kind == "json":
            vb = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        else:   # a container keeps the hash of its content (kv_values' digest contract)
            return container_hash(key, kind, value.h)
        h = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8)
        h.update(b"\x00" + kind.encode() + b"\x00" + vb)
        return int.from_bytes(h.digest(), "big")

    @staticmethod
    def ttl_hash(key: str, deadline: int) -> int:
        h = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8)
        h.update(b"\x00ttl\x00%d" % deadline)
        return int.from_bytes(h.digest(), "big")

    # -- the fast path (plain SET / DEL) and the entry dispatcher
    def apply(self, entry):
        """Apply one committed entry; returns its result (see the module docstring).  Fast ops
        return True/False (written / existed); NOOP None."""
        op = entry.op
        result = None
        if op == "SET":        # the hot path: keep it short
            key = entry.key
            data = self.data
            old = data.get(key)
            new = (entry.kind, entry.value)
            h = self.item_hash
            if old is not None:
                self.digest = (self.digest - h(key, *old)) & _MASK64
                if self.expires and key in self.expires:
                    self._drop_ttl(key)
            data[key] = new
            self.digest = (self.digest + h(key, *new)) & _MASK64
            try:
                self.mod[_crc32(key.encode()) & _SLOT_MASK] = entry.index
            except UnicodeEncodeError:
                self.mod[key_slot(key)] = entry.index
            self.last_applied = entry.index
            return True
        self._index = entry.index
        blocked = self.blocked
        if entry.term != blocked.term:
            blocked.new_term(entry.term)
        if op == "CMD" or op == "EXEC":
            result = self._apply_cmds(op, entry.value)
            if blocked.ready:
                blocked.serve(self, self.clock_ms)
        elif op == "DEL":
            result = self._lookup(entry.key, self.clock_ms, True) is not None
            if result:
                self._delete(entry.key)
        elif op in ("SETNX", "SETXX"):
            exists = self._lookup(entry.key, self.clock_ms, True) is not None
            result = exists if op == "SETXX" else not exists
            if result:
                self._put(entry.key, entry.kind, entry.value, keep_ttl=False)
        self.last_applied = entry.index
        return result

    def get(self, key: str, now: int | None = None):
        """(kind, value) of a live key, or None (missing or past its deadline).  Primary reads."""
        item = self.data.get(key)
        if item is not None and self.expires:
            d = self.expires.get(key)
            if d is not None and d <= max(now_ms() if now is None else now, self.clock_ms):
                return None
        return item

    def read_now(self) -> int:
        """The time a read on the primary uses: wall clock, never behind the replicated clock."""
        return max(now_ms(), self.clock_ms)

    def expires_count(self) -> int:
        return len(self.expires)

    def _apply_cmds(self, op: str, value: dict):
        now = max(int(value.get("t", 0)), self.clock_ms)
        self.clock_ms = now
        cmds = value["c"]
        if op == "EXEC":
            for key, w_index, w_ms in value.get("w", ()):
                if self._watch_broken(key, w_index, w_ms, now):
                    return NULL_ARRAY
            return [self._run(c, now, True) for c in cmds]
        result = None
        for c in cmds:
            result = self._run(c, now, True)
        return result

    def _watch_broken(self, key: str, w_index: int, w_ms: int, now: int) -> bool:
        """True if key was written/deleted after index w_index, or expired after time w_ms."""
        s = key_slot(key)
        if self.mod[s] > w_index:
            return True
        if w_ms < self.gone[s] <= now:
            return True
        d = self.expires.get(key)
        return d is not None and w_ms < d <= now

    def _run(self, c: list, now: int, write: bool):
        return self._exec(c[0], decode_args(c[1:]) if write else c[1:], now, write)

    def _exec(self, name: str, args: list, now: int, write: bool):
        """Run one state-machine command on decoded arguments; its result (a runtime error as
        a RedisError)."""
        fn = _COMMANDS.get(name)
        if fn is None:
            return RedisError(f"ERR unknown command '{name}'")
        spec = SM_SPECS.get(name)
        try:
            if spec is not None and spec.key_type is not None:
                self._check_type(type_keys_of(spec)(args), spec.key_type, now, write)
            return fn(self, args, now, write)
        except _Fail as e:
            return RedisError(e.message)
        except (ArithmeticError, ValueError, TypeError, LookupError, AttributeError, RecursionError) as e:
            # A bug in a command must not stop the node: the same entry would stop every node,
            # at every restart.  It fails the same way everywhere (apply is deterministic), so
            # the replicas stay equal; the client gets an error and the log says what broke.
            log.exception("internal error applying %s", name)
            return RedisError(f"ERR internal error in {name}: {type(e).__name__}: {e}"[:300])

    def _check_type(self, keys, type_name: str, now: int, write: bool) -> None:
        """WRONGTYPE unless every live key of `keys` holds a value of type `type_name`: the
        one check, made from the command's declared key type (kv_registry.Spec.key_type)."""
        data = self.data
        for k in keys:
            item = data.get(k)
            if item is not None and TYPE_NAMES[item[0]] != type_name \
                    and self._lookup(k, now, write) is not None:
                raise _Fail(E_WRONGTYPE)

    def read(self, name: str, args: list, now: int | None = None):
        """Run a read-only command on the primary's state (args as parsed, values as tuples).
        Reads of a few keys hold `lock` (one consistent point); KEYS/SCAN/DBSIZE/RANDOMKEY do
        not (they copy the key list at one instant, then check each key: holding the lock
        through a million keys would stall apply() and with it the heartbeats)."""
        if now is None:
            now = self.read_now()
        if name in _SCANS:
            return self._run([name, *args], now, False)
        with self.lock:
            return self._run([name, *args], now, False)

    # -- primitive state changes (all keep digest, expires and mod slots right)
    def _lookup(self, key: str, now: int, write: bool):
        """(kind, value) if key is live at `now`, else None.  In a write, an expired key is
        removed on the way (deterministic: `now` comes from the entry)."""
        item = self.data.get(key)
        if item is None:
            return None
        d = self.expires.get(key) if self.expires else None
        if d is not None and d <= now:
            if write:
                self._delete(key, expired=True)
            return None
        return item

    def type_name_of(self, key: str, now: int) -> str | None:
        """The Redis type name of a live key ("list", "zset", ...), or None."""
        item = self._lookup(key, now, True)
        return None if item is None else TYPE_NAMES[item[0]]

    # -- the container API of the value-type modules (kv_hash, kv_list, kv_set, kv_zset)
    def fetch(self, key: str, kind: str, now: int, write: bool):
        """The value object of kind `kind` at a live key, or None; raises Fail(WRONGTYPE) when
        the key holds another kind.  In a write an expired key is removed on the way."""
        item = self._lookup(key, now, write)
        if item is None:
            return None
        if item[0] != kind:
            raise _Fail(E_WRONGTYPE)
        return item[1]

    def store(self, key: str, obj, old_h: int | None) -> None:
        """Record a change to the container `obj` at key (call it after changing obj in place).
        old_h: obj.h before the change, None when obj is new (the key was absent).  An empty
        container is removed with its key (Redis never keeps empty containers); the digest
        and WATCH's modification slot follow."""
        kind = obj.kind
        if old_h is not None:
            self.digest = (self.digest - container_hash(key, kind, old_h)) & _MASK64
            if not obj:
                del self.data[key]
                if key in self.expires:
                    self._drop_ttl(key)
                self._touch(key)
                return
        elif not obj:
            return
        else:
            self.data[key] = (kind, obj)
            if self.blocked.on:
                self.blocked.created(key)
        self.digest = (self.digest + container_hash(key, kind, obj.h)) & _MASK64
        self._touch(key)

    def remove(self, key: str) -> None:
        """Delete a live key of any type (digest, TTL and modification slot follow)."""
        self._delete(key)

    def touch_key(self, key: str) -> None:
        """Mark key modified for WATCH without changing it."""
        self._touch(key)

    def _touch(self, key: str) -> None:
        self.mod[key_slot(key)] = self._index

    def _drop_ttl(self, key: str) -> None:
        d = self.expires.pop(key)
        self.digest = (self.digest - self.ttl_hash(key, d)) & _MASK64

    def _set_ttl(self, key: str, deadline: int) -> None:
        old = self.expires.get(key)
        if old is not None:
            self.digest = (self.digest - self.ttl_hash(key, old)) & _MASK64
        self.expires[key] = deadline
        self.digest = (self.digest + self.ttl_hash(key, deadline)) & _MASK64
        self._touch(key)

    def _put(self, key: str, kind: str, value, keep_ttl: bool = False) -> None:
        old = self.data.get(key)
        if old is not None:
            self.digest = (self.digest - self.item_hash(key, *old)) & _MASK64
            if not keep_ttl and key in self.expires:
                self._drop_ttl(key)
        elif self.blocked.on:
            self.blocked.created(key)   # RENAME / COPY of a container (Redis's dbAdd)
        self.data[key] = (kind, value)
        self.digest = (self.digest + self.item_hash(key, kind, value)) & _MASK64
        self._touch(key)

    def _delete(self, key: str, expired: bool = False) -> None:
        old = self.data.pop(key)
        self.digest = (self.digest - self.item_hash(key, *old)) & _MASK64
        if key in self.expires:
            d = self.expires[key]
            self._drop_ttl(key)
            if expired:   # an expiry is a change only to those who watched it while it was live
                s = key_slot(key)
                if d > self.gone[s]:
                    self.gone[s] = d
                return
        self._touch(key)

    def _set_deadline(self, key: str, deadline: int | None, now: int) -> None:
        """Give a live key a deadline (None: no TTL).  A deadline <= now deletes it."""
        if deadline is None:
            if key in self.expires:
                self._drop_ttl(key)
                self._touch(key)
        elif deadline <= now:
            self._delete(key)
        else:
            self._set_ttl(key, deadline)

    # -- snapshots
    def items(self):
        """Every stored key as an opaque snapshot record (key, tag, payload), encoded by its
        type's TypeOps (kv_storage writes records without knowing any type), then one
        (None, "state", dict) item with the deadlines, the replicated clock and the
        modification slots (kv_storage writes it into the snapshot's state lines)."""
        types = TYPES
        last = tag = enc = None
        for key, (kind, value) in self.data.items():
            if kind != last:
                ops = types[kind]
                last, tag, enc = kind, ops.tag, ops.encode
            yield key, tag, enc(value)
        yield None, "state", self.state()

    def state(self) -> dict:
        st = {"expires": self.expires, "clock_ms": self.clock_ms,
              "mod": _pack_slots(self.mod), "gone": _pack_slots(self.gone)}
        blocked = self.blocked.state()
        if blocked is not None:
            blocked["waiters"] = [[wid, keys, sm, encode_args(args), kt]
                                  for wid, keys, sm, args, kt in blocked["waiters"]]
            st["blocked"] = blocked
        return st

    def restore(self, items, last_applied: int, digest: str | int | None = None) -> None:
        """Replace the whole state with a snapshot's records (key, tag, payload), decoded by
        the TypeOps of their tag, ending with its (None, "state", {...}) item when it has one
        (old snapshots have none).  `digest`, when given (the snapshot's own), is trusted
        instead of rehashing every item.  Raises ValueError naming the key for a record of
        an unknown tag or a payload its type cannot decode (nothing is replaced then)."""
        data = {}
        state = None
        total = 0
        h = self.item_hash if digest is None else None
        tags = TAGS
        last = kind = dec = None
        gc_was_on = gc.isenabled()
        gc.disable()   # millions of new tuples would trigger needless full collections
        try:
            for key, tag, payload in items:
                if key is None:
                    state = payload
                    continue
                if tag != last:
                    ops = tags.get(tag)
                    if ops is None:
                        raise ValueError(f"snapshot record for key {key!r:.80} has an unknown tag {tag!r}")
                    last, kind, dec = tag, ops.kind, ops.decode
                try:
                    value = dec(payload)
                except ValueError as e:
                    raise ValueError(f"snapshot record for key {key!r:.80} (tag {tag!r}): {e}") from None
                data[key] = (kind, value)
                if h is not None:
                    total = (total + h(key, kind, value)) & _MASK64
        finally:
            if gc_was_on:
                gc.enable()
        hashing = digest is None
        state = state or {}
        expires = {k: int(v) for k, v in (state.get("expires") or {}).items() if k in data}
        if hashing:
            th = self.ttl_hash
            for k, d in expires.items():
                total = (total + th(k, d)) & _MASK64
        else:
            total = int(digest, 16) if isinstance(digest, str) else int(digest)
        self.data = data
        self.expires = expires
        self.clock_ms = int(state.get("clock_ms", 0))
        self.mod = _unpack_slots(state.get("mod"), last_applied)
        self.gone = _unpack_slots(state.get("gone"), 0)
        self.blocked.restore(state.get("blocked"), encode_args, decode_args)
        self.digest = total
        self.last_applied = last_applied

    def digest_hex(self) -> str:
        return f"{self.digest:016x}"

    def __len__(self) -> int:
        return len(self.data)

    def live_count(self, now: int) -> int:
        exp = self.expires
        if not exp:
            return len(self.data)
        return len(self.data) - sum(1 for d in list(exp.values()) if d <= now)


def _pack_slots(a: array) -> str:
    return base64.b64encode(zlib.compress(a.tobytes(), 1)).decode("ascii")


def _unpack_slots(s: str | None, fill: int) -> array:
    """Slots from a snapshot; an old snapshot has none: every slot then says "changed at the
    snapshot's index" (a WATCH older than the snapshot aborts - the same on every node, since
    every node that restores this snapshot gets the same slots)."""
    if not s:
        a = array("q", [fill]) * MOD_SLOTS
        return a
    a = array("q")
    a.frombytes(zlib.decompress(base64.b64decode(s)))
    if len(a) != MOD_SLOTS:
        raise ValueError(f"snapshot has {len(a)} modification slots, expected {MOD_SLOTS}")
    return a


# ---------------------------------------------------------------------------------------------
# Commands.  Each is fn(store, args, now, write) -> result; raises _Fail for a runtime error.
# args are as the parser normalised them (kv_protocol data commands): keys str, stored values
# (kind, value) tuples, numbers int, option words upper-case str.  Relative times were turned
# into absolute unix-ms deadlines by the primary (SET ... PXAT, PEXPIREAT, ...).
# `write` is False when a read runs on the primary outside the log: nothing may change then.

def _bytes_of(item) -> bytes:
    return to_bytes(item[0], item[1])


def _c_del(s, a, now, w):
    n = 0
    for k in a:
        if s._lookup(k, now, w) is not None:
            s._delete(k)
            n += 1
    return n


def _c_exists(s, a, now, w):
    return sum(1 for k in a if s._lookup(k, now, w) is not None)


def _c_type(s, a, now, w):
    item = s._lookup(a[0], now, w)
    return Simple("none" if item is None else TYPE_NAMES[item[0]])


def _c_rename(s, a, now, w):
    src, dst, nx = a
    item = s._lookup(src, now, w)
    if item is None:
        raise _Fail(E_NO_KEY)
    if src == dst:
        return 0 if nx else OK
    if nx and s._lookup(dst, now, w) is not None:
        return 0
    d = s.expires.get(src)
    s._delete(src)
    if s._lookup(dst, now, w) is not None:
        s._delete(dst)
    s._put(dst, item[0], item[1])
    if d is not None:
        s._set_ttl(dst, d)
    return 1 if nx else OK


def _c_copy(s, a, now, w):
    src, dst, replace = a
    if src == dst:
        raise _Fail("ERR source and destination objects are the same")
    item = s._lookup(src, now, w)
    if item is None:
        return 0
    if s._lookup(dst, now, w) is not None:
        if not replace:
            return 0
        s._delete(dst)
    s._put(dst, item[0], TYPES[item[0]].copy(item[1]))    # a deep copy: containers change in place
    d = s.expires.get(src)
    if d is not None:
        s._set_ttl(dst, d)
    return 1


def _c_randomkey(s, a, now, w):
    data = s.data
    for _ in range(100):
        n = len(data)
        if n == 0:
            return None
        try:
            key = next(iter(data)) if n == 1 else _random_key(data)
        except (StopIteration, RuntimeError):   # changed under us: try again
            continue
        if s._lookup(key, now, False) is not None:
            return key
    live = [k for k in list(data) if s._lookup(k, now, False) is not None]
    return random.choice(live) if live else None


def _random_key(data: dict) -> str:
    """A random key without copying the dict when it is small; large dicts: skip a random
    number of keys of a bounded prefix (RANDOMKEY is rare; documented as not uniform)."""
    n = len(data)
    i = random.randrange(min(n, 100_000))
    it = iter(data)
    for _ in range(i):
        next(it)
    return next(it)


def _c_scan(s, a, now, w):
    """SCAN cursor MATCH COUNT TYPE: keys in the order of a stable 32-bit hash; the cursor is the
    next hash value to visit, so a key present for the whole iteration is returned exactly once
    whatever else changes.  Each call visits a hash range sized for about COUNT keys (at least
    1/64 of the space, so a full iteration costs at most ~64 passes over the keys)."""
    cursor, pattern, count, typ = a
    match = compile_glob(pattern) if pattern is not None else None
    n = max(len(s.data), 1)
    span = max((1 << 32) * count // n, (1 << 32) // 64, 1)
    lo = cursor
    hi = min(lo + span, 1 << 32)
    found = []
    for k in list(s.data):
        h = _crc32(k.encode("utf-8", "surrogatepass"))
        if lo <= h < hi:
            found.append((h, k))
    found.sort()
    keys = []
    for _, k in found:
        if s._lookup(k, now, False) is None:
            continue
        if match is not None and not match(k):
            continue
        if typ is not None:
            item = s.data.get(k)
            if item is None or TYPE_NAMES[item[0]] != typ:
                continue
        keys.append(k)
    nxt = 0 if hi >= 1 << 32 else hi
    return [str(nxt), keys]


def _c_keys(s, a, now, w):
    match = compile_glob(a[0])
    return sorted(k for k in list(s.data) if match(k) and s._lookup(k, now, False) is not None)


def _c_dbsize(s, a, now, w):
    return s.live_count(now)


def _c_flushdb(s, a, now, w):
    """Every key goes; a WATCH of a key that existed aborts.  Up to 65,536 keys their slots are
    marked one by one (exact, as Redis); beyond, every slot is (one array fill, so apply() does
    not stall on a huge keyspace; a WATCH of a key that did not exist then aborts too)."""
    idx = s._index
    if len(s.data) > 65536:
        s.mod = array("q", [idx]) * MOD_SLOTS
    else:
        mod = s.mod
        for k in s.data:
            mod[key_slot(k)] = idx
    s.data = {}
    s.expires = {}
    s.digest = 0
    return OK


def _c_expire(s, a, now, w):
    # PEXPIREAT key deadline_ms cond  (the primary turned EXPIRE/PEXPIRE/EXPIREAT into this)
    key, when, cond = a
    if s._lookup(key, now, w) is None:
        return 0
    cur = s.expires.get(key)
    if "NX" in cond and cur is not None:
        return 0
    if "XX" in cond and cur is None:
        return 0
    if "GT" in cond and (cur is None or when <= cur):
        return 0
    if "LT" in cond and cur is not None and when >= cur:
        return 0
    s._set_deadline(key, when, now)
    return 1


def _c_ttl(s, a, now, w):
    # TTL key unit("s"|"ms") absolute(0|1)
    key, unit, absolute = a
    if s._lookup(key, now, w) is None:
        return -2
    d = s.expires.get(key)
    if d is None:
        return -1
    if absolute:
        return d if unit == "ms" else d // 1000
    left = max(d - now, 0)
    return left if unit == "ms" else (left + 500) // 1000


def _c_persist(s, a, now, w):
    key = a[0]
    if s._lookup(key, now, w) is None or key not in s.expires:
        return 0
    s._set_deadline(key, None, now)
    return 1


def _c_touch(s, a, now, w):
    return _c_exists(s, a, now, w)


def _c_purge(s, a, now, w):
    """The primary's active expiry: delete the listed keys that are past their deadline now."""
    n = 0
    for k in a:
        d = s.expires.get(k)
        if d is not None and d <= now:
            s._delete(k, expired=True)
            n += 1
    return n


def _c_cas(s, a, now, w):
    # CAS key expected new (line protocol): swap when the current value's bytes equal expected's
    key, expected, new = a
    item = s._lookup(key, now, w)
    if item is None:
        return [0, None]
    if _bytes_of(item) != _bytes_of(expected):
        return [0, Value(*item)]
    s._put(key, new[0], new[1], keep_ttl=True)
    return [1, Value(*item)]


def _c_error(s, a, now, w):
    """A queued command that failed before EXEC (bad option, overflowing time): its error."""
    return RedisError(a[0])


def _c_unwatch(s, a, now, w):
    return OK


def _c_block(s, a, now, w):
    """BLOCK wid keys sm_name sm_args (kv_blocking): try the non-blocking form; when it finds
    nothing, register the waiter (FIFO per key) and answer BLOCKED."""
    wid, keys, sm, args = a
    result = s._exec(sm, args, now, True)
    if not is_empty(result):
        return result
    s.blocked.add(wid, keys, sm, args, SM_SPECS[sm].key_type)
    return BLOCKED


def _c_unblock(s, a, now, w):
    """UNBLOCK wid: 1 if the waiter was still blocked (now removed), else 0 (served)."""
    return 1 if s.blocked.remove(a[0]) else 0


_COMMANDS = {
    **APPLY,     # every command a value-type module declares (kv_registry)
    "ERROR": _c_error, "UNWATCH": _c_unwatch, "BLOCK": _c_block, "UNBLOCK": _c_unblock,
    "DEL": _c_del, "EXISTS": _c_exists, "TYPE": _c_type, "RENAME": _c_rename,
    "COPY": _c_copy, "RANDOMKEY": _c_randomkey, "SCAN": _c_scan, "KEYS": _c_keys,
    "DBSIZE": _c_dbsize, "FLUSHDB": _c_flushdb, "PEXPIREAT": _c_expire, "TTL": _c_ttl,
    "PERSIST": _c_persist, "TOUCH": _c_touch, "PURGE": _c_purge, "CAS": _c_cas,
}
_SCANS = frozenset({"KEYS", "SCAN", "DBSIZE", "RANDOMKEY"})
WRITE_COMMANDS = frozenset({"DEL", "RENAME", "COPY", "FLUSHDB",
                            "PEXPIREAT", "PERSIST", "PURGE", "CAS", "BLOCK", "UNBLOCK"}
                           | {n for n, sp in SM_SPECS.items() if sp.write and sp.apply is not None})
READ_COMMANDS = frozenset(_COMMANDS) - WRITE_COMMANDS
