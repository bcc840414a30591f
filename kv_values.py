"""Result values and helpers shared by the keyspace (kv_state) and every value-type module
(kv_strings, kv_hash, kv_list, kv_set, kv_zset).

A leaf module: it imports only kv_protocol, so a type module can import it without pulling in
the store or the registry (kv_registry imports the type modules; kv_state imports kv_registry).

Layout
    Value, RedisError, NULL_ARRAY, OK, Double,   results besides None/int/str/bytes/list/dict and
    Pairs                                        kv_protocol.Simple (kv_commands turns every one
                                                 of them into a reply for either protocol)
    Fail                                         a command's runtime error (raised inside apply,
                                                 caught by the keyspace: becomes a RedisError)
    E_*                                          Redis's error lines, word for word
    parse_int, parse_float, format_double        Redis's number parsing and printing
    parse_ld, format_ld                          INCRBYFLOAT / HINCRBYFLOAT's x87 long double,
                                                 as Redis computes and prints it
    elem_hash, Poly                              stable 64-bit hashes for the digest: one element
                                                 (a hash field, a set member), and an ordered
                                                 sequence updated in O(1) at both ends (a list)

Digest contract for a container type: the value object keeps `h`, a 64-bit hash of its whole
content, updated per element (adding or removing one element changes it in O(1)); the keyspace
folds it into the store's digest as container_hash(key, kind, h).  Equal contents give equal h
whatever the history (so a node restored from a snapshot agrees with one that replayed the log).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from fractions import Fraction

from kv_protocol import Simple, value_to_resp_bytes

__all__ = ["Value", "RedisError", "NULL_ARRAY", "OK", "Double", "Pairs", "Fail", "to_bytes", "parse_int",
           "parse_float", "format_double", "parse_ld", "format_ld", "elem_hash", "container_hash", "Poly",
           "E_NOT_INT", "E_NOT_FLOAT", "E_OVERFLOW", "E_NO_KEY", "E_SYNTAX", "E_WRONGTYPE",
           "INT64_MIN", "INT64_MAX", "MASK64"]

MASK64 = (1 << 64) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

E_NOT_INT = "ERR value is not an integer or out of range"
E_NOT_FLOAT = "ERR value is not a valid float"
E_OVERFLOW = "ERR increment or decrement would overflow"
E_NO_KEY = "ERR no such key"
E_SYNTAX = "ERR syntax error"
E_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


# ---------------------------------------------------------------------------------------------
class Value:
    """A stored string value returned by a read (GET, MGET, GETDEL, ...): kind "json" or
    "bytes" (see kv_protocol's conventions)."""
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


NULL_ARRAY = _NullArray()     # EXEC aborted by WATCH, a blocking pop that timed out (*-1)
OK = Simple("OK")


class Double:
    """A floating-point result (ZSCORE, ZINCRBY, HINCRBYFLOAT's RESP3 double...): RESP2 sends
    `text` as a bulk string, RESP3 as a double (",<text>").  text is Redis's own formatting."""
    __slots__ = ("value", "text")

    def __init__(self, value: float, text: bytes | None = None):
        self.value = value
        self.text = format_double(value) if text is None else text

    def __eq__(self, other):
        return isinstance(other, Double) and self.text == other.text

    def __repr__(self):
        return f"Double({self.text!r})"


class Pairs(list):
    """A list of (a, b) pairs (HRANDFIELD ... WITHVALUES): RESP2 sends it as one flat array
    a1 b1 a2 b2 ..., RESP3 as an array of 2-element arrays (as Redis does; a pair may repeat,
    so it cannot be a map)."""
    __slots__ = ()


class Fail(Exception):
    """A command's runtime error inside apply(); the keyspace turns it into a RedisError
    result.  Raised before the command changed anything (commands check, then write)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def to_bytes(kind: str, value) -> bytes:
    """A stored string value as Redis sees it (the bytes RESP returns): kv_protocol's rule, JSON
    strings as their UTF-8, other JSON values as their text (42 -> b"42")."""
    return value_to_resp_bytes(value, kind)


# ---------------------------------------------------------------------------------------------
# Numbers, as Redis parses and prints them
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
    return v if INT64_MIN <= v <= INT64_MAX else None


def parse_float(b: bytes) -> float | None:
    """Redis string2d (strtod over the whole string, no spaces): a float, "inf"/"-inf"
    included; None when invalid or NaN."""
    if not b or len(b) > 5000 or b[:1].isspace() or b[-1:].isspace():
        return None
    try:
        v = float(b)
    except ValueError:
        return None
    low = b.lower()
    if b"_" in b or low.lstrip(b"+-").startswith(b"nan") or math.isnan(v):
        return None
    return v


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


def _int_text(n: int) -> str:
    """str(n) for n >= 0 of any length (Python refuses more than 4300 digits in one go; a long
    double near its maximum prints about 4950)."""
    if n < 10 ** 4000:
        return str(n)
    hi, lo = divmod(n, 10 ** 4000)
    return _int_text(hi) + str(lo).rjust(4000, "0")


def format_ld(x: Fraction) -> bytes:
    """Redis ld2string(LD_STR_HUMAN): "%.17Lf", trailing zeros (and '.') removed, "-0" -> "0"."""
    neg = x < 0
    a = -x if neg else x
    scaled = a * 10 ** 17
    q, r = divmod(scaled.numerator, scaled.denominator)
    if 2 * r > scaled.denominator or (2 * r == scaled.denominator and q & 1):
        q += 1
    s = _int_text(q).rjust(18, "0")
    s = s[:-17] + "." + s[-17:]
    s = s.rstrip("0").rstrip(".")
    if neg:
        s = "-" + s
    if s == "-0":
        s = "0"
    return s.encode("ascii")


def format_double(v: float) -> bytes:
    """Redis's "%.17g" for a double reply (ZSCORE, ZINCRBY, ...), "inf"/"-inf" as Redis
    prints them; integral values without a decimal point (%.17g already does that)."""
    if v == math.inf:
        return b"inf"
    if v == -math.inf:
        return b"-inf"
    s = b"%.17g" % v
    return s


# ---------------------------------------------------------------------------------------------
# Stable hashes for the digest
def elem_hash(*parts: bytes) -> int:
    """A stable 64-bit hash of one element made of byte strings (length-prefixed, so
    ("ab", "c") and ("a", "bc") differ)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(struct.pack(">I", len(p)))
        h.update(p)
    return int.from_bytes(h.digest(), "big")


def container_hash(key: str, kind: str, h: int) -> int:
    """One container key's contribution to the store's digest: its key, its kind and the
    content hash `h` its value object maintains."""
    d = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8)
    d.update(b"\x00" + kind.encode() + b"\x00" + (h & MASK64).to_bytes(8, "big"))
    return int.from_bytes(d.digest(), "big")


class Poly:
    """The content hash of a sequence, sum(e_i * R**i) mod P (P = 2**61 - 1), kept in O(1)
    per push or pop at either end.  e_i is elem_hash of element i (callers pass it), i counts
    from the head.  The hash depends only on the sequence, not on how it was built."""
    P = (1 << 61) - 1
    R = 0x5DEECE66D1234567 % ((1 << 61) - 1)
    R_INV = pow(R, -1, (1 << 61) - 1)

    @staticmethod
    def push_head(h: int, e: int) -> int:
        return (e + Poly.R * h) % Poly.P

    @staticmethod
    def pop_head(h: int, e: int) -> int:
        return (h - e) * Poly.R_INV % Poly.P

    @staticmethod
    def push_tail(h: int, e: int, n: int) -> int:
        """n: the length before the push."""
        return (h + e * pow(Poly.R, n, Poly.P)) % Poly.P

    @staticmethod
    def pop_tail(h: int, e: int, n: int) -> int:
        """n: the length before the pop."""
        return (h - e * pow(Poly.R, n - 1, Poly.P)) % Poly.P

    @staticmethod
    def replace(h: int, old: int, new: int, i: int) -> int:
        return (h + (new - old) * pow(Poly.R, i, Poly.P)) % Poly.P

    @staticmethod
    def of(hashes) -> int:
        """The hash of a whole sequence of element hashes (head first)."""
        h = 0
        r = 1
        P = Poly.P
        for e in hashes:
            h = (h + e * r) % P
            r = r * Poly.R % P
        return h
