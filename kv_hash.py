"""The hash type: a key holding a map of fields to values (both byte strings), and the hash
commands (Redis's t_hash.c is the model of behaviour; the code is ours).

Value: HashValue, a dict field -> value in insertion order (what Redis's listpack encoding
returns for small hashes, so HGETALL of a small hash reads in the same order), plus `h`, the
content hash: the sum mod 2**64 of elem_hash(field, value) over its fields, so one HSET or HDEL
changes the digest in O(1).  `lp` is Redis's encoding (listpack while at most 512 fields, none
longer than 64 bytes, then hashtable for good): OBJECT ENCODING and HSCAN (a listpack is
scanned whole in one call) read it.  The order is kept whatever the encoding (Redis's
hashtable order is its own; neither is specified).

Randomness: HRANDFIELD's parser draws a seed (parsers run on the primary only); apply picks
with random.Random(seed), so it is deterministic inside EXEC too.

Snapshot record: tag "h", payload [field_b64, value_b64, ...] (flat); `lp` is recomputed on
load from the contents, as Redis does when it loads an RDB file.
"""

from __future__ import annotations

import base64
import binascii
import random
import sys
import zlib
from fractions import Fraction

from kv_protocol import compile_glob
from kv_spec import (TypeOps, arity_error, check_arity, data_command, key, key_and_arg, key_and_rest,
                     one_key, reject, shaped, spec_rows)
from kv_values import (E_NOT_FLOAT, E_NOT_INT, E_OVERFLOW, E_SYNTAX, INT64_MAX, INT64_MIN, MASK64,
                       OK, Fail, Pairs, _round_ld, elem_hash, format_ld, parse_int, parse_ld)

KIND = "hash"
SPEC: dict = {}   # name -> Spec, filled at the end from SPECS (the parsers read it)
LP_ENTRIES = 512        # Redis 7.0's hash-max-listpack-entries (its compiled default)
LP_VALUE = 64           # Redis's hash-max-listpack-value
NEG_COUNT_MAX = 1 << 24  # HRANDFIELD with a negative count: at most this many picks


class HashValue(dict):
    """field (bytes) -> value (bytes); h: the content hash (see the module docstring); lp:
    Redis's encoding, True while the hash would be a listpack there (at most LP_ENTRIES fields,
    no field or value longer than LP_VALUE bytes); once lost it stays lost, as in Redis."""
    __slots__ = ("h", "lp")
    kind = KIND

    def __init__(self, *a):
        super().__init__(*a)
        self.h = 0
        for f, v in self.items():
            self.h = (self.h + elem_hash(f, v)) & MASK64
        self.lp = len(self) <= LP_ENTRIES and all(
            len(f) <= LP_VALUE and len(v) <= LP_VALUE for f, v in self.items())

    def put(self, field: bytes, value: bytes) -> bool:
        """Set one field; True when it is new."""
        old = self.get(field)
        if old is not None:
            self.h = (self.h - elem_hash(field, old)) & MASK64
        self[field] = value
        self.h = (self.h + elem_hash(field, value)) & MASK64
        if self.lp and (len(field) > LP_VALUE or len(value) > LP_VALUE or len(self) > LP_ENTRIES):
            self.lp = False
        return old is None

    def drop(self, field: bytes) -> bool:
        """Delete one field; True when it was there."""
        old = self.pop(field, None)
        if old is None:
            return False
        self.h = (self.h - elem_hash(field, old)) & MASK64
        return True


# ---------------------------------------------------------------------------------------------
# Type operations
def _encode(v: HashValue) -> list:
    out = []
    for f, x in v.items():
        out.append(base64.b64encode(f).decode("ascii"))
        out.append(base64.b64encode(x).decode("ascii"))
    return out


def _decode(payload) -> HashValue:
    if type(payload) is not list or len(payload) % 2:
        raise ValueError("a hash's snapshot record is not a flat [field, value, ...] list")
    try:
        raw = [binascii.a2b_base64(p, strict_mode=True) for p in payload]
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError(f"bad base64 in a hash record: {e}") from None
    return HashValue(zip(raw[0::2], raw[1::2]))


def _copy(v: HashValue) -> HashValue:
    c = HashValue()
    dict.update(c, v)
    c.h = v.h
    c.lp = v.lp
    return c


def _memory(v: HashValue) -> int:
    return sys.getsizeof(v) + sum(sys.getsizeof(f) + sys.getsizeof(x) for f, x in v.items())


def _encoding(v: HashValue) -> str:
    return "listpack" if v.lp else "hashtable"


TYPES = [TypeOps(KIND, "hash", "h", _encode, _decode, _copy, _memory, _encoding)]


# ---------------------------------------------------------------------------------------------
# Commands.  apply(s, args, now, write): s is the keyspace (kv_state.KeyValueStore: fetch,
# store, remove); args as the parser made them; `write` False for a read on the primary.
def _p_hset(args, line):
    if len(args) < 4 or len(args) % 2:
        raise arity_error(args[0])
    return data_command(SPEC["HSET"], args, [key(args[1]), list(args[2:])])


def _a_hset(s, a, now, w):
    k, pairs = a
    h = s.fetch(k, KIND, now, w)
    old = None if h is None else h.h
    if h is None:
        h = HashValue()
    added = 0
    for i in range(0, len(pairs), 2):
        added += h.put(pairs[i], pairs[i + 1])
    s.store(k, h, old)
    return added


def _p_key_fields(name):
    return shaped(SPEC, name, key_and_rest)


def _a_hdel(s, a, now, w):
    k, fields = a
    h = s.fetch(k, KIND, now, w)
    if h is None:
        return 0
    old = h.h
    n = sum(h.drop(f) for f in fields)
    if n:
        s.store(k, h, old)
    return n


def _p_key_field(name):
    return shaped(SPEC, name, key_and_arg)


def _a_hget(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return None if h is None else h.get(a[1])


def _p_key(name):
    return shaped(SPEC, name, one_key)


def _a_hlen(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return 0 if h is None else len(h)


def _a_hgetall(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return {} if h is None else dict(h)


def _a_hsetnx(s, a, now, w):
    k, field, value = a
    h = s.fetch(k, KIND, now, w)
    if h is not None and field in h:
        return 0
    old = None if h is None else h.h
    if h is None:
        h = HashValue()
    h.put(field, value)
    s.store(k, h, old)
    return 1


def _p_hsetnx(args, line):
    check_arity(args, SPEC["HSETNX"].arity)
    return data_command(SPEC["HSETNX"], args, [key(args[1]), args[2], args[3]])


def _p_hmset(args, line):
    if len(args) < 4 or len(args) % 2:
        raise arity_error(args[0])
    return data_command(SPEC["HMSET"], args, [key(args[1]), list(args[2:])])


def _a_hmset(s, a, now, w):
    _a_hset(s, a, now, w)
    return OK


def _a_hmget(s, a, now, w):
    k, fields = a
    h = s.fetch(k, KIND, now, w)
    if h is None:
        return [None] * len(fields)
    return [h.get(f) for f in fields]


def _a_hexists(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return int(h is not None and a[1] in h)


def _a_hstrlen(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    v = None if h is None else h.get(a[1])
    return 0 if v is None else len(v)


def _a_hkeys(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return [] if h is None else list(h)


def _a_hvals(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return [] if h is None else list(h.values())


# -- HINCRBY / HINCRBYFLOAT
def _p_hincrby(args, line):
    check_arity(args, SPEC["HINCRBY"].arity)
    by = parse_int(args[3])
    if by is None:
        raise reject(E_NOT_INT)
    return data_command(SPEC["HINCRBY"], args, [key(args[1]), args[2], by])


def _a_hincrby(s, a, now, w):
    k, field, by = a
    h = s.fetch(k, KIND, now, w)
    cur = None if h is None else h.get(field)
    if cur is None:
        n = 0
    else:
        n = parse_int(cur)
        if n is None:
            raise Fail("ERR hash value is not an integer")
    new = n + by
    if not INT64_MIN <= new <= INT64_MAX:
        raise Fail(E_OVERFLOW)
    old = None if h is None else h.h
    if h is None:
        h = HashValue()
    out = b"%d" % new
    h.put(field, out)
    s.store(k, h, old)
    return new


def _p_hincrbyfloat(args, line):
    check_arity(args, SPEC["HINCRBYFLOAT"].arity)
    by = parse_ld(args[3])
    if by is None:
        raise reject(E_NOT_FLOAT)
    if type(by) is float:
        raise reject("ERR value is NaN or Infinity")
    return data_command(SPEC["HINCRBYFLOAT"], args, [key(args[1]), args[2], args[3]])


def _a_hincrbyfloat(s, a, now, w):
    k, field, raw = a
    by = parse_ld(raw)
    if by is None or type(by) is float:     # the parser refused these; a log entry never has one
        raise Fail(E_NOT_FLOAT)
    h = s.fetch(k, KIND, now, w)
    cur = None if h is None else h.get(field)
    if cur is None:
        n = Fraction(0)
    else:
        n = parse_ld(cur)
        if n is None:
            raise Fail("ERR hash value is not a float")
        if type(n) is float:                # a stored "inf": inf + a finite increment
            raise Fail("ERR increment would produce NaN or Infinity")
    new = _round_ld(n + by)
    if new is None:
        raise Fail("ERR increment would produce NaN or Infinity")
    out = format_ld(new)
    old = None if h is None else h.h
    if h is None:
        h = HashValue()
    h.put(field, out)
    s.store(k, h, old)
    return out


# -- HRANDFIELD (a read; its seed is drawn by the parser, which runs on the primary only, so
# that apply never draws: inside EXEC it runs on every node)
E_RAND_RANGE = f"ERR value is out of range, value must between {-INT64_MAX} and {INT64_MAX}"
E_NEG_COUNT = f"ERR value is out of range, value must between {-NEG_COUNT_MAX} and {INT64_MAX}"


def _p_hrandfield(args, line):
    """HRANDFIELD key [count [WITHVALUES]]: sm args [key, count or None, withvalues, seed].
    Redis's order: count not an integer, out of +-LONG_MAX, a 4th word other than WITHVALUES
    or a 5th word (syntax), WITHVALUES with |count| > LONG_MAX/2; all before the key."""
    check_arity(args, SPEC["HRANDFIELD"].arity)
    seed = random.getrandbits(63)
    if len(args) == 2:
        return data_command(SPEC["HRANDFIELD"], args, [key(args[1]), None, False, seed])
    n = parse_int(args[2])
    if n is None:
        raise reject(E_NOT_INT)
    if n < -INT64_MAX:
        raise reject(E_RAND_RANGE)
    if len(args) > 4 or (len(args) == 4 and args[3].lower() != b"withvalues"):
        raise reject(E_SYNTAX)
    withvalues = len(args) == 4
    if withvalues and not -(INT64_MAX // 2) <= n <= INT64_MAX // 2:
        raise reject("ERR value is out of range")
    return data_command(SPEC["HRANDFIELD"], args, [key(args[1]), n, withvalues, seed])


def _a_hrandfield(s, a, now, w):
    k, count, withvalues, seed = a
    h = s.fetch(k, KIND, now, w)
    if count is None:
        if h is None:
            return None
        return list(h)[random.Random(seed).randrange(len(h))]
    if h is None or count == 0:
        return []
    rng = random.Random(seed)
    fields = list(h)
    size = len(fields)
    if count < 0:
        if -count > NEG_COUNT_MAX:
            raise Fail(E_NEG_COUNT)
        picked = [fields[rng.randrange(size)] for _ in range(-count)]
    elif count >= size:
        picked = fields                     # the whole hash, in its order (as Redis does)
    else:                                   # distinct, in the hash's order (as a listpack's)
        picked = [fields[i] for i in sorted(rng.sample(range(size), count))]
    if withvalues:
        return Pairs((f, h[f]) for f in picked)
    return picked


# -- HSCAN
def _scan_cursor(b: bytes) -> int | None:
    """Redis parseScanCursorOrReply: strtoul, base 10, the whole word, no leading space; a
    sign is allowed ("-1" wraps), "" is 0.  None when invalid."""
    if b == b"":
        return 0
    if b[:1].isspace():
        return None
    neg = b[:1] == b"-"
    body = b[1:] if b[:1] in (b"+", b"-") else b
    if not body or not body.isdigit() or not body.isascii():
        return None
    body = body.lstrip(b"0") or b"0"
    if len(body) > 20 or int(body) > (1 << 64) - 1:
        return None
    n = int(body)
    return (-n) % (1 << 64) if neg else n


def _p_hscan(args, line):
    """HSCAN key cursor [MATCH p] [COUNT n]: sm args [key, cursor, pattern, count, error].
    Redis reads the options only once the key exists and is a hash: their error travels to
    apply (HSCAN on a missing key answers an empty scan whatever follows the cursor)."""
    check_arity(args, SPEC["HSCAN"].arity)
    cursor = _scan_cursor(args[2])
    if cursor is None:
        raise reject("ERR invalid cursor")
    pattern, count, err = None, 10, None
    i, n = 3, len(args)
    while i < n:
        opt = args[i].lower()
        if opt == b"count" and i + 1 < n:
            c = parse_int(args[i + 1])
            if c is None:
                err = E_NOT_INT
                break
            if c < 1:
                err = E_SYNTAX
                break
            count = c
        elif opt == b"match" and i + 1 < n:
            pattern = None if args[i + 1] == b"*" else args[i + 1]
        else:
            err = E_SYNTAX
            break
        i += 2
    return data_command(SPEC["HSCAN"], args, [key(args[1]), min(cursor, 1 << 32), pattern, count, err])


def _a_hscan(s, a, now, w):
    """A listpack hash answers whole with cursor 0 whatever the cursor (as Redis), and so
    does a hash of at most COUNT fields scanned from cursor 0.  Otherwise the fields are walked
    in the order of a stable 32-bit hash of the field (crc32): the cursor is the next hash
    value to visit, so a field present for the whole iteration is returned exactly once; each
    call covers a hash range sized for about COUNT fields (at least 1/64 of the space)."""
    k, cursor, pattern, count, err = a
    h = s.fetch(k, KIND, now, w)
    if h is None:
        return [b"0", []]
    if err is not None:
        raise Fail(err)
    if h.lp or (cursor == 0 and len(h) <= count):
        items = list(h.items())
        nxt = 0
    else:
        span = max((1 << 32) * count // len(h), (1 << 32) // 64, 1)
        lo, hi = cursor, min(cursor + span, 1 << 32)
        found = []
        for f, v in h.items():
            x = zlib.crc32(f)
            if lo <= x < hi:
                found.append((x, f, v))
        found.sort()
        items = [(f, v) for _, f, v in found]
        nxt = 0 if hi >= 1 << 32 else hi
    match = None if pattern is None else compile_glob(pattern.decode("latin-1"))
    out = []
    for f, v in items:
        if match is None or match(f.decode("latin-1")):
            out += (f, v)
    return [b"%d" % nxt, out]


# -- line-protocol reply shapes
def _line_text(b):
    return None if b is None else b.decode("utf-8", "surrogateescape")


def _line_hash(pairs) -> dict:
    return {_line_text(f): _line_text(v) for f, v in pairs}


def _line_hrandfield(r) -> dict:
    if r is None or type(r) is bytes:
        return {"field": _line_text(r), "found": r is not None}
    if type(r) is Pairs:
        return {"pairs": [[_line_text(f), _line_text(v)] for f, v in r]}
    return {"fields": [_line_text(f) for f in r]}


def _line_hscan(r) -> dict:
    flat = r[1]
    return {"cursor": r[0].decode("ascii"), "value": _line_hash(zip(flat[0::2], flat[1::2]))}


_H = {"key_type": KIND}
SPECS = spec_rows("""
HSET -4 write,denyoom,fast 1 1 1 hash 2.0.0 @write,@hash,@fast
HSETNX 4 write,denyoom,fast 1 1 1 hash 2.0.0 @write,@hash,@fast
HMSET -4 write,denyoom,fast 1 1 1 hash 2.0.0 @write,@hash,@fast
HDEL -3 write,fast 1 1 1 hash 2.0.0 @write,@hash,@fast
HGET 3 readonly,fast 1 1 1 hash 2.0.0 @read,@hash,@fast
HMGET -3 readonly,fast 1 1 1 hash 2.0.0 @read,@hash,@fast
HEXISTS 3 readonly,fast 1 1 1 hash 2.0.0 @read,@hash,@fast
HSTRLEN 3 readonly,fast 1 1 1 hash 3.2.0 @read,@hash,@fast
HLEN 2 readonly,fast 1 1 1 hash 2.0.0 @read,@hash,@fast
HGETALL 2 readonly 1 1 1 hash 2.0.0 @read,@hash,@slow
HKEYS 2 readonly 1 1 1 hash 2.0.0 @read,@hash,@slow
HVALS 2 readonly 1 1 1 hash 2.0.0 @read,@hash,@slow
HINCRBY 4 write,denyoom,fast 1 1 1 hash 2.0.0 @write,@hash,@fast
HINCRBYFLOAT 4 write,denyoom,fast 1 1 1 hash 2.6.0 @write,@hash,@fast
HRANDFIELD -2 readonly 1 1 1 hash 6.2.0 @read,@hash,@slow
HSCAN -3 readonly 1 1 1 hash 2.8.0 @read,@hash,@slow
""", {
    "HSET": {"parse": _p_hset, "apply": _a_hset, **_H, "line": lambda r: {"added": r},
             "summary": "Set fields of a hash; answers how many were new"},
    "HSETNX": {"parse": _p_hsetnx, "apply": _a_hsetnx, **_H, "line": lambda r: {"set": bool(r)},
               "summary": "Set a field only when it does not exist yet"},
    "HMSET": {"parse": _p_hmset, "apply": _a_hmset, **_H, "line": lambda r: {"message": "OK"},
              "summary": "Set fields of a hash (answers OK; HSET does the same and counts)"},
    "HDEL": {"parse": _p_key_fields("HDEL"), "apply": _a_hdel, **_H, "line": lambda r: {"deleted": r},
             "summary": "Delete fields of a hash"},
    "HGET": {"parse": _p_key_field("HGET"), "apply": _a_hget, **_H,
             "line": lambda r: {"value": _line_text(r), "found": r is not None},
             "summary": "The value of one field"},
    "HMGET": {"parse": _p_key_fields("HMGET"), "apply": _a_hmget, **_H,
              "line": lambda r: {"values": [_line_text(v) for v in r], "found": [v is not None for v in r]},
              "summary": "The values of several fields (nil for a missing one)"},
    "HEXISTS": {"parse": _p_key_field("HEXISTS"), "apply": _a_hexists, **_H,
                "line": lambda r: {"exists": bool(r)}, "summary": "Whether a field exists"},
    "HSTRLEN": {"parse": _p_key_field("HSTRLEN"), "apply": _a_hstrlen, **_H,
                "line": lambda r: {"length": r}, "summary": "The length of a field's value"},
    "HLEN": {"parse": _p_key("HLEN"), "apply": _a_hlen, **_H, "line": lambda r: {"length": r},
             "summary": "The number of fields"},
    "HGETALL": {"parse": _p_key("HGETALL"), "apply": _a_hgetall, **_H,
                "line": lambda r: {"value": _line_hash(r.items())},
                "summary": "Every field and value"},
    "HKEYS": {"parse": _p_key("HKEYS"), "apply": _a_hkeys, **_H,
              "line": lambda r: {"fields": [_line_text(f) for f in r]}, "summary": "Every field"},
    "HVALS": {"parse": _p_key("HVALS"), "apply": _a_hvals, **_H,
              "line": lambda r: {"values": [_line_text(v) for v in r]}, "summary": "Every value"},
    "HINCRBY": {"parse": _p_hincrby, "apply": _a_hincrby, **_H, "line": lambda r: {"value": r},
                "summary": "Add an integer to a field's value"},
    "HINCRBYFLOAT": {"parse": _p_hincrbyfloat, "apply": _a_hincrbyfloat, **_H,
                     "line": lambda r: {"value": _line_text(r)},
                     "summary": "Add a decimal number to a field's value (long double, as Redis)"},
    "HRANDFIELD": {"parse": _p_hrandfield, "apply": _a_hrandfield, **_H, "line": _line_hrandfield,
                   "summary": "Random fields (count > 0 distinct, < 0 may repeat; WITHVALUES)"},
    "HSCAN": {"parse": _p_hscan, "apply": _a_hscan, **_H, "line": _line_hscan,
              "summary": "Iterate over fields and values (cursor, MATCH, COUNT)"},
})
SPEC.update((s.name, s) for s in SPECS)
