"""The sorted-set type: a key holding distinct members (byte strings), each with a score (a
double), ordered by (score, member), and the sorted-set commands (Redis 7.0's t_zset.c is the
model of behaviour; the code is ours), the blocking pops' non-blocking forms included.

Value: ZSetValue, a dict member -> score plus a sortedcontainers.SortedList of (score, member)
(O(log n) insert, remove, rank and range), and
    h        the content hash: the sum mod 2**64 of elem_hash(member, %.17g of score), order-free,
             updated in O(1) per member
    listpack Redis's encoding: True while there are at most 128 members of at most 64 bytes
             (zset-max-listpack-entries / -value); once lost it stays lost, as in Redis, except
             for results stored by ZUNIONSTORE & co and a value loaded from a snapshot, which
             Redis also re-encodes.  As Redis's listpack stores an integral score as an integer,
             a score of -0 is stored as 0 in a listpack zset (ZINCRBY's reply may still be "-0");
             a skiplist zset keeps -0.

Scores are parsed as Redis does: string2d (strtod over the whole string, no leading space, no
overflow, NaN refused) for ZADD / ZINCRBY / WEIGHTS, and zslParseRange (strtod, leading space
allowed, "" is 0, "(" exclusive) for score ranges.  Score arguments travel in the log entry as
the text of the parsed double ("%.17g", "inf", "-0"), which float() reads back exactly.

ZRANDMEMBER draws a seed in its parser (parsers run only on the primary) and picks with
random.Random(seed) over the (score, member) order, so that apply never draws (inside EXEC it
runs on every node).

Blocking commands (BZPOPMIN BZPOPMAX BZMPOP) parse to kv_spec.Blocking: `command` is the
non-blocking form (sm BZPOPMIN: [key, member, score] or NULL_ARRAY; ZMPOP for BZMPOP).

ZSCAN: a listpack zset is returned whole in one call, as Redis does; a bigger one by a cursor
over a 32-bit hash space of the members (as SSCAN).

Snapshot record: tag "z", payload [[member_b64, score_text], ...] in (score, member) order.
"""

from __future__ import annotations

import base64
import binascii
import math
import random
import re
import sys
import zlib

from sortedcontainers import SortedList

import kv_set
from kv_list import timeout_seconds
from kv_protocol import compile_glob
from kv_spec import (Blocking, TypeOps, check_arity, data_command, key, key_and_arg, key_and_rest, one_key,
                     reject, shaped, spec_rows)
from kv_values import (E_NOT_INT, E_SYNTAX, E_WRONGTYPE, INT64_MAX, INT64_MIN, MASK64, NULL_ARRAY,
                       Double, Fail, Pairs, elem_hash, format_double, parse_int)

KIND = "zset"
SPEC: dict = {}   # name -> Spec, filled at the end from SPECS (the parsers read it)
LISTPACK_ENTRIES = 128    # zset-max-listpack-entries
LISTPACK_VALUE = 64       # zset-max-listpack-value
NEG_COUNT_MAX = 1 << 24   # ZRANDMEMBER with a negative count: at most this many picks

E_NOT_FLOAT = "ERR value is not a valid float"
E_RANGE_FLOAT = "ERR min or max is not a float"
E_RANGE_LEX = "ERR min or max not valid string range item"
E_NAN = "ERR resulting score is not a number (NaN)"
E_POSITIVE = "ERR value is out of range, must be positive"
E_WEIGHT = "ERR weight value is not a float"
E_LIMIT = "ERR LIMIT can't be negative"
E_RAND_RANGE = f"ERR value is out of range, value must between {-INT64_MAX} and {INT64_MAX}"
E_NEG_COUNT = f"ERR value is out of range, value must between {-NEG_COUNT_MAX} and {INT64_MAX}"


def _stext(v: float) -> str:
    return format_double(v).decode("ascii")


class ZSetValue:
    """The members (see the module docstring): d (member -> score), sl (SortedList of
    (score, member)), h (content hash), listpack (Redis's encoding)."""
    __slots__ = ("d", "sl", "h", "listpack")
    kind = KIND

    def __init__(self, pairs=(), listpack: bool = True):
        self.d: dict = {}
        self.sl = SortedList()
        self.h = 0
        self.listpack = listpack
        for m, sc in pairs:
            self.put(m, sc)

    def __len__(self) -> int:
        return len(self.d)

    def __bool__(self) -> bool:
        return bool(self.d)

    def __contains__(self, m) -> bool:
        return m in self.d

    def __eq__(self, other) -> bool:
        return isinstance(other, ZSetValue) and list(self.sl) == list(other.sl)

    __hash__ = None

    def __repr__(self) -> str:
        return f"ZSetValue({list(self.sl)!r})"

    def put(self, m: bytes, score: float) -> bool:
        """Set m's score (a new member, or a changed score); True when m is new."""
        old = self.d.get(m)
        if old is not None:
            if old == score:
                return False
            self.sl.remove((old, m))
            self.h = (self.h - elem_hash(m, format_double(old))) & MASK64
        elif self.listpack and (len(self.d) >= LISTPACK_ENTRIES or len(m) > LISTPACK_VALUE):
            self.listpack = False
        if self.listpack and score == 0:
            score = 0.0                     # a listpack stores an integral score as an integer
        self.d[m] = score
        self.sl.add((score, m))
        self.h = (self.h + elem_hash(m, format_double(score))) & MASK64
        return old is None

    def discard(self, m: bytes) -> bool:
        sc = self.d.pop(m, None)
        if sc is None:
            return False
        self.sl.remove((sc, m))
        self.h = (self.h - elem_hash(m, format_double(sc))) & MASK64
        return True

    def rank(self, m: bytes):
        sc = self.d.get(m)
        return None if sc is None else self.sl.index((sc, m))


def _small(pairs) -> bool:
    return len(pairs) <= LISTPACK_ENTRIES and all(len(m) <= LISTPACK_VALUE for m, _ in pairs)


def _result(pairs) -> ZSetValue:
    """A stored result (ZUNIONSTORE & co, ZRANGESTORE): listpack when small, as Redis converts."""
    pairs = list(pairs)
    return ZSetValue(pairs, _small(pairs))


# ---------------------------------------------------------------------------------------------
# Type operations
def _encode(v: ZSetValue) -> list:
    return [[base64.b64encode(m).decode("ascii"), _stext(sc)] for sc, m in v.sl]


def _decode(payload) -> ZSetValue:
    if type(payload) is not list:
        raise ValueError("a zset's snapshot record is not a [[member, score], ...] list")
    pairs = []
    for item in payload:
        if type(item) is not list or len(item) != 2 or type(item[1]) not in (str, int, float):
            raise ValueError("a zset's snapshot record has an entry that is not [member, score]")
        try:
            m = binascii.a2b_base64(item[0], strict_mode=True)
        except (binascii.Error, ValueError, TypeError) as e:
            raise ValueError(f"bad base64 in a zset record: {e}") from None
        try:
            sc = float(item[1])
        except ValueError:
            raise ValueError(f"bad score in a zset record: {item[1]!r}") from None
        if math.isnan(sc):
            raise ValueError("a NaN score in a zset record")
        pairs.append((m, sc))
    v = ZSetValue((), _small(pairs))
    for m, sc in pairs:
        if m in v.d:
            raise ValueError("a zset's snapshot record repeats a member")
        v.d[m] = sc                         # exactly as stored (a -0 stays -0)
        v.sl.add((sc, m))
        v.h = (v.h + elem_hash(m, format_double(sc))) & MASK64
    return v


def _copy(v: ZSetValue) -> ZSetValue:
    c = ZSetValue((), v.listpack)
    c.d = dict(v.d)
    c.sl = SortedList(v.sl)
    c.h = v.h
    return c


def _memory(v: ZSetValue) -> int:
    return (sys.getsizeof(v.d) + 2 * sys.getsizeof(1.0) * len(v.d) + 64 * len(v.d)
            + sum(sys.getsizeof(m) for m in v.d))


def _encoding(v: ZSetValue) -> str:
    return "listpack" if v.listpack else "skiplist"


TYPES = [TypeOps(KIND, "zset", "z", _encode, _decode, _copy, _memory, _encoding)]


# ---------------------------------------------------------------------------------------------
# Number parsing as Redis does it
_DEC = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_HEX = re.compile(rb"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?")
_INF = re.compile(rb"[+-]?(?:inf|infinity)", re.I)
_SPACE = b" \t\n\v\f\r"


def _strtod(b: bytes):
    """strtod over the whole of b (no leading space here): (value, erange) or None when b is
    not a number strtod reads whole (NaN included)."""
    if _INF.fullmatch(b):
        return (-math.inf if b[:1] == b"-" else math.inf), False
    if _DEC.fullmatch(b):
        v = float(b)
        if math.isinf(v):
            return v, True
        if v == 0 and re.search(rb"[1-9]", b.split(b"e")[0].split(b"E")[0]):
            return v, True
        return v, False
    if _HEX.fullmatch(b):
        s = b.decode("ascii")
        neg = s[:1] == "-"
        try:
            v = float.fromhex(s.lstrip("+-"))
        except OverflowError:
            return (-math.inf if neg else math.inf), True
        if v == 0 and re.search(r"[1-9a-fA-F]", s.lstrip("+-")[2:].split("p")[0].split("P")[0]):
            return (-0.0 if neg else 0.0), True
        return (-v if neg else v), False
    return None


def string2d(b: bytes):
    """Redis string2d (ZADD scores, ZINCRBY, WEIGHTS): a float, or None."""
    if not b or b[:1] in _SPACE or b"\0" in b:
        return None
    r = _strtod(b)
    if r is None:
        return None
    v, erange = r
    if erange:
        return None
    return v


def _score_arg(b: bytes, message: str = E_NOT_FLOAT) -> str:
    v = string2d(b)
    if v is None:
        raise reject(message)
    return _stext(v)


def _range_item(b: bytes):
    """One end of a score range (zslParseRange): (value, exclusive) or None."""
    ex = b[:1] == b"("
    if ex:
        b = b[1:]
    b = b.split(b"\0", 1)[0]
    b = b.lstrip(_SPACE)
    if b == b"":
        return 0.0, ex
    r = _strtod(b)
    if r is None:
        return None
    return r[0], ex


def _score_range(lo: bytes, hi: bytes) -> list:
    a, b = _range_item(lo), _range_item(hi)
    if a is None or b is None:
        raise reject(E_RANGE_FLOAT)
    return [_stext(a[0]), a[1], _stext(b[0]), b[1]]


def _lex_item(b: bytes):
    """One end of a lex range: (kind, value, exclusive): kind -1 "-", +1 "+", 0 a string."""
    c = b[:1]
    if c in (b"+", b"-"):
        if b[1:2] not in (b"", b"\0"):
            return None
        return (1 if c == b"+" else -1), b"", True
    if c == b"(":
        return 0, b[1:], True
    if c == b"[":
        return 0, b[1:], False
    return None


def _lex_range(lo: bytes, hi: bytes) -> list:
    a, b = _lex_item(lo), _lex_item(hi)
    if a is None or b is None:
        raise reject(E_RANGE_LEX)
    return [a[0], a[1], a[2], b[0], b[1], b[2]]


def _long(b: bytes, message: str = E_NOT_INT) -> int:
    n = parse_int(b)
    if n is None:
        raise reject(message)
    return n


def _positive(b: bytes, message: str, low: int = 0) -> int:
    n = parse_int(b)
    if n is None or n < low:
        raise reject(message)
    return n


# ---------------------------------------------------------------------------------------------
# Ranges over a ZSetValue (indexes into v.sl)
def _score_span(v: ZSetValue, rng) -> tuple:
    """[i, j) of the members whose score is in the range (scores are sorted)."""
    lo, lox, hi, hix = float(rng[0]), rng[1], float(rng[2]), rng[3]
    i = _bisect_score(v.sl, lo, lox)
    j = _bisect_score(v.sl, hi, not hix)
    return i, max(i, j)


def _bisect_score(sl, x: float, after: bool) -> int:
    """The first index whose score is > x (after) or >= x (not after)."""
    lo, hi = 0, len(sl)
    while lo < hi:
        mid = (lo + hi) // 2
        s = sl[mid][0]
        if s > x or (not after and s == x):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _gte_min(m: bytes, kind: int, val: bytes, ex: bool) -> bool:
    if kind == -1:
        return True
    if kind == 1:
        return False
    return m > val if ex else m >= val


def _lte_max(m: bytes, kind: int, val: bytes, ex: bool) -> bool:
    if kind == 1:
        return True
    if kind == -1:
        return False
    return m < val if ex else m <= val


def _lex_cmp(k1, v1, k2, v2) -> int:
    """Redis sdscmplex over range ends ("-" below everything, "+" above)."""
    if k1 == k2 and k1 != 0:
        return 0
    if k1 == -1 or k2 == 1:
        return -1
    if k1 == 1 or k2 == -1:
        return 1
    return (v1 > v2) - (v1 < v2)


def _lex_start(v: ZSetValue, rng, rev: bool):
    """Redis's first (last when rev) member in a lex range: its index, or None.  Members are
    in lex order only when their scores are equal; as Redis's listpack walk does, this checks
    the ends first, then walks from the head (tail) to the first member past the min (max)."""
    k1, v1, x1, k2, v2, x2 = rng
    c = _lex_cmp(k1, v1, k2, v2)
    if c > 0 or (c == 0 and (x1 or x2)):
        return None
    sl = v.sl
    n = len(sl)
    if not n or not _gte_min(sl[n - 1][1], k1, v1, x1) or not _lte_max(sl[0][1], k2, v2, x2):
        return None
    sorted_members = sl[0][0] == sl[n - 1][0]
    if not rev:
        if sorted_members:
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi) // 2
                if _gte_min(sl[mid][1], k1, v1, x1):
                    hi = mid
                else:
                    lo = mid + 1
            i = lo
        else:
            i = next((i for i in range(n) if _gte_min(sl[i][1], k1, v1, x1)), n)
        return i if i < n and _lte_max(sl[i][1], k2, v2, x2) else None
    if sorted_members:
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if _lte_max(sl[mid][1], k2, v2, x2):
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
    else:
        i = next((i for i in range(n - 1, -1, -1) if _lte_max(sl[i][1], k2, v2, x2)), -1)
    return i if i >= 0 and _gte_min(sl[i][1], k1, v1, x1) else None


def _lex_walk(v: ZSetValue, rng, rev: bool = False, offset: int = 0, limit: int = -1) -> list:
    """The (score, member) pairs of a lex range in reply order: from the start, skip `offset`
    (negative: nothing), then take up to `limit` (negative: all) while in range."""
    i = _lex_start(v, rng, rev)
    if i is None or offset < 0:
        return []
    k1, v1, x1, k2, v2, x2 = rng
    sl = v.sl
    n = len(sl)
    out = []
    step = -1 if rev else 1
    pos = i + step * offset
    while 0 <= pos < n and limit != 0:
        sc, m = sl[pos]
        if not (_gte_min(m, k1, v1, x1) if rev else _lte_max(m, k2, v2, x2)):
            break
        out.append((sc, m))
        limit -= 1
        pos += step
    return out


def _rank_span(start: int, end: int, n: int):
    if start < 0:
        start += n
    if end < 0:
        end += n
    if start < 0:
        start = 0
    if start > end or start >= n:
        return None
    return start, min(end, n - 1)


def _select(v: ZSetValue, rtype: str, rng, rev: bool, offset: int, limit: int) -> list:
    """The (score, member) pairs of a ZRANGE, in reply order."""
    sl = v.sl
    n = len(sl)
    if rtype == "rank":
        span = _rank_span(rng[0], rng[1], n)
        if span is None:
            return []
        a, b = span
        if rev:
            return [sl[n - 1 - i] for i in range(a, b + 1)]
        return list(sl.islice(a, b + 1))
    if rtype == "lex":
        return _lex_walk(v, rng, rev, offset, limit)
    i, j = _score_span(v, rng)
    if offset < 0 or limit == 0:
        return []
    count = j - i
    if offset >= count:
        return []
    take = count - offset if limit < 0 else min(limit, count - offset)
    if rev:
        return [sl[j - 1 - offset - t] for t in range(take)]
    return list(sl.islice(i + offset, i + offset + take))


def _pairs(items) -> Pairs:
    return Pairs((m, Double(sc)) for sc, m in items)


# ---------------------------------------------------------------------------------------------
# Parsers.  sm args carry scores as text (see the module docstring).
def _p_key(name):
    return shaped(SPEC, name, one_key)


def _p_key_member(name):
    return shaped(SPEC, name, key_and_arg)


def _p_key_members(name):
    return shaped(SPEC, name, key_and_rest)


_ZADD_FLAGS = (b"NX", b"XX", b"CH", b"INCR", b"GT", b"LT")


def _p_zadd(args, line):
    check_arity(args, SPEC["ZADD"].arity)
    flags = set()
    i = 2
    while i < len(args) and args[i].upper() in _ZADD_FLAGS:
        flags.add(args[i].upper().decode())
        i += 1
    rest = args[i:]
    if not rest or len(rest) % 2:
        raise reject(E_SYNTAX)
    if "NX" in flags and "XX" in flags:
        raise reject("ERR XX and NX options at the same time are not compatible")
    if ("GT" in flags and "NX" in flags) or ("LT" in flags and "NX" in flags) or \
            ("GT" in flags and "LT" in flags):
        raise reject("ERR GT, LT, and/or NX options at the same time are not compatible")
    if "INCR" in flags and len(rest) > 2:
        raise reject("ERR INCR option supports a single increment-element pair")
    out = []
    for j in range(0, len(rest), 2):
        out.append(_score_arg(rest[j]))
        out.append(rest[j + 1])
    return data_command(SPEC["ZADD"], args, [key(args[1]), sorted(flags), out])


def _p_zincrby(args, line):
    check_arity(args, SPEC["ZINCRBY"].arity)
    return data_command(SPEC["ZINCRBY"], args, [key(args[1]), ["INCR"],
                                                [_score_arg(args[2]), args[3]]])


def _p_zcount(args, line):
    check_arity(args, SPEC["ZCOUNT"].arity)
    return data_command(SPEC["ZCOUNT"], args, [key(args[1]), _score_range(args[2], args[3])])


def _p_zlexcount(args, line):
    check_arity(args, SPEC["ZLEXCOUNT"].arity)
    return data_command(SPEC["ZLEXCOUNT"], args, [key(args[1]), _lex_range(args[2], args[3])])


def _range_args(args, start: int, store: bool, rtype: str, rev: bool | None):
    """zrangeGenericCommand's option parsing from argv[start] (the source key): returns
    [src, rtype, range, rev, offset, limit, withscores]."""
    withscores = False
    offset, limit = 0, -1
    j = start + 3
    n = len(args)
    while j < n:
        opt = args[j].upper()
        left = n - j - 1
        if not store and opt == b"WITHSCORES":
            withscores = True
        elif opt == b"LIMIT" and left >= 2:
            offset = _long(args[j + 1])
            limit = _long(args[j + 2])
            j += 2
        elif rev is None and opt == b"REV":
            rev = True
        elif rtype is None and opt == b"BYLEX":
            rtype = "lex"
        elif rtype is None and opt == b"BYSCORE":
            rtype = "score"
        else:
            raise reject(E_SYNTAX)
        j += 1
    rev = bool(rev)
    rtype = rtype or "rank"
    if limit != -1 and rtype == "rank":
        raise reject("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX")
    if withscores and rtype == "lex":
        raise reject("ERR syntax error, WITHSCORES not supported in combination with BYLEX")
    lo, hi = args[start + 1], args[start + 2]
    if rev and rtype != "rank":
        lo, hi = hi, lo
    if rtype == "rank":
        rng = [_long(lo), _long(hi)]
    elif rtype == "score":
        rng = _score_range(lo, hi)
    else:
        rng = _lex_range(lo, hi)
    return [key(args[start]), rtype, rng, rev, offset, limit, withscores]


def _p_range(name, rtype, rev):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, _range_args(args, 1, False, rtype, rev))
    return parse


def _p_zrangestore(args, line):
    check_arity(args, SPEC["ZRANGESTORE"].arity)
    return data_command(SPEC["ZRANGESTORE"], args, [key(args[1])] + _range_args(args, 2, True, None, None))


def _p_zpop(name):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        if len(args) > 3:
            raise reject(E_SYNTAX)
        count = _positive(args[2], E_POSITIVE) if len(args) == 3 else None
        return data_command(SPEC[name], args, [key(args[1]), name == "ZPOPMAX", count])
    return parse


def _mpop_args(args, idx: int):
    """ZMPOP / BZMPOP from argv[idx] (numkeys) on: [[keys], max, count]; Redis's errors."""
    numkeys = _positive(args[idx], "ERR numkeys should be greater than 0", low=1)
    where_idx = idx + numkeys + 1
    if where_idx >= len(args):
        raise reject(E_SYNTAX)
    where = args[where_idx].upper()
    if where not in (b"MIN", b"MAX"):
        raise reject(E_SYNTAX)
    count = None
    j = where_idx + 1
    while j < len(args):
        if count is None and args[j].upper() == b"COUNT" and len(args) - 1 - j:
            j += 1
            count = _positive(args[j], "ERR count should be greater than 0", low=1)
        else:
            raise reject(E_SYNTAX)
        j += 1
    return [[key(k) for k in args[idx + 1:where_idx]], where == b"MAX", 1 if count is None else count]


def _p_zmpop(args, line):
    check_arity(args, SPEC["ZMPOP"].arity)
    return data_command(SPEC["ZMPOP"], args, _mpop_args(args, 1))


def _p_key_range_raw(name, kind):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        if kind == "rank":
            rng = [_long(args[2]), _long(args[3])]
        elif kind == "score":
            rng = _score_range(args[2], args[3])
        else:
            rng = _lex_range(args[2], args[3])
        return data_command(SPEC[name], args, [key(args[1]), kind, rng])
    return parse


def _setop_args(args, idx: int, op: str, store: bool, card: bool, name: str):
    """zunionInterDiffGenericCommand's parsing from argv[idx] (numkeys): [[keys], weights,
    aggregate, withscores, limit, error]; an option error is carried to apply, where Redis
    reports it after the keys' types."""
    numkeys = _long(args[idx])
    if numkeys < 1:
        raise reject(f"ERR at least 1 input key is needed for '{name.lower()}' command")
    if numkeys > len(args) - idx - 1:
        raise reject(E_SYNTAX)
    keys = [key(k) for k in args[idx + 1:idx + 1 + numkeys]]
    weights = None
    aggregate = "SUM"
    withscores = False
    limit = 0
    error = None
    j = idx + 1 + numkeys
    n = len(args)
    while j < n:
        rem = n - j
        opt = args[j].upper()
        if op != "diff" and not card and rem >= numkeys + 1 and opt == b"WEIGHTS":
            weights = []
            for w in args[j + 1:j + 1 + numkeys]:
                v = string2d(w)
                if v is None:
                    error = E_WEIGHT
                    break
                weights.append(_stext(v))
            if error:
                break
            j += 1 + numkeys
        elif op != "diff" and not card and rem >= 2 and opt == b"AGGREGATE":
            a = args[j + 1].upper()
            if a not in (b"SUM", b"MIN", b"MAX"):
                error = E_SYNTAX
                break
            aggregate = a.decode()
            j += 2
        elif not store and not card and opt == b"WITHSCORES":
            withscores = True
            j += 1
        elif card and rem >= 2 and opt == b"LIMIT":
            lim = parse_int(args[j + 1])
            if lim is None or lim < 0:
                error = E_LIMIT
                break
            limit = lim
            j += 2
        else:
            error = E_SYNTAX
            break
    return [keys, weights, aggregate, withscores, limit, error]


def _p_setop(name, op, store, card=False):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        if store:
            out = [key(args[1])] + _setop_args(args, 2, op, True, False, name)
        else:
            out = _setop_args(args, 1, op, False, card, name)
        return data_command(SPEC[name], args, [op] + out)
    return parse


def _p_zrandmember(args, line):
    check_arity(args, SPEC["ZRANDMEMBER"].arity)
    count, withscores = None, False
    if len(args) >= 3:
        count = _long(args[2])
        if count == INT64_MIN:
            raise reject(E_RAND_RANGE)
        if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"WITHSCORES"):
            raise reject(E_SYNTAX)
        if len(args) == 4:
            withscores = True
            if count < -(INT64_MAX // 2) or count > INT64_MAX // 2:
                raise reject("ERR value is out of range")
        if count < -NEG_COUNT_MAX:
            raise reject(E_NEG_COUNT)
    return data_command(SPEC["ZRANDMEMBER"], args, [key(args[1]), count, withscores, random.getrandbits(63)])


def _p_zscan(args, line):
    """ZSCAN key cursor [MATCH p] [COUNT n]: SSCAN's grammar and errors (kv_set's parser; a bad
    option is carried to apply, as Redis reports it only for an existing key):
    sm args [key, cursor, pattern, count, error]."""
    return data_command(SPEC["ZSCAN"], args, kv_set._p_sscan(args, line).args)


# ---------------------------------------------------------------------------------------------
# Commands.  apply(s, args, now, write): s is the keyspace (kv_state.KeyValueStore).
def _a_zadd(s, a, now, w):
    k, flags, pairs = a
    nx, xx, ch = "NX" in flags, "XX" in flags, "CH" in flags
    gt, lt, incr = "GT" in flags, "LT" in flags, "INCR" in flags
    v = s.fetch(k, KIND, now, w)
    if v is None:
        if xx:
            return None if incr else 0
        # Redis 7.0 creates a listpack unless the first member is too long for one
        v, old = ZSetValue((), len(pairs[1]) <= LISTPACK_VALUE), None
    else:
        old = v.h
    added = updated = processed = 0
    score = None
    for j in range(0, len(pairs), 2):
        score = float(pairs[j])
        m = pairs[j + 1]
        cur = v.d.get(m)
        if cur is not None:
            if nx:
                continue
            if incr:
                score += cur
                if math.isnan(score):
                    raise Fail(E_NAN)
            if (lt and score >= cur) or (gt and score <= cur):
                continue
            processed += 1
            if score != cur:
                v.put(m, score)
                updated += 1
        elif not xx:
            v.put(m, score)
            added += 1
            processed += 1
    if added or updated or old is None:
        s.store(k, v, old)
    if incr:
        return Double(score) if processed else None
    return added + updated if ch else added


def _a_zrem(s, a, now, w):
    k, members = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return 0
    old = v.h
    n = sum(v.discard(m) for m in members)
    if n:
        s.store(k, v, old)
    return n


def _a_zscore(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    sc = None if v is None else v.d.get(a[1])
    return None if sc is None else Double(sc)


def _a_zmscore(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    out = []
    for m in a[1]:
        sc = None if v is None else v.d.get(m)
        out.append(None if sc is None else Double(sc))
    return out


def _a_zcard(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    return 0 if v is None else len(v)


def _a_zcount(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    if v is None:
        return 0
    i, j = _score_span(v, a[1])
    return j - i


def _a_zlexcount(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    if v is None:
        return 0
    return len(_lex_walk(v, a[1]))


def _a_zrange(s, a, now, w):
    k, rtype, rng, rev, offset, limit, withscores = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return Pairs() if withscores else []
    items = _select(v, rtype, rng, rev, offset, limit)
    if withscores:
        return _pairs(items)
    return [m for _, m in items]


def _store_result(s, dst, result: ZSetValue, now, w) -> int:
    if s._lookup(dst, now, w) is not None:
        s.remove(dst)
    if result:
        s.store(dst, result, None)
    return len(result)


def _a_zrangestore(s, a, now, w):
    dst, k, rtype, rng, rev, offset, limit, _ = a
    v = s.fetch(k, KIND, now, w)
    items = [] if v is None else _select(v, rtype, rng, rev, offset, limit)
    # Redis creates the result as a listpack (unless a rank range is longer than 128) and adds
    # the members in reply order, converting when one does not fit
    res = ZSetValue((), rtype != "rank" or len(items) <= LISTPACK_ENTRIES)
    for sc, m in items:
        res.put(m, sc)
    return _store_result(s, dst, res, now, w)


def _a_zrank(rev):
    def apply(s, a, now, w):
        v = s.fetch(a[0], KIND, now, w)
        r = None if v is None else v.rank(a[1])
        if r is None:
            return None
        return len(v) - 1 - r if rev else r
    return apply


def _pop_items(v: ZSetValue, top: bool, count: int) -> list:
    sl = v.sl
    out = []
    for _ in range(min(count, len(sl))):
        sc, m = sl[-1] if top else sl[0]
        v.discard(m)
        out.append((sc, m))
    return out


def _a_zpop(s, a, now, w):
    k, top, count = a
    v = s.fetch(k, KIND, now, w)
    if v is None or count == 0:
        return [] if count is None else Pairs()
    old = v.h
    items = _pop_items(v, top, 1 if count is None else count)
    s.store(k, v, old)
    if count is None:
        sc, m = items[0]
        return [m, Double(sc)]
    return _pairs(items)


def _first_zset(s, keys, now, w):
    for k in keys:
        v = s.fetch(k, KIND, now, w)
        if v is not None:
            return k, v
    return None, None


def _a_zmpop(s, a, now, w):
    keys, top, count = a
    k, v = _first_zset(s, keys, now, w)
    if v is None:
        return NULL_ARRAY
    old = v.h
    items = _pop_items(v, top, count)
    s.store(k, v, old)
    return [k, [[m, Double(sc)] for sc, m in items]]


def _a_bzpop(s, a, now, w):
    """BZPOPMIN / BZPOPMAX's non-blocking form: [key, member, score] from the first non-empty
    zset, or NULL_ARRAY."""
    keys, top = a
    k, v = _first_zset(s, keys, now, w)
    if v is None:
        return NULL_ARRAY
    old = v.h
    sc, m = _pop_items(v, top, 1)[0]
    s.store(k, v, old)
    return [k, m, Double(sc)]


def _a_zremrange(s, a, now, w):
    k, kind, rng = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return 0
    if kind == "rank":
        span = _rank_span(rng[0], rng[1], len(v))
        if span is None:
            return 0
        i, j = span[0], span[1] + 1
    elif kind == "score":
        i, j = _score_span(v, rng)
    else:
        items = _lex_walk(v, rng)
        i, j = 0, len(items)
    if j <= i:
        return 0
    if kind != "lex":
        items = list(v.sl.islice(i, j))
    old = v.h
    for sc, m in items:
        v.discard(m)
    s.store(k, v, old)
    return j - i


def _sources(s, keys, now, w) -> list:
    """Each key's members as a dict member -> score (a set's at 1.0), None when missing;
    WRONGTYPE for any other type (Redis accepts sets as inputs)."""
    out = []
    for k in keys:
        item = s._lookup(k, now, w)
        if item is None:
            out.append(None)
        elif item[0] == KIND:
            out.append(item[1].d)
        elif item[0] == "set":
            out.append(dict.fromkeys(item[1].items, 1.0))
        else:
            raise Fail(E_WRONGTYPE)
    return out


def _aggregate(target: float, val: float, agg: str) -> float:
    if agg == "SUM":
        t = target + val
        return 0.0 if math.isnan(t) else t
    if agg == "MIN":
        return val if val < target else target
    return val if val > target else target


def _compute(op, srcs, weights, agg, limit=0):
    """The result of a set operation as a dict member -> score."""
    ws = [1.0] * len(srcs) if weights is None else [float(x) for x in weights]
    if op == "diff":
        first = srcs[0]
        if not first:
            return {}
        rest = [x for x in srcs[1:] if x]
        return {m: sc for m, sc in first.items() if not any(m in x for x in rest)}
    order = sorted(range(len(srcs)), key=lambda i: len(srcs[i]) if srcs[i] is not None else 0)
    srcs = [srcs[i] or {} for i in order]
    ws = [ws[i] for i in order]
    out: dict = {}
    if op == "inter":
        if not srcs[0]:
            return out
        for m, sc in srcs[0].items():
            score = ws[0] * sc
            if math.isnan(score):
                score = 0.0
            for x, wt in zip(srcs[1:], ws[1:]):
                val = x.get(m)
                if val is None:
                    break
                score = _aggregate(score, val * wt, agg)
            else:
                out[m] = score
                if limit and len(out) >= limit:
                    break
        return out
    for x, wt in zip(srcs, ws):
        for m, sc in x.items():
            score = wt * sc
            if math.isnan(score):
                score = 0.0
            cur = out.get(m)
            out[m] = score if cur is None else _aggregate(cur, score, agg)
    return out


def _a_setop(s, a, now, w):
    op, keys, weights, agg, withscores, limit, error = a
    srcs = _sources(s, keys, now, w)
    if error is not None:
        raise Fail(error)
    res = _compute(op, srcs, weights, agg)
    items = sorted((sc, m) for m, sc in res.items())
    if withscores:
        return _pairs(items)
    return [m for _, m in items]


def _a_zintercard(s, a, now, w):
    op, keys, weights, agg, withscores, limit, error = a
    srcs = _sources(s, keys, now, w)
    if error is not None:
        raise Fail(error)
    return len(_compute("inter", srcs, None, "SUM", limit))


def _a_setopstore(s, a, now, w):
    op, dst, keys, weights, agg, withscores, limit, error = a
    srcs = _sources(s, keys, now, w)
    if error is not None:
        raise Fail(error)
    res = _compute(op, srcs, weights, agg)
    return _store_result(s, dst, _result(res.items()), now, w)


def _a_zrandmember(s, a, now, w):
    k, count, withscores, seed = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return None if count is None else (Pairs() if withscores else [])
    rng = random.Random(seed)
    sl = v.sl
    n = len(sl)
    if count is None:
        return sl[rng.randrange(n)][1]
    if count == 0:
        items = []
    elif count < 0:
        items = [sl[rng.randrange(n)] for _ in range(-count)]
    elif count >= n:
        items = list(sl)
    else:
        items = [sl[i] for i in rng.sample(range(n), count)]
    if withscores:
        return _pairs(items)
    return [m for _, m in items]


def _d2string(sc: float) -> bytes:
    """Redis d2string (a skiplist's ZSCAN scores)."""
    if sc == 0:
        return b"-0" if math.copysign(1.0, sc) < 0 else b"0"
    if -4503599627370495 < sc < 4503599627370496 and sc == int(sc):
        return b"%d" % int(sc)
    return format_double(sc)


def _lp_score(sc: float) -> bytes:
    """A listpack's stored score text (integral scores within +-LLONG_MAX/2 as integers)."""
    if not math.isinf(sc) and -(INT64_MAX // 2) <= sc <= INT64_MAX // 2 and sc == int(sc):
        return b"%d" % int(sc)
    return format_double(sc)


def _a_zscan(s, a, now, w):
    k, cursor, pattern, count, error = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return ["0", []]
    if error is not None:
        raise Fail(error)
    if v.listpack:
        found = [(m, _lp_score(sc)) for sc, m in v.sl]
        nxt = 0
    else:
        n = len(v)
        span = max((1 << 32) * count // max(n, 1), (1 << 32) // 64, 1)
        hi = min(cursor + span, 1 << 32)
        hashed = sorted((h, m) for m in v.d if cursor <= (h := zlib.crc32(m)) < hi)
        found = [(m, _d2string(v.d[m])) for _, m in hashed]
        nxt = 0 if hi >= 1 << 32 else hi
    if pattern is not None:
        match = compile_glob(pattern)
        found = [(m, sc) for m, sc in found if match(m.decode("utf-8", "surrogateescape"))]
    return [str(nxt), [x for pair in found for x in pair]]


# -- the blocking commands: their parsers (kv_blocking makes the client wait)
def _blocking(sm_spec, args, out, keys, timeout):
    return Blocking(data_command(sm_spec, args, out, write=True), keys, timeout, NULL_ARRAY,
                    args[0].decode("utf-8", "surrogateescape").lower())


def _p_bzpop(name):
    top = name == "BZPOPMAX"

    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        timeout = timeout_seconds(args[-1])
        keys = [key(k) for k in args[1:-1]]
        return _blocking(SPEC["BZPOPMIN"], args, [keys, top], keys, timeout)
    return parse


def _p_bzmpop(args, line):
    check_arity(args, SPEC["BZMPOP"].arity)
    out = _mpop_args(args, 2)
    timeout = timeout_seconds(args[1])
    return _blocking(SPEC["ZMPOP"], args, out, out[0], timeout)


# ---------------------------------------------------------------------------------------------
# Line-protocol reply shapes
def _text(b):
    return None if b is None else b.decode("utf-8", "surrogateescape")


def _jscore(d):
    if d is None:
        return None
    if type(d) is bytes:
        d = Double(float(d))
    return d.value if not math.isinf(d.value) else d.text.decode("ascii")


def _jmembers(r):
    if type(r) is Pairs:
        return [[_text(m), _jscore(sc)] for m, sc in r]
    return [_text(m) for m in r]


def _line_zadd(r):
    if type(r) is int:
        return {"added": r}
    return {"score": _jscore(r), "found": r is not None}


def _line_score(r):
    return {"score": _jscore(r), "found": r is not None}


def _line_pop(r):
    if type(r) is Pairs:
        return {"members": _jmembers(r)}
    return {"members": [[_text(r[0]), _jscore(r[1])]] if r else []}


def _line_mpop(r):
    if r is NULL_ARRAY:
        return {"key": None, "members": None, "found": False}
    return {"key": r[0], "members": [[_text(m), _jscore(sc)] for m, sc in r[1]], "found": True}


def _line_rand(r):
    if type(r) in (list, Pairs):
        return {"members": _jmembers(r)}
    return {"member": _text(r), "found": r is not None}


def _line_scan(r):
    flat = r[1]
    return {"cursor": r[0], "members": [[_text(flat[i]), _jscore(flat[i + 1])]
                                        for i in range(0, len(flat), 2)]}


def _range_src(a):
    return a[1:2]


def _no_keys(a):
    return ()


_Z = {"key_type": KIND}
_ORDERED = {"key_type": KIND, "type_keys": _no_keys}     # checked in apply, key by key
_RANGE = {"apply": _a_zrange, **_Z, "line": lambda r: {"members": _jmembers(r)}}
_RANGE_SM = {"sm": "ZRANGE", **_Z}
_REMRANGE = {"sm": "ZREMRANGEBYSCORE", **_Z, "line": lambda r: {"removed": r}}
_SETOP = {"sm": "ZUNION", **_ORDERED, "line": lambda r: {"members": _jmembers(r)}}
_SETSTORE = {"sm": "ZUNIONSTORE", **_ORDERED, "line": lambda r: {"stored": r}}
SPECS = spec_rows("""
ZADD -4 write,denyoom,fast 1 1 1 sorted-set 1.2.0 @write,@sortedset,@fast
ZINCRBY 4 write,denyoom,fast 1 1 1 sorted-set 1.2.0 @write,@sortedset,@fast
ZREM -3 write,fast 1 1 1 sorted-set 1.2.0 @write,@sortedset,@fast
ZSCORE 3 readonly,fast 1 1 1 sorted-set 1.2.0 @read,@sortedset,@fast
ZMSCORE -3 readonly,fast 1 1 1 sorted-set 6.2.0 @read,@sortedset,@fast
ZCARD 2 readonly,fast 1 1 1 sorted-set 1.2.0 @read,@sortedset,@fast
ZCOUNT 4 readonly,fast 1 1 1 sorted-set 2.0.0 @read,@sortedset,@fast
ZLEXCOUNT 4 readonly,fast 1 1 1 sorted-set 2.8.9 @read,@sortedset,@fast
ZRANGE -4 readonly 1 1 1 sorted-set 1.2.0 @read,@sortedset,@slow
ZRANGEBYSCORE -4 readonly 1 1 1 sorted-set 1.0.5 @read,@sortedset,@slow
ZREVRANGEBYSCORE -4 readonly 1 1 1 sorted-set 2.2.0 @read,@sortedset,@slow
ZRANGEBYLEX -4 readonly 1 1 1 sorted-set 2.8.9 @read,@sortedset,@slow
ZREVRANGEBYLEX -4 readonly 1 1 1 sorted-set 2.8.9 @read,@sortedset,@slow
ZREVRANGE -4 readonly 1 1 1 sorted-set 1.2.0 @read,@sortedset,@slow
ZRANGESTORE -5 write,denyoom 1 2 1 sorted-set 6.2.0 @write,@sortedset,@slow
ZRANK 3 readonly,fast 1 1 1 sorted-set 2.0.0 @read,@sortedset,@fast
ZREVRANK 3 readonly,fast 1 1 1 sorted-set 2.0.0 @read,@sortedset,@fast
ZPOPMIN -2 write,fast 1 1 1 sorted-set 5.0.0 @write,@sortedset,@fast
ZPOPMAX -2 write,fast 1 1 1 sorted-set 5.0.0 @write,@sortedset,@fast
ZMPOP -4 write,movablekeys 0 0 0 sorted-set 7.0.0 @write,@sortedset,@slow
ZREMRANGEBYSCORE 4 write 1 1 1 sorted-set 1.2.0 @write,@sortedset,@slow
ZREMRANGEBYRANK 4 write 1 1 1 sorted-set 2.0.0 @write,@sortedset,@slow
ZREMRANGEBYLEX 4 write 1 1 1 sorted-set 2.8.9 @write,@sortedset,@slow
ZUNIONSTORE -4 write,denyoom,movablekeys 1 1 1 sorted-set 2.0.0 @write,@sortedset,@slow
ZINTERSTORE -4 write,denyoom,movablekeys 1 1 1 sorted-set 2.0.0 @write,@sortedset,@slow
ZDIFFSTORE -4 write,denyoom,movablekeys 1 1 1 sorted-set 6.2.0 @write,@sortedset,@slow
ZUNION -3 readonly,movablekeys 0 0 0 sorted-set 6.2.0 @read,@sortedset,@slow
ZINTER -3 readonly,movablekeys 0 0 0 sorted-set 6.2.0 @read,@sortedset,@slow
ZDIFF -3 readonly,movablekeys 0 0 0 sorted-set 6.2.0 @read,@sortedset,@slow
ZINTERCARD -3 readonly,movablekeys 0 0 0 sorted-set 7.0.0 @read,@sortedset,@slow
ZRANDMEMBER -2 readonly 1 1 1 sorted-set 6.2.0 @read,@sortedset,@slow
ZSCAN -3 readonly 1 1 1 sorted-set 2.8.0 @read,@sortedset,@slow
BZPOPMIN -3 write,noscript,blocking,fast 1 -2 1 sorted-set 5.0.0 @write,@sortedset,@fast,@blocking
BZPOPMAX -3 write,noscript,blocking,fast 1 -2 1 sorted-set 5.0.0 @write,@sortedset,@fast,@blocking
BZMPOP -5 write,blocking,movablekeys 0 0 0 sorted-set 7.0.0 @write,@sortedset,@slow,@blocking
""", {
    "ZADD": {"parse": _p_zadd, "apply": _a_zadd, **_Z, "line": _line_zadd,
             "summary": "Add members with scores, or update their scores (NX XX GT LT CH INCR)"},
    "ZINCRBY": {"parse": _p_zincrby, "sm": "ZADD", **_Z, "line": _line_score,
                "summary": "Increment a member's score"},
    "ZREM": {"parse": _p_key_members("ZREM"), "apply": _a_zrem, **_Z,
             "line": lambda r: {"removed": r}, "summary": "Remove members"},
    "ZSCORE": {"parse": _p_key_member("ZSCORE"), "apply": _a_zscore, **_Z, "line": _line_score,
               "summary": "The score of a member"},
    "ZMSCORE": {"parse": _p_key_members("ZMSCORE"), "apply": _a_zmscore, **_Z,
                "line": lambda r: {"scores": [_jscore(x) for x in r]},
                "summary": "The scores of several members"},
    "ZCARD": {"parse": _p_key("ZCARD"), "apply": _a_zcard, **_Z,
              "line": lambda r: {"cardinality": r}, "summary": "The number of members"},
    "ZCOUNT": {"parse": _p_zcount, "apply": _a_zcount, **_Z, "line": lambda r: {"count": r},
               "summary": "The number of members with a score in a range"},
    "ZLEXCOUNT": {"parse": _p_zlexcount, "apply": _a_zlexcount, **_Z,
                  "line": lambda r: {"count": r},
                  "summary": "The number of members in a lexicographical range"},
    "ZRANGE": {"parse": _p_range("ZRANGE", None, None), **_RANGE,
               "summary": "Members by rank, score (BYSCORE) or lexicographical range (BYLEX)"},
    "ZRANGEBYSCORE": {"parse": _p_range("ZRANGEBYSCORE", "score", False), **_RANGE_SM,
                      "summary": "Members with a score in a range"},
    "ZREVRANGEBYSCORE": {"parse": _p_range("ZREVRANGEBYSCORE", "score", True), **_RANGE_SM,
                         "summary": "Members with a score in a range, highest first"},
    "ZRANGEBYLEX": {"parse": _p_range("ZRANGEBYLEX", "lex", False), **_RANGE_SM,
                    "summary": "Members in a lexicographical range"},
    "ZREVRANGEBYLEX": {"parse": _p_range("ZREVRANGEBYLEX", "lex", True), **_RANGE_SM,
                       "summary": "Members in a lexicographical range, highest first"},
    "ZREVRANGE": {"parse": _p_range("ZREVRANGE", "rank", True), **_RANGE_SM,
                  "summary": "Members by rank, highest first"},
    "ZRANGESTORE": {"parse": _p_zrangestore, "apply": _a_zrangestore, "key_type": KIND,
                    "type_keys": _range_src, "line": lambda r: {"stored": r},
                    "summary": "Store a ZRANGE at a key"},
    "ZRANK": {"parse": _p_key_member("ZRANK"), "apply": _a_zrank(False), **_Z,
              "line": lambda r: {"rank": r, "found": r is not None},
              "summary": "The rank of a member, lowest score first"},
    "ZREVRANK": {"parse": _p_key_member("ZREVRANK"), "apply": _a_zrank(True), **_Z,
                 "line": lambda r: {"rank": r, "found": r is not None},
                 "summary": "The rank of a member, highest score first"},
    "ZPOPMIN": {"parse": _p_zpop("ZPOPMIN"), "apply": _a_zpop, **_Z, "line": _line_pop,
                "summary": "Remove and return the members with the lowest scores"},
    "ZPOPMAX": {"parse": _p_zpop("ZPOPMAX"), "sm": "ZPOPMIN", **_Z, "line": _line_pop,
                "summary": "Remove and return the members with the highest scores"},
    "ZMPOP": {"parse": _p_zmpop, "apply": _a_zmpop, **_ORDERED, "line": _line_mpop,
              "summary": "Pop members from the first non-empty sorted set"},
    "ZREMRANGEBYSCORE": {"parse": _p_key_range_raw("ZREMRANGEBYSCORE", "score"), **_REMRANGE,
                         "apply": _a_zremrange, "summary": "Remove the members with a score in a range"},
    "ZREMRANGEBYRANK": {"parse": _p_key_range_raw("ZREMRANGEBYRANK", "rank"), **_REMRANGE,
                        "summary": "Remove the members in a rank range"},
    "ZREMRANGEBYLEX": {"parse": _p_key_range_raw("ZREMRANGEBYLEX", "lex"), **_REMRANGE,
                       "summary": "Remove the members in a lexicographical range"},
    "ZUNIONSTORE": {"parse": _p_setop("ZUNIONSTORE", "union", True), **_SETSTORE,
                    "apply": _a_setopstore, "summary": "Store the union of sorted sets at a key"},
    "ZINTERSTORE": {"parse": _p_setop("ZINTERSTORE", "inter", True), **_SETSTORE,
                    "summary": "Store the intersection of sorted sets at a key"},
    "ZDIFFSTORE": {"parse": _p_setop("ZDIFFSTORE", "diff", True), **_SETSTORE,
                   "summary": "Store the difference of sorted sets at a key"},
    "ZUNION": {"parse": _p_setop("ZUNION", "union", False), **_SETOP, "apply": _a_setop,
               "summary": "The union of sorted sets"},
    "ZINTER": {"parse": _p_setop("ZINTER", "inter", False), **_SETOP,
               "summary": "The intersection of sorted sets"},
    "ZDIFF": {"parse": _p_setop("ZDIFF", "diff", False), **_SETOP,
              "summary": "The members of the first sorted set in none of the others"},
    "ZINTERCARD": {"parse": _p_setop("ZINTERCARD", "inter", False, card=True),
                   "apply": _a_zintercard, **_ORDERED, "line": lambda r: {"cardinality": r},
                   "summary": "The size of the intersection of sorted sets, up to LIMIT"},
    "ZRANDMEMBER": {"parse": _p_zrandmember, "apply": _a_zrandmember, **_Z, "line": _line_rand,
                    "summary": "Random members (distinct for a positive count, repeats for a negative one)"},
    "ZSCAN": {"parse": _p_zscan, "apply": _a_zscan, **_Z, "line": _line_scan,
              "summary": "Iterate over the members and scores of a sorted set"},
    "BZPOPMIN": {"parse": _p_bzpop("BZPOPMIN"), "apply": _a_bzpop, **_ORDERED,
                 "summary": "ZPOPMIN of the first non-empty sorted set, waiting for one"},
    "BZPOPMAX": {"parse": _p_bzpop("BZPOPMAX"), "sm": "BZPOPMIN", **_ORDERED,
                 "summary": "ZPOPMAX of the first non-empty sorted set, waiting for one"},
    "BZMPOP": {"parse": _p_bzmpop, "sm": "ZMPOP", **_ORDERED,
               "summary": "ZMPOP, waiting for one of the sorted sets to have a member"},
})
SPEC.update((s.name, s) for s in SPECS)
