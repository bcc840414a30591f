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

__all__ = ["Value", "RedisError", "NULL_ARRAY", "OK", "Double", "Pairs", "Members", "Fail", "to_bytes", "parse_int",
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


class Members(list):
    """The members of a set (SMEMBERS, SINTER, SUNION, SDIFF, SPOP with a count): RESP3 sends
    it as a set (`~`), RESP2 and the line protocol as an array, as Redis does."""
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


_HEX_LD = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?[0-9]+))?\Z")
_DEC_LD = re.compile(rb"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?\Z")
_LD_UNDERFLOW = Fraction(1, 1 << 16446)   # half the least x87 subnormal: strtold gives 0 (ERANGE)


def _dec_int(d: bytes) -> int:
    """int() of a long digit string (Python refuses more than 4300 digits in one go)."""
    n = 0
    for i in range(0, len(d), 4000):
        part = d[i:i + 4000]
        n = n * 10 ** len(part) + int(part)
    return n


def _exp(e: bytes | None) -> int | None:
    """An exponent's value, None when it is beyond any long double (sign-less huge)."""
    if not e:
        return 0
    digits = e.lstrip(b"+-").lstrip(b"0")
    if len(digits) > 7:
        return None
    v = int(digits or b"0")
    return -v if e[:1] == b"-" else v


def parse_ld(b: bytes):
    """Redis string2ld, as INCRBYFLOAT and HINCRBYFLOAT use it on the increment and the value:
    glibc strtold over the whole string (decimal, hexadecimal "0x1p3", "inf", "infinity"),
    no leading space, shorter than 5 KiB, refused when it overflows or when a nonzero number
    underflows to 0, or is NaN.  Fraction (rounded to the x87 long double), float('inf') /
    float('-inf') for the infinities, None when invalid.  Never builds a huge number: an
    exponent far past the long double range is classified without computing it."""
    if not b or len(b) >= 5 * 1024 or b[:1] in b" \t\n\v\f\r":
        return None
    low = b.lower().lstrip(b"+-")
    if len(b) - len(low) > 1:
        return None
    if low in (b"inf", b"infinity"):
        return float("-inf") if b[:1] == b"-" else float("inf")
    m = _HEX_LD.match(b)
    if m is not None:
        sign, whole, frac, e = m.groups()
        frac = frac or b""
        if not whole and not frac:
            return None
        mant = int((whole + frac).decode("ascii"), 16)
        e = _exp(e)
        if mant == 0:
            return Fraction(0)
        if e is None:
            return None                     # overflow or underflow to 0: ERANGE
        e -= 4 * len(frac)
        mag = mant.bit_length() + e         # 2**(mag-1) <= |x| < 2**mag
        if mag > 16400 or mag < -16460:
            return None
        x = Fraction(mant) * (Fraction(2) ** e)
    else:
        m = _DEC_LD.match(b)
        if m is None:
            return None
        sign, whole, frac, e = m.groups()
        frac = frac or b""
        if not whole and not frac:
            return None
        digits = (whole + frac).lstrip(b"0")
        if not digits:
            return Fraction(0)
        e = _exp(e)
        if e is None:
            return None
        e -= len(frac)
        mag = len(digits) + e               # 10**(mag-1) <= |x| < 10**mag
        if mag > 4940 or mag < -4960:
            return None
        mant = _dec_int(digits)
        x = Fraction(mant) * Fraction(10) ** e
    v = _round_ld(x)
    if v is None or (v == 0 and x <= _LD_UNDERFLOW):
        return None
    return -v if sign == b"-" else v


_STR_CHUNK = 10 ** 4000


def _decimal(n: int) -> str:
    """str(n) for n >= 0 of any size (str() refuses more than 4,300 digits; a long double
    printed with %.17Lf has up to ~4,950)."""
    if n < _STR_CHUNK:
        return str(n)
    hi, lo = divmod(n, _STR_CHUNK)
    return _decimal(hi) + str(lo).rjust(4000, "0")


def format_ld(x: Fraction) -> bytes:
    """Redis ld2string(LD_STR_HUMAN): "%.17Lf", trailing zeros (and '.') removed, "-0" -> "0"."""
    neg = x < 0
    a = -x if neg else x
    scaled = a * 10 ** 17
    q, r = divmod(scaled.numerator, scaled.denominator)
    if 2 * r > scaled.denominator or (2 * r == scaled.denominator and q & 1):
        q += 1
    s = _decimal(q).rjust(18, "0")
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
