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
import random
import re
import threading
import time
import zlib
from array import array
from fractions import Fraction

from kv_protocol import Simple, compile_glob, value_to_resp_bytes

__all__ = ["KeyValueStore", "Value", "RedisError", "NULL_ARRAY", "encode_args",
           "decode_args", "WRITE_COMMANDS", "READ_COMMANDS", "now_ms", "format_ld", "parse_ld",
           "MOD_SLOTS", "key_slot", "to_bytes"]

_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
MOD_SLOTS = 1 << 18
_SLOT_MASK = MOD_SLOTS - 1
_MAX_STRING = 512 * 1024 * 1024
_crc32 = zlib.crc32


def now_ms() -> int:
    return int(time.time() * 1000)


def key_slot(key: str) -> int:
    return _crc32(key.encode("utf-8", "surrogatepass")) & _SLOT_MASK


# ---------------------------------------------------------------------------------------------
# Result values
class Value:
    """A stored value returned by a read (GET, MGET, GETDEL, ...): kind "json" or "bytes"."""
    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value):
        self.kind = kind
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Value) and (self.kind, self.value) == (other.kind, other.value)

    def __repr__(self):
        return f"Value({self.kind!r}, {self.value!r})"


class RedisError:
    """An error result (not raised: EXEC reports one per command).  message is a full Redis
    error line, e.g. "ERR value is not an integer or out of range"."""
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message

    def __eq__(self, other):
        return isinstance(other, RedisError) and self.message == other.message

    def __repr__(self):
        return f"RedisError({self.message!r})"


class _NullArray:
    __slots__ = ()

    def __repr__(self):
        return "NULL_ARRAY"


NULL_ARRAY = _NullArray()     # EXEC aborted by WATCH (RESP2 *-1)
OK = Simple("OK")

E_NOT_INT = "ERR value is not an integer or out of range"
E_NOT_FLOAT = "ERR value is not a valid float"
E_OVERFLOW = "ERR increment or decrement would overflow"
E_NO_KEY = "ERR no such key"
E_SYNTAX = "ERR syntax error"


class _Fail(Exception):
    """Internal: a command's runtime error; becomes a RedisError result."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
# Arguments inside log entries
def encode_args(args) -> list:
    """Command arguments -> JSON: Value/(kind, value) stored values become {"b": base64} or
    {"j": json}; str/int/None stay."""
    out = []
    for a in args:
        if isinstance(a, Value):
            a = (a.kind, a.value)
        if type(a) is tuple:
            kind, v = a
            out.append({"b": base64.b64encode(v).decode("ascii")} if kind == "bytes" else {"j": v})
        else:
            out.append(a)
    return out


def decode_args(args: list) -> list:
    """Inverse of encode_args: tagged values become (kind, value) tuples."""
    out = []
    for a in args:
        if type(a) is dict:
            if "b" in a:
                try:
                    out.append(("bytes", base64.b64decode(a["b"], validate=True)))
                except (binascii.Error, ValueError, TypeError) as e:
                    raise ValueError(f"bad base64 argument: {e}") from None
            else:
                out.append(("json", a["j"]))
        else:
            out.append(a)
    return out


def to_bytes(kind: str, value) -> bytes:
    """A stored value as Redis sees it (the bytes RESP returns): kv_protocol's rule, JSON strings
    as their UTF-8, other JSON values as their text (42 -> b"42")."""
    return value_to_resp_bytes(value, kind)


# ---------------------------------------------------------------------------------------------
# Integers and long doubles, exactly as Redis parses and prints them
def parse_int(b: bytes) -> int | None:
    """Redis string2ll: optional '-', no leading zeros (except "0"), no spaces or '+', int64."""
    n = len(b)
    if n == 0 or n > 20:
        return None
    if b == b"0":
        return 0
    d = b[1:] if b[:1] == b"-" else b
    if not d or not d.isdigit() or d[:1] == b"0" or not d.isascii():
        return None
    v = int(b)
    return v if _INT64_MIN <= v <= _INT64_MAX else None


_LD_RE = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)\Z", re.I)
_LD_MANT = 64
_LD_MAX_EXP = 16384


def _round_ld(x: Fraction) -> Fraction | None:
    """Round to the nearest x87 80-bit long double (64-bit significand, ties to even);
    None when it overflows."""
    if x == 0:
        return Fraction(0)
    neg = x < 0
    if neg:
        x = -x
    n, d = x.numerator, x.denominator
    e = n.bit_length() - d.bit_length() - _LD_MANT
    num, den = (n, d << e) if e >= 0 else (n << -e, d)
    while num >= den << _LD_MANT:
        den <<= 1
        e += 1
    while num < den << (_LD_MANT - 1):
        num <<= 1
        e -= 1
    if e < -16445:   # below the subnormal range: flush to zero (never reached by INCRBYFLOAT)
        return Fraction(0)
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
        if q == 1 << _LD_MANT:
            q >>= 1
            e += 1
    if e + _LD_MANT > _LD_MAX_EXP:
        return None
    v = Fraction(q << e) if e >= 0 else Fraction(q, 1 << -e)
    return -v if neg else v


def parse_ld(b: bytes):
    """Redis string2ld (strtold, no leading space, whole string): Fraction, or None when
    invalid; the strings "inf"/"nan" give float('inf') / float('nan') (callers reject them)."""
    if not b or len(b) >= 5 * 1024 or not _LD_RE.match(b):
        return None
    low = b.lower().lstrip(b"+-")
    if low.startswith(b"nan"):
        return None
    if low.startswith(b"inf"):
        return float("-inf") if b[:1] == b"-" else float("inf")
    v = _round_ld(Fraction(b.decode("ascii")))
    return v if v is not None else None


def format_ld(x: Fraction) -> bytes:
    """Redis ld2string(LD_STR_HUMAN): "%.17Lf", trailing zeros (and '.') removed, "-0" -> "0"."""
    neg = x < 0
    a = -x if neg else x
    scaled = a * 10 ** 17
    q, r = divmod(scaled.numerator, scaled.denominator)
    if 2 * r > scaled.denominator or (2 * r == scaled.denominator and q & 1):
        q += 1
    s = str(q).rjust(18, "0")
    s = s[:-17] + "." + s[-17:]
    s = s.rstrip("0").rstrip(".")
    if neg:
        s = "-" + s
    if s == "-0":
        s = "0"
    return s.encode("ascii")


# ---------------------------------------------------------------------------------------------
class KeyValueStore:
    """The replicated state machine (see the module docstring for entries and invariants).

    Callers use: apply(entry) on every node; get(key) (GET's fast path), read(name, args, now)
    for every other read on the primary; items()/restore() for snapshots; digest_hex(), len(),
    expires_count(), last_applied, clock_ms, lock.
    """

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

    # -- hashing
    @staticmethod
    def item_hash(key: str, kind: str, value) -> int:
        if kind == "bytes":
            vb = value
        else:
            vb = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
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
        if op == "CMD" or op == "EXEC":
            result = self._apply_cmds(op, entry.value)
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
        name = c[0]
        fn = _COMMANDS.get(name)
        if fn is None:
            return RedisError(f"ERR unknown command '{name}'")
        try:
            return fn(self, decode_args(c[1:]) if write else c[1:], now, write)
        except _Fail as e:
            return RedisError(e.message)

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
        """(key, kind, value) of every stored key, then one (None, "state", dict) item with the
        deadlines, the replicated clock and the modification slots (kv_storage writes it into
        the snapshot's state lines)."""
        for key, (kind, value) in self.data.items():
            yield key, kind, value
        yield None, "state", self.state()

    def state(self) -> dict:
        return {"expires": self.expires, "clock_ms": self.clock_ms,
                "mod": _pack_slots(self.mod), "gone": _pack_slots(self.gone)}

    def restore(self, items, last_applied: int, digest: str | int | None = None) -> None:
        """Replace the whole state with (key, kind, value) items (a snapshot's, ending with its
        (None, "state", {...}) item when it has one; old snapshots have none).  `digest`, when
        given (the snapshot's own), is trusted instead of rehashing every item."""
        data = {}
        state = None
        gc_was_on = gc.isenabled()
        gc.disable()   # millions of new tuples would trigger needless full collections
        try:
            if digest is not None:
                for key, kind, value in items:
                    if key is None:
                        state = value
                    else:
                        data[key] = (kind, value)
            else:
                total = 0
                h = self.item_hash
                for key, kind, value in items:
                    if key is None:
                        state = value
                    else:
                        data[key] = (kind, value)
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


def _value(item):
    return None if item is None else Value(item[0], item[1])


def _c_get(s, a, now, w):
    return _value(s._lookup(a[0], now, w))


def _c_set(s, a, now, w):
    # SET key value cond(""|"NX"|"XX") get(0|1) expiry(None | deadline ms | "KEEPTTL")
    key, val, cond, get, expiry = a
    old = s._lookup(key, now, w)
    if (cond == "NX" and old is not None) or (cond == "XX" and old is None):
        return _value(old) if get else None
    s._put(key, val[0], val[1], keep_ttl=(expiry == "KEEPTTL"))
    if type(expiry) is int:
        s._set_deadline(key, expiry, now)
    return _value(old) if get else OK


def _c_getdel(s, a, now, w):
    old = s._lookup(a[0], now, w)
    if old is not None:
        s._delete(a[0])
    return _value(old)


def _c_getex(s, a, now, w):
    # GETEX key [deadline ms | "PERSIST" | None | "ERR ..." (a bad time: an error if key exists)]
    key, exp = a
    old = s._lookup(key, now, w)
    if old is not None and type(exp) is str and exp.startswith("ERR"):
        raise _Fail(exp)
    if old is not None and w and exp is not None:
        s._set_deadline(key, None if exp == "PERSIST" else exp, now)
    return _value(old)


def _c_setnx(s, a, now, w):
    key, val = a
    if s._lookup(key, now, w) is not None:
        return 0
    s._put(key, val[0], val[1])
    return 1


def _c_append(s, a, now, w):
    key, val = a
    old = s._lookup(key, now, w)
    add = _bytes_of(val)
    new = (_bytes_of(old) if old is not None else b"") + add
    if len(new) > _MAX_STRING:
        raise _Fail("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    s._put(key, "bytes", new, keep_ttl=True)
    return len(new)


def _c_strlen(s, a, now, w):
    item = s._lookup(a[0], now, w)
    return 0 if item is None else len(_bytes_of(item))


def _c_getrange(s, a, now, w):
    key, start, end = a
    item = s._lookup(key, now, w)
    if item is None:
        return Value("bytes", b"")
    b = _bytes_of(item)
    n = len(b)
    if start < 0 and end < 0 and start > end:
        return Value("bytes", b"")
    if start < 0:
        start += n
    if end < 0:
        end += n
    start = max(start, 0)
    end = max(end, 0)
    if end >= n:
        end = n - 1
    if start > end or n == 0:
        return Value("bytes", b"")
    return Value("bytes", b[start:end + 1])


def _c_setrange(s, a, now, w):
    key, offset, val = a
    add = _bytes_of(val)
    old = s._lookup(key, now, w)
    if offset < 0:
        raise _Fail("ERR offset is out of range")
    if old is None:
        if not add:
            return 0
        cur = b""
    else:
        cur = _bytes_of(old)
        if not add:
            return len(cur)
    if offset + len(add) > _MAX_STRING:
        raise _Fail("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    if len(cur) < offset:
        cur = cur + b"\x00" * (offset - len(cur))
    new = cur[:offset] + add + cur[offset + len(add):]
    s._put(key, "bytes", new, keep_ttl=True)
    return len(new)


def _c_incrby(s, a, now, w):
    key, by = a
    item = s._lookup(key, now, w)
    if item is None:
        cur = 0
    elif item[0] == "json" and type(item[1]) is int and _INT64_MIN <= item[1] <= _INT64_MAX:
        cur = item[1]
    else:
        cur = parse_int(_bytes_of(item))
        if cur is None:
            raise _Fail(E_NOT_INT)
    new = cur + by
    if not _INT64_MIN <= new <= _INT64_MAX:
        raise _Fail(E_OVERFLOW)
    s._put(key, "json", new, keep_ttl=True)   # a counter reads as a JSON number on the line protocol
    return new


def _c_incrbyfloat(s, a, now, w):
    key, by = a
    incr = parse_ld(_bytes_of(by)) if type(by) is tuple else by
    if incr is None or type(incr) is float:
        raise _Fail(E_NOT_FLOAT)
    item = s._lookup(key, now, w)
    cur = Fraction(0) if item is None else parse_ld(_bytes_of(item))
    if cur is None or type(cur) is float:
        raise _Fail(E_NOT_FLOAT)
    new = _round_ld(cur + incr)
    if new is None:
        raise _Fail("ERR increment would produce NaN or Infinity")
    out = format_ld(new)
    s._put(key, "bytes", out, keep_ttl=True)
    return Value("bytes", out)


def _c_mget(s, a, now, w):
    return [_value(s._lookup(k, now, w)) for k in a]


def _c_mset(s, a, now, w):
    for i in range(0, len(a), 2):
        s._lookup(a[i], now, w)
        s._put(a[i], a[i + 1][0], a[i + 1][1])
    return OK


def _c_msetnx(s, a, now, w):
    if any(s._lookup(a[i], now, w) is not None for i in range(0, len(a), 2)):
        return 0
    _c_mset(s, a, now, w)
    return 1


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
    return Simple("none" if s._lookup(a[0], now, w) is None else "string")


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
    s._put(dst, item[0], item[1])
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
        if typ is not None and typ != "string":
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


_COMMANDS = {
    "ERROR": _c_error, "UNWATCH": _c_unwatch,
    "GET": _c_get, "SET": _c_set, "GETDEL": _c_getdel, "GETEX": _c_getex, "SETNX": _c_setnx,
    "APPEND": _c_append, "STRLEN": _c_strlen, "GETRANGE": _c_getrange, "SETRANGE": _c_setrange,
    "INCRBY": _c_incrby, "INCRBYFLOAT": _c_incrbyfloat, "MGET": _c_mget, "MSET": _c_mset,
    "MSETNX": _c_msetnx, "DEL": _c_del, "EXISTS": _c_exists, "TYPE": _c_type, "RENAME": _c_rename,
    "COPY": _c_copy, "RANDOMKEY": _c_randomkey, "SCAN": _c_scan, "KEYS": _c_keys,
    "DBSIZE": _c_dbsize, "FLUSHDB": _c_flushdb, "PEXPIREAT": _c_expire, "TTL": _c_ttl,
    "PERSIST": _c_persist, "TOUCH": _c_touch, "PURGE": _c_purge, "CAS": _c_cas,
}
_SCANS = frozenset({"KEYS", "SCAN", "DBSIZE", "RANDOMKEY"})
WRITE_COMMANDS = frozenset({"SET", "GETDEL", "GETEX", "SETNX", "APPEND", "SETRANGE", "INCRBY",
                            "INCRBYFLOAT", "MSET", "MSETNX", "DEL", "RENAME", "COPY", "FLUSHDB",
                            "PEXPIREAT", "PERSIST", "PURGE", "CAS"})
READ_COMMANDS = frozenset(_COMMANDS) - WRITE_COMMANDS
