"""The string type: values of kind "json" (line protocol SET: any JSON value) or "bytes" (RESP
SET: raw bytes), and the string commands.

Both kinds are one Redis type, "string": a JSON value reads as its text over RESP (42 -> "42",
see kv_protocol's value rules), and every string command works on either.

Snapshot records: tag "j" (payload: the JSON value itself) and "b" (payload: base64 text).
These are the two body maps of snapshot versions 1 and 2 as well, so kv_storage hands old
files' items to decode() unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from fractions import Fraction

from kv_spec import TypeOps, check_arity, data_command, key, key_and_rest, reject, shaped, spec_rows
from kv_values import (E_NOT_FLOAT, E_NOT_INT, E_OVERFLOW, E_SYNTAX, E_WRONGTYPE, OK, Fail, Value,
                       _round_ld, format_ld, parse_int, parse_ld, to_bytes)

_b64encode = base64.b64encode
_a2b = binascii.a2b_base64

SPEC: dict = {}   # name -> Spec, filled at the end from SPECS (the parsers read it)


def _encode_bytes(v: bytes) -> str:
    return _b64encode(v).decode("ascii")


def _decode_bytes(payload) -> bytes:
    if type(payload) is not str:
        raise ValueError("a bytes value's snapshot record is not base64 text")
    try:
        return _a2b(payload, strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"bad base64 value: {e}") from None


def _same(v):
    return v


def _memory_json(v) -> int:
    return 56 + len(json.dumps(v)) if not isinstance(v, (int, float)) else 56


def _memory_bytes(v: bytes) -> int:
    return 56 + sys.getsizeof(v)


def _encoding_json(v) -> str:
    """As Redis decides for the bytes RESP reads (42 -> b"42": int; "abc" -> embstr)."""
    return _encoding_bytes(to_bytes("json", v))


def _encoding_bytes(v: bytes) -> str:
    """Redis's tryObjectEncoding: an int64 in canonical form (string2l) -> int; up to 44 bytes
    embstr; longer raw.  (Redis also answers raw for a short string that APPEND, SETRANGE or
    SETBIT wrote; we decide from the bytes alone: see docs/CLUSTERING.md.)"""
    if len(v) <= 20 and parse_int(v) is not None:
        return "int"
    return "embstr" if len(v) <= 44 else "raw"


# Encodings that the bytes alone do not tell (Redis's rules, object.c / t_string.c / bitops.c):
# SETBIT, SETRANGE and APPEND to an existing string leave a "raw" string (dbUnshareStringValue);
# INCRBYFLOAT stores its text unencoded (embstr up to 44 bytes, never int).  Such a write
# stores its (kind, value) item as one of these tuple subclasses (same content: the digest,
# snapshots and every reader see a plain item); any later write stores a new plain item, as
# Redis re-decides the encoding on every such write, and so does a snapshot install (Redis
# re-encodes the strings it loads from an RDB).  Only OBJECT ENCODING / REFCOUNT look.
class _RawItem(tuple):
    __slots__ = ()


class _UnencodedItem(tuple):
    __slots__ = ()


def mark_encoding(s, k: str, mark: type) -> None:
    """Record that the string s._put just stored at k has encoding RAW or UNENCODED."""
    s.data[k] = mark(s.data[k])


RAW, UNENCODED = _RawItem, _UnencodedItem


def string_encoding(item) -> str:
    """OBJECT ENCODING of a live string item (kind, value)."""
    t = type(item)
    if t is _RawItem:
        return "raw"
    if t is _UnencodedItem:
        return "embstr" if len(to_bytes(item[0], item[1])) <= 44 else "raw"
    return _encoding_json(item[1]) if item[0] == "json" else _encoding_bytes(item[1])


def _copy_json(v):
    """JSON values are never changed in place (every write stores a new value): share them."""
    return v


TYPES = [
    TypeOps("json", "string", "j", _same, _same, _copy_json, _memory_json, _encoding_json),
    TypeOps("bytes", "string", "b", _encode_bytes, _decode_bytes, _same, _memory_bytes, _encoding_bytes),
]

# ---------------------------------------------------------------------------------------------
# Bitmaps and LCS (Redis 7.0's bitops.c / t_string.c are the model of behaviour, errors and
# their order included).  A string's bits: byte i's most significant bit is bit 8*i.
_MAX_STRING = 512 * 1024 * 1024          # proto-max-bulk-len
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
STRING_KINDS = frozenset(("json", "bytes"))
E_BIT_OFFSET = "ERR bit offset is not an integer or out of range"
E_BIT_VALUE = "ERR bit is not an integer or out of range"


def _string_bytes(s, k, now, w) -> bytes | None:
    """The bytes of the string at key k (WRONGTYPE was checked from the spec), None if absent."""
    item = s._lookup(k, now, w)
    return None if item is None else to_bytes(item[0], item[1])


def _bit_offset(b: bytes) -> int:
    n = parse_int(b)
    if n is None or n < 0 or (n >> 3) >= _MAX_STRING:
        raise reject(E_BIT_OFFSET)
    return n


def _p_setbit(args, line):
    check_arity(args, 4)
    k, off = key(args[1]), _bit_offset(args[2])
    bit = parse_int(args[3])
    if bit is None or bit & ~1:
        raise reject(E_BIT_VALUE)
    return data_command(SPEC["SETBIT"], args, [k, off, bit])


def _a_setbit(s, a, now, w):
    k, off, bit = a
    cur = _string_bytes(s, k, now, w) or b""
    i = off >> 3
    mask = 0x80 >> (off & 7)
    if i >= len(cur):
        cur = cur + bytes(i + 1 - len(cur))
    old = cur[i]
    new = old | mask if bit else old & ~mask
    s._put(k, "bytes", cur[:i] + bytes((new,)) + cur[i + 1:], keep_ttl=True)
    mark_encoding(s, k, RAW)
    return 1 if old & mask else 0


def _p_getbit(args, line):
    check_arity(args, 3)
    return data_command(SPEC["GETBIT"], args, [key(args[1]), _bit_offset(args[2])])


def _a_getbit(s, a, now, w):
    k, off = a
    b = _string_bytes(s, k, now, w)
    i = off >> 3
    if b is None or i >= len(b):
        return 0
    return 1 if b[i] & (0x80 >> (off & 7)) else 0


def _p_key_rest(name):
    """KEY then words that Redis 7.0 reads only after it looked the key up (BITCOUNT's range:
    a missing key answers 0 whatever follows): apply parses them."""
    return shaped(SPEC, name, key_and_rest)


def _int_arg(b: bytes) -> int:
    n = parse_int(b)
    if n is None:
        raise Fail(E_NOT_INT)
    return n


def _unit(b: bytes) -> bool:
    """BYTE | BIT -> True for BIT."""
    u = b.upper()
    if u == b"BIT":
        return True
    if u == b"BYTE":
        return False
    raise Fail(E_SYNTAX)


def _clamp(total: int, start: int, end: int) -> tuple[int, int] | None:
    """Redis's index rules (GETRANGE, BITCOUNT, BITPOS) over `total` bytes or bits: the
    inclusive range [start, end] selected (negative counts from the end), None if empty."""
    if start < 0:
        start += total
    if end < 0:
        end += total
    start = max(start, 0)
    end = max(end, 0)
    if end >= total:
        end = total - 1
    if start > end:
        return None
    return start, end


def _bit_range(n: int, start: int, end: int, isbit: bool) -> tuple[int, int] | None:
    """The inclusive BIT range [first, last] that start..end selects (in bytes or bits) in a
    string of n bytes, None when it is empty."""
    r = _clamp(n * 8 if isbit else n, start, end)
    if r is None or isbit:
        return r
    return r[0] * 8, r[1] * 8 + 7


def _bits(b: bytes, first: int, last: int) -> tuple[int, int]:
    """Bits first..last of b as (an int whose top bit is bit `first`, its width)."""
    lo, hi = first >> 3, last >> 3
    x = int.from_bytes(b[lo:hi + 1], "big")
    width = (hi - lo + 1) * 8
    x &= (1 << (width - (first - lo * 8))) - 1         # drop the bits before `first`
    drop = hi * 8 + 7 - last
    return x >> drop, last - first + 1


def _a_bitcount(s, a, now, w):
    k, rest = a
    b = _string_bytes(s, k, now, w)
    if b is None:
        return 0
    if not rest:
        return int.from_bytes(b, "big").bit_count()
    if len(rest) not in (2, 3):
        raise Fail(E_SYNTAX)
    start, end = _int_arg(rest[0]), _int_arg(rest[1])
    if start < 0 and end < 0 and start > end:      # Redis answers this before it reads the unit
        return 0
    isbit = _unit(rest[2]) if len(rest) == 3 else False
    r = _bit_range(len(b), start, end, isbit)
    if r is None:
        return 0
    return _bits(b, *r)[0].bit_count()


def _p_bitpos(args, line):
    check_arity(args, -3)
    bit = parse_int(args[2])
    if bit is None:
        raise reject(E_NOT_INT)
    if bit not in (0, 1):
        raise reject("ERR The bit argument must be 1 or 0.")
    return data_command(SPEC["BITPOS"], args, [key(args[1]), bit, list(args[3:])])


def _a_bitpos(s, a, now, w):
    k, bit, rest = a
    b = _string_bytes(s, k, now, w)
    if b is None:                  # an infinite run of zero bits
        return -1 if bit else 0
    if len(rest) > 3:
        raise Fail(E_SYNTAX)
    end_given = len(rest) >= 2
    if rest:
        start = _int_arg(rest[0])
        isbit = _unit(rest[2]) if len(rest) == 3 else False
        end = _int_arg(rest[1]) if end_given else -1
        r = _bit_range(len(b), start, end, isbit)
    else:
        r = _bit_range(len(b), 0, -1, False)
    if r is None:
        return -1
    x, width = _bits(b, *r)
    if bit == 0:
        x ^= (1 << width) - 1
    if x:
        return r[0] + width - x.bit_length()
    if bit == 1 or end_given:
        return -1
    return len(b) * 8              # looking for 0 without an end: the string is 0-padded


def _p_lcs(args, line):
    check_arity(args, -3)
    return data_command(SPEC["LCS"], args, [key(args[1]), key(args[2]), list(args[3:])])


def _lcs_rows(x: bytes, y: bytes) -> list[int]:
    """Bit-parallel LCS (Allison-Dix / Hyyro): rows[i] has a zero bit j for each step of the
    LCS table's row i, so LCS(x[:i], y[:j]) = j - popcount(rows[i] & (2**j - 1)).
    O(len(x)) big-int operations of len(y) bits each."""
    ones = (1 << len(y)) - 1
    match: dict[int, int] = {}
    for j, c in enumerate(y):
        match[c] = match.get(c, 0) | (1 << j)
    v = ones
    rows = [v]
    for c in x:
        u = v & match.get(c, 0)
        v = ((v + u) | (v - u)) & ones
        rows.append(v)
    return rows


def _a_lcs(s, a, now, w):
    ka, kb, opts = a
    items = [s._lookup(k, now, w) for k in (ka, kb)]
    if any(it is not None and it[0] not in STRING_KINDS for it in items):
        raise Fail("ERR The specified keys must contain string values")
    x, y = (b"" if it is None else to_bytes(it[0], it[1]) for it in items)
    getlen = getidx = withlen = False
    minlen = 0
    i, n = 0, len(opts)
    while i < n:
        o = opts[i].upper()
        if o == b"IDX":
            getidx = True
        elif o == b"LEN":
            getlen = True
        elif o == b"WITHMATCHLEN":
            withlen = True
        elif o == b"MINMATCHLEN" and i + 1 < n:
            minlen = max(_int_arg(opts[i + 1]), 0)
            i += 1
        else:
            raise Fail(E_SYNTAX)
        i += 1
    if getidx and getlen:
        raise Fail("ERR If you want both the length and indexes, please just use IDX.")
    if (len(x) + 1) * (len(y) + 1) * 4 > _MAX_STRING:
        raise Fail("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len")
    rows = _lcs_rows(x, y)
    ones = (1 << len(y)) - 1
    total = len(y) - (rows[-1] & ones).bit_count()
    if getlen:
        return total

    def lcs(i, j):
        return j - (rows[i] & ((1 << j) - 1)).bit_count()

    # Walk back from (len(x), len(y)) as Redis does, emitting the matched ranges
    out = bytearray(total)
    idx = total
    matches = []
    unset = len(x)
    a_start = unset
    a_end = b_start = b_end = 0
    i, j = len(x), len(y)
    while i > 0 and j > 0:
        emit = False
        if x[i - 1] == y[j - 1]:
            out[idx - 1] = x[i - 1]
            if a_start == unset:
                a_start = a_end = i - 1
                b_start = b_end = j - 1
            elif a_start == i and b_start == j:
                a_start -= 1
                b_start -= 1
            else:
                emit = True
            if a_start == 0 or b_start == 0:
                emit = True
            idx -= 1
            i -= 1
            j -= 1
        else:
            if lcs(i - 1, j) > lcs(i, j - 1):
                i -= 1
            else:
                j -= 1
            if a_start != unset:
                emit = True
        if emit:
            mlen = a_end - a_start + 1
            if getidx and (minlen == 0 or mlen >= minlen):
                m = [[a_start, a_end], [b_start, b_end]]
                if withlen:
                    m.append(mlen)
                matches.append(m)
            a_start = unset
    if getidx:
        return {b"matches": matches, b"len": total}
    return bytes(out)


def _line_lcs(r):
    if type(r) is int:
        return {"length": r}
    if type(r) is dict:
        return {"matches": r[b"matches"], "length": r[b"len"]}
    return {"value": r.decode("utf-8", "surrogateescape")}


# ---------------------------------------------------------------------------------------------
# The string commands' state-machine functions (apply(s, args, now, write); args as kv_protocol's
# parsers make them: stored values are (kind, value) tuples)
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
    if get and old is not None and old[0] not in STRING_KINDS:
        raise Fail(E_WRONGTYPE)
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
        raise Fail(exp)
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
        raise Fail("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    s._put(key, "bytes", new, keep_ttl=True)
    if old is not None:
        mark_encoding(s, key, RAW)
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
    r = None if start < 0 and end < 0 and start > end else _clamp(len(b), start, end)
    return Value("bytes", b"" if r is None else b[r[0]:r[1] + 1])


def _c_setrange(s, a, now, w):
    key, offset, val = a
    add = _bytes_of(val)
    old = s._lookup(key, now, w)
    if offset < 0:
        raise Fail("ERR offset is out of range")
    if old is None:
        if not add:
            return 0
        cur = b""
    else:
        cur = _bytes_of(old)
        if not add:
            return len(cur)
    if offset + len(add) > _MAX_STRING:
        raise Fail("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    if len(cur) < offset:
        cur = cur + b"\x00" * (offset - len(cur))
    new = cur[:offset] + add + cur[offset + len(add):]
    s._put(key, "bytes", new, keep_ttl=True)
    mark_encoding(s, key, RAW)
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
            raise Fail(E_NOT_INT)
    new = cur + by
    if not _INT64_MIN <= new <= _INT64_MAX:
        raise Fail(E_OVERFLOW)
    s._put(key, "json", new, keep_ttl=True)   # a counter reads as a JSON number on the line protocol
    return new


def _c_incrbyfloat(s, a, now, w):
    key, by = a
    incr = parse_ld(_bytes_of(by)) if type(by) is tuple else by
    if incr is None or type(incr) is float:
        raise Fail(E_NOT_FLOAT)
    item = s._lookup(key, now, w)
    cur = Fraction(0) if item is None else parse_ld(_bytes_of(item))
    if cur is None or type(cur) is float:
        raise Fail(E_NOT_FLOAT)
    new = _round_ld(cur + incr)
    if new is None:
        raise Fail("ERR increment would produce NaN or Infinity")
    out = format_ld(new)
    s._put(key, "bytes", out, keep_ttl=True)
    mark_encoding(s, key, UNENCODED)
    return Value("bytes", out)


def _c_mget(s, a, now, w):
    out = []
    for k in a:
        item = s._lookup(k, now, w)
        out.append(_value(item) if item is not None and item[0] in STRING_KINDS else None)
    return out


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


# The string commands.  Their parsers are kv_protocol's (the fast-path classes and
# _DATA_PARSERS); the rows declare what COMMAND says of them, their apply functions (above) and
# which keys WRONGTYPE checks (key_type "string").
_S = {"key_type": "string"}
SPECS = spec_rows("""
GET 2 readonly,fast 1 1 1 string 1.0.0 @read,@string,@fast
SET -3 write,denyoom 1 1 1 string 1.0.0 @write,@string,@slow
GETSET 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
GETDEL 2 write,fast 1 1 1 string 6.2.0 @write,@string,@fast
GETEX -2 write,fast 1 1 1 string 6.2.0 @write,@string,@fast
SETNX 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
SETEX 4 write,denyoom 1 1 1 string 2.0.0 @write,@string,@slow
PSETEX 4 write,denyoom 1 1 1 string 2.6.0 @write,@string,@slow
APPEND 3 write,denyoom,fast 1 1 1 string 2.0.0 @write,@string,@fast
STRLEN 2 readonly,fast 1 1 1 string 2.2.0 @read,@string,@fast
GETRANGE 4 readonly 1 1 1 string 2.4.0 @read,@string,@slow
SUBSTR 4 readonly 1 1 1 string 1.0.0 @read,@string,@slow
SETRANGE 4 write,denyoom 1 1 1 string 2.2.0 @write,@string,@slow
INCR 2 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
DECR 2 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
INCRBY 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
DECRBY 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
INCRBYFLOAT 3 write,denyoom,fast 1 1 1 string 2.6.0 @write,@string,@fast
MGET -2 readonly,fast 1 -1 1 string 1.0.0 @read,@string,@fast
MSET -3 write,denyoom 1 -1 2 string 1.0.1 @write,@string,@slow
MSETNX -3 write,denyoom 1 -1 2 string 1.0.1 @write,@string,@slow
SETBIT 4 write,denyoom 1 1 1 bitmap 2.2.0 @write,@bitmap,@slow
GETBIT 3 readonly,fast 1 1 1 bitmap 2.2.0 @read,@bitmap,@fast
BITCOUNT -2 readonly 1 1 1 bitmap 2.6.0 @read,@bitmap,@slow
BITPOS -3 readonly 1 1 1 bitmap 2.8.7 @read,@bitmap,@slow
LCS -3 readonly 1 2 1 string 7.0.0 @read,@string,@slow
CAS 4 write,denyoom,fast 1 1 1 kvstore 1.0.0 0
""", {
    # sm: the state-machine command each name runs as (kv_state); WRONGTYPE is checked for
    # the commands whose keys must hold strings.  SET / GETSET / MSET / MSETNX overwrite any
    # type, MGET answers nil for a key of another type: no check.
    "GET": {"apply": _c_get, **_S}, "GETDEL": {"apply": _c_getdel, **_S},
    "GETEX": {"apply": _c_getex, **_S}, "SETNX": {"sm": "SETNX", "apply": _c_setnx},
    "SET": {"apply": _c_set}, "GETSET": {"sm": "SET"}, "SETEX": {"sm": "SET"}, "PSETEX": {"sm": "SET"},
    "APPEND": {"apply": _c_append, **_S}, "STRLEN": {"apply": _c_strlen, **_S},
    "GETRANGE": {"apply": _c_getrange, **_S}, "SUBSTR": {"sm": "GETRANGE", **_S},
    # SETRANGE: Redis rejects a negative offset before it looks the key up
    "SETRANGE": {"apply": _c_setrange, **_S, "type_keys": lambda a: [a[0]] if a[1] >= 0 else []},
    "INCR": {"sm": "INCRBY", "apply": _c_incrby, **_S}, "DECR": {"sm": "INCRBY", **_S},
    "INCRBY": {"apply": _c_incrby, **_S}, "DECRBY": {"sm": "INCRBY", **_S},
    "INCRBYFLOAT": {"apply": _c_incrbyfloat, **_S},
    "MGET": {"apply": _c_mget}, "MSET": {"apply": _c_mset}, "MSETNX": {"apply": _c_msetnx},
    "CAS": {"redis": False, **_S},
    "SETBIT": {"parse": _p_setbit, "apply": _a_setbit, **_S, "line": lambda r: {"previous": r},
               "summary": "Set or clear one bit; answers the bit it had"},
    "GETBIT": {"parse": _p_getbit, "apply": _a_getbit, **_S, "line": lambda r: {"bit": r},
               "summary": "The bit at an offset"},
    "BITCOUNT": {"parse": _p_key_rest("BITCOUNT"), "apply": _a_bitcount, **_S,
                 "line": lambda r: {"count": r}, "summary": "The number of set bits in a range"},
    "BITPOS": {"parse": _p_bitpos, "apply": _a_bitpos, **_S, "line": lambda r: {"position": r},
               "summary": "The first set or clear bit in a range"},
    # LCS checks its own keys: a non-string answers "The specified keys must contain string
    # values", not WRONGTYPE
    "LCS": {"parse": _p_lcs, "apply": _a_lcs, "line": _line_lcs,
            "summary": "The longest common subsequence of two strings"},
})
SPEC.update((s.name, s) for s in SPECS)
