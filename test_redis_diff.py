"""Differential test: the same seeded random command streams against redis-server and against a
3-node KV Store cluster; every reply must agree.

    python -m pytest -q test_redis_diff.py                         # the CI run (3 seeds)
    KV_DIFF_SEEDS=1-20 KV_DIFF_COMMANDS=3000 python -m pytest -q test_redis_diff.py
    python test_redis_diff.py --family expiry --seed 7             # replay one stream, verbose

Families: strings, counters, multikey, keyspace, expiry, transactions; each stream starts from an
empty database on both servers.  Agreement means: equal replies, except that errors are compared
by class (their first word: ERR, EXECABORT, ...), KEYS and full SCAN iterations as sets, TTL /
EXPIRETIME within 1 s and PTTL / PEXPIRETIME within 1000 ms, RANDOMKEY by "nil or not".  A
failing stream names its seed, the first differing command, both replies and the commands before
it.  One redis-server and one cluster serve every family (started once per module).

Timing: keys with short TTLs (tens of ms) are always followed by a pause long enough for both
servers to see them expired; every other TTL is >= 100 s or already in the past, so no reply
depends on which server answered a few ms earlier.
"""

from __future__ import annotations

import os
import select
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import kv_registry  # noqa: E402
from kv_localcluster import LocalCluster, pick_free_ports  # noqa: E402

_REGISTERED = frozenset(n.encode() for n in kv_registry.SPECS)   # families gate newer commands on it

REDIS_SERVER = shutil.which("redis-server")


def _seeds() -> list[int]:
    spec = os.environ.get("KV_DIFF_SEEDS", "1-3")
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


COMMANDS = int(os.environ.get("KV_DIFF_COMMANDS", "1000"))


# --------------------------------------------------------------------------------- RESP client
class Resp:
    """A minimal RESP2/RESP3 client that keeps reply types apart: ("+", str), ("-", str),
    (":", int), ("$", bytes | None), ("*", list | None), and the RESP3 types ("%", [(k, v), ...])
    a map, ("~", list) a set, (",", bytes) a double as sent, ("#", bool), ("_", None) the null,
    ("(", int) a big number, ("=", (format, bytes)) verbatim text, ("|", (pairs, reply)) a reply
    with an attribute, (">", list) a push.  A push that arrives before a command's reply (an
    out-of-band message) is kept in `pushes`; a blob error (!) reads as ("-", str).
    `protocol` is what the last successful HELLO switched to."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.protocol = 2
        self.pushes: list = []

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def call(self, *args) -> tuple:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        name = (args[0] if isinstance(args[0], bytes) else str(args[0]).encode()).upper() if args else b""
        while True:
            rep = self._read()
            if rep[0] != ">" or name in _PUSH_REPLIES:
                break
            self.pushes.append(rep)
        if name == b"HELLO" and rep[0] in ("%", "*") and len(args) > 1:
            self.protocol = int(args[1])
        return rep

    def hello(self, protocol: int) -> tuple:
        rep = self.call(b"HELLO", protocol)
        if rep[0] == "-":
            raise ConnectionError(f"HELLO {protocol} refused: {rep[1]}")
        return rep

    def _line(self) -> bytes:
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed (read {line!r})")
        return line

    def _blob(self, n: int) -> bytes:
        data = self.f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed inside a bulk reply")
        return data[:-2]

    def _read(self) -> tuple:
        line = self._line()
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return ("+", rest.decode())
        if t == b"-":
            return ("-", rest.decode("utf-8", "replace"))
        if t == b":":
            return (":", int(rest))
        if t == b"$":
            n = int(rest)
            return ("$", None) if n < 0 else ("$", self._blob(n))
        if t == b"*":
            n = int(rest)
            return ("*", None) if n < 0 else ("*", [self._read() for _ in range(n)])
        if t == b"_":
            return ("_", None)
        if t in (b"%", b"|"):
            pairs = [(self._read(), self._read()) for _ in range(int(rest))]
            return ("%", pairs) if t == b"%" else ("|", (pairs, self._read()))
        if t == b"~":
            return ("~", [self._read() for _ in range(int(rest))])
        if t == b">":
            return (">", [self._read() for _ in range(int(rest))])
        if t == b",":
            return (",", rest)
        if t == b"#":
            if rest not in (b"t", b"f"):
                raise ConnectionError(f"bad boolean {line!r}")
            return ("#", rest == b"t")
        if t == b"(":
            return ("(", int(rest))
        if t == b"=":
            data = self._blob(int(rest))
            return ("=", (data[:3].decode(), data[4:]))
        if t == b"!":
            return ("-", self._blob(int(rest)).decode("utf-8", "replace"))
        raise ConnectionError(f"unexpected reply line {line!r}")


# Commands whose own reply is a push under RESP3.
_PUSH_REPLIES = frozenset({b"SUBSCRIBE", b"UNSUBSCRIBE", b"PSUBSCRIBE", b"PUNSUBSCRIBE"})


def resp3_types(reply):
    """The type tree of a reply, without its values, lengths or order: equal for two replies
    that use the same RESP3 types at every level (an array of bulks vs a set of bulks differ)."""
    t, v = reply
    if t in ("*", "~", ">") and v is not None:
        return (t, frozenset(resp3_types(x) for x in v))
    if t == "%":
        return (t, frozenset((resp3_types(a), resp3_types(b)) for a, b in v))
    if t == "|":
        return (t, frozenset((resp3_types(a), resp3_types(b)) for a, b in v[0]), resp3_types(v[1]))
    return (t, v is None) if t in ("$", "*") else t


def flat_pairs(reply):
    """A WITHSCORES / WITHVALUES reply as RESP2's flat array: RESP3 sends [a, b] pairs."""
    t, v = reply
    if t == "*" and v and v[0][0] == "*":
        return (t, [x for pair in v for x in pair[1]])
    return reply


def as_resp2(reply):
    """A RESP3 reply as the RESP2 reply of the same values (what the families' norms and the
    comparison read): map -> flat array, set / push -> array, double -> bulk of its text,
    boolean -> 1/0, big number -> integer, verbatim -> bulk, null -> nil, attribute dropped."""
    t, v = reply
    if t in ("*", "~", ">"):
        return ("*", None if v is None else [as_resp2(x) for x in v])
    if t == "%":
        return ("*", [as_resp2(x) for pair in v for x in pair])
    if t == ",":
        return ("$", v)
    if t == "#":
        return (":", int(v))
    if t == "(":
        return (":", v)
    if t == "=":
        return ("$", v[1])
    if t == "_":
        return ("$", None)
    if t == "|":
        return as_resp2(v[1])
    return reply


# --------------------------------------------------------------------------------- generators
VALUES = [b"", b"0", b"1", b"-1", b"42", b"007", b"3.5", b"-2.25", b"1e3", b"abc", b"hello world",
          b"9223372036854775807", b"-9223372036854775808", b"\xff\xfe", b" 5", b"+3", b"10.0",
          b"12345678901234567890", b"x" * 40]
INTS = [0, 1, -1, 2, 5, 100, -7, 9223372036854775807, -9223372036854775808, b"abc", b"1.5", b"",
        b"99999999999999999999"]
FLOATS = [b"0.1", b"-0.5", b"1e2", b"3", b"abc", b"10.5", b"-1.25e1", b"5.0e3", b"0", b"-0.1", b".5",
          b"1.", b"", b"1e400"]


class Gen:
    """Seeded command streams.  An op is (kind, args): kind "cmd" (send to both main connections),
    "other" (send on the second connections: a concurrent client), "sleep" (seconds), "scan"
    (a full SCAN iteration with the given options, compared as a set), "block" ((i, args):
    send a blocking command on blocker connection i without reading its answer; the stream
    goes on once that client is blocked or answered, on both servers), "wake" (i: read blocker
    i's answer and compare)."""

    def __init__(self, family: str, seed: int):
        self.r = random.Random(f"{family}/{seed}")
        self.family = family
        self.keys = [b"k%d" % i for i in range(6)]
        self.in_multi = False

    def key(self) -> bytes:
        return self.r.choice(self.keys)

    def val(self) -> bytes:
        return self.r.choice(VALUES)

    def ops(self, n: int):
        fn = getattr(self, "g_" + self.family)
        count = 0
        while count < n:
            for op in fn():
                yield op
                count += op[0] != "sleep"

    # -- helpers shared by families
    def _ttl_read(self):
        return ("cmd", [self.r.choice([b"TTL", b"PTTL", b"EXPIRETIME", b"PEXPIRETIME"]), self.key()])

    def _expire_args(self, long_only: bool = False):
        r = self.r
        x = r.random()
        if x < 0.7 or long_only:
            return [b"EX", r.randint(100, 10000)] if r.random() < 0.5 else [b"PX", r.randint(100_000, 10_000_000)]
        if x < 0.8:
            now = int(time.time())
            return [b"EXAT", now + r.randint(100, 10000)] if r.random() < 0.5 else [b"PXAT", (now - r.randint(10, 1000)) * 1000]
        return r.choice([[b"EX", 0], [b"PX", -5], [b"EX", b"abc"], [b"EX"], [b"EXAT", b"1.5"]])

    # -- families
    def g_strings(self):
        r = self.r
        c = r.randrange(16)
        k = self.key()
        if c < 4:
            args = [b"SET", k, self.val()]
            opts = []
            if r.random() < 0.3:
                opts.append(r.choice([b"NX", b"XX", b"nx"]))
            if r.random() < 0.2:
                opts.append(b"GET")
            if r.random() < 0.3:
                opts += self._expire_args()
            elif r.random() < 0.1:
                opts.append(b"KEEPTTL")
            if r.random() < 0.05:
                opts.append(r.choice([b"NX", b"XX", b"KEEPTTL", b"EX", b"BOGUS"]))
            r.shuffle(opts) if r.random() < 0.2 else None
            yield ("cmd", args + opts)
        elif c == 4:
            yield ("cmd", [b"GET", k])
        elif c == 5:
            yield ("cmd", [b"GETSET", k, self.val()])
        elif c == 6:
            yield ("cmd", [b"GETDEL", k])
        elif c == 7:
            opt = r.choice([[], [b"PERSIST"], self._expire_args(), [b"EX", 5, b"PX", 5], [b"PERSIST", b"EX", 1]])
            yield ("cmd", [b"GETEX", k] + opt)
        elif c == 8:
            yield ("cmd", [b"SETNX", k, self.val()])
        elif c == 9:
            yield ("cmd", [r.choice([b"SETEX", b"PSETEX"]), k, r.choice([100000, 500000, 0, -1, b"x"]), self.val()])
        elif c == 10:
            yield ("cmd", [b"APPEND", k, self.val()])
        elif c == 11:
            yield ("cmd", [b"STRLEN", k])
        elif c == 12:
            yield ("cmd", [r.choice([b"GETRANGE", b"SUBSTR"]), k, r.randint(-8, 8), r.choice([r.randint(-8, 8), b"x", 100])])
        elif c == 13:
            yield ("cmd", [b"SETRANGE", k, r.choice([0, 1, 3, 7, -1, b"z"]), self.val()])
        elif c == 14:
            yield self._ttl_read()
        else:
            yield ("cmd", [b"DEL", k])

    def g_counters(self):
        r = self.r
        c = r.randrange(10)
        k = self.key()
        if c < 2:
            yield ("cmd", [r.choice([b"INCR", b"DECR"]), k])
        elif c < 4:
            yield ("cmd", [r.choice([b"INCRBY", b"DECRBY"]), k, r.choice(INTS)])
        elif c < 6:
            yield ("cmd", [b"INCRBYFLOAT", k, r.choice(FLOATS)])
        elif c < 8:
            yield ("cmd", [b"SET", k, r.choice(VALUES + [b"9223372036854775806", b"-9223372036854775807", b"1.5"])])
        elif c == 8:
            yield ("cmd", [b"GET", k])
        else:
            yield ("cmd", r.choice([[b"INCR"], [b"INCRBY", k], [b"INCR", k, k], [b"DEL", k]]))

    def g_multikey(self):
        r = self.r
        c = r.randrange(9)
        ks = [self.key() for _ in range(r.randint(1, 5))]
        if c == 0:
            yield ("cmd", [b"MGET"] + ks)
        elif c in (1, 2):
            args = [b"MSET"]
            for k in ks:
                args += [k, self.val()]
            if r.random() < 0.05:
                args.pop()
            yield ("cmd", args)
        elif c == 3:
            args = [b"MSETNX"]
            for k in ks:
                args += [k, self.val()]
            yield ("cmd", args)
        elif c == 4:
            yield ("cmd", [r.choice([b"DEL", b"UNLINK"])] + ks)
        elif c == 5:
            yield ("cmd", [b"EXISTS"] + ks)
        elif c == 6:
            yield ("cmd", [b"TOUCH"] + ks)
        elif c == 7:
            yield ("cmd", [b"SET", ks[0], self.val()])
        else:
            yield ("cmd", r.choice([[b"MGET"], [b"MSET"], [b"DEL"], [b"GET", ks[0]]]))

    def g_keyspace(self):
        r = self.r
        c = r.randrange(16)
        a, b = self.key(), self.key()
        if c == 0:
            yield ("cmd", [b"TYPE", a])
        elif c == 1:
            yield ("cmd", [r.choice([b"RENAME", b"RENAMENX"]), a, b])
        elif c == 2:
            extra = r.choice([[], [b"REPLACE"], [b"DB", 0], [b"DB", 0, b"REPLACE"], [b"BOGUS"]])
            yield ("cmd", [b"COPY", a, b] + extra)
        elif c == 3:
            yield ("cmd", [b"RANDOMKEY"])
        elif c in (4, 5):
            opts = []
            if r.random() < 0.5:
                opts += [b"MATCH", r.choice([b"k[0-2]", b"*", b"k?", b"x*", b"*3"])]
            if r.random() < 0.5:
                opts += [b"COUNT", r.choice([1, 2, 5, 100])]
            if r.random() < 0.3:
                opts += [b"TYPE", r.choice([b"string", b"list", b"hash"])]
            yield ("scan", opts)
        elif c == 6:
            yield ("cmd", [b"KEYS", r.choice([b"*", b"k[1-3]", b"k?", b"nomatch", b"*[^0]"])])
        elif c == 7:
            yield ("cmd", [b"DBSIZE"])
        elif c == 8 and r.random() < 0.15:
            yield ("cmd", [r.choice([b"FLUSHDB", b"FLUSHALL"])] + r.choice([[], [b"ASYNC"], [b"SYNC"], [b"NOW"]]))
        elif c in (9, 10, 11):
            yield ("cmd", [b"SET", a, self.val()])
        elif c == 12:
            yield ("cmd", [b"SET", a, self.val()] + self._expire_args(long_only=True))
        elif c == 13:
            yield self._ttl_read()
        elif c == 14:
            yield ("cmd", [b"EXISTS", a, b])
        else:
            yield ("cmd", [b"DEL", a])

    def g_expiry(self):
        r = self.r
        c = r.randrange(14)
        k = self.key()
        if c < 4:
            name = r.choice([b"EXPIRE", b"PEXPIRE", b"EXPIREAT", b"PEXPIREAT"])
            x = r.random()
            if x < 0.6:
                t = r.randint(100, 100000)
            elif x < 0.75:
                t = -r.randint(1, 100)
            elif x < 0.85:
                t = r.choice([b"abc", b"1.5", b"", 0])
            else:
                t = r.randint(100, 100000)
            if name == b"EXPIREAT" and type(t) is int:
                t = int(time.time()) + t
            elif name == b"PEXPIRE" and type(t) is int:
                t = t * 1000
            elif name == b"PEXPIREAT" and type(t) is int:
                t = int(time.time() * 1000) + t * 1000
            flags = r.sample([b"NX", b"XX", b"GT", b"LT", b"gt", b"BAD"], r.choice([0, 0, 0, 1, 1, 2]))
            yield ("cmd", [name, k, t] + flags)
        elif c < 7:
            yield self._ttl_read()
        elif c == 7:
            yield ("cmd", [b"PERSIST", k])
        elif c == 8:
            yield ("cmd", [b"SET", k, self.val()] + r.choice([[], [b"KEEPTTL"], self._expire_args(long_only=True)]))
        elif c == 9:
            yield ("cmd", [r.choice([b"GET", b"EXISTS", b"TYPE"]), k])
        elif c == 10 and r.random() < 0.3:
            # a short TTL, then a pause: both servers must see the key gone afterwards
            yield ("cmd", [b"SET", k, self.val(), b"PX", r.randint(5, 40)])
            yield ("sleep", 0.1)
            yield ("cmd", [r.choice([b"GET", b"EXISTS", b"TTL", b"PERSIST", b"INCR"]), k])
        elif c == 11:
            yield ("cmd", [b"GETEX", k] + r.choice([[b"PERSIST"], [b"EX", r.randint(100, 1000)], []]))
        elif c == 12:
            yield ("cmd", [b"KEYS", b"*"])
        else:
            yield ("cmd", [r.choice([b"EXPIRE", b"TTL", b"PERSIST"])])

    def g_transactions(self):
        r = self.r
        if not self.in_multi:
            c = r.randrange(10)
            if c < 3:
                yield ("cmd", [b"WATCH"] + [self.key() for _ in range(r.randint(1, 3))])
            elif c < 6:
                self.in_multi = True
                yield ("cmd", [b"MULTI"])
            elif c == 6:
                yield ("other", [b"SET", self.key(), self.val()])
            elif c == 7:
                yield ("cmd", r.choice([[b"EXEC"], [b"DISCARD"], [b"UNWATCH"]]))
            elif c == 8:
                yield ("other", [b"DEL", self.key()])
            else:
                yield ("cmd", [b"INCR", self.key()])
            return
        c = r.randrange(14)
        if c < 7:
            fam = r.choice(["strings", "counters", "multikey"])
            op = next(iter(getattr(self, "g_" + fam)()))
            yield op
        elif c == 7:
            yield ("cmd", r.choice([[b"NOSUCHCMD", b"x"], [b"GET"], [b"SET", b"k1"]]))
        elif c == 8:
            yield ("cmd", r.choice([[b"MULTI"], [b"WATCH", self.key()]]))
        elif c == 9:
            yield ("other", [b"SET", self.key(), self.val()])
        elif c == 10:
            yield ("cmd", [b"INCRBY", self.key(), b"notanumber"])
        elif c == 11:
            self.in_multi = False
            yield ("cmd", [b"DISCARD"])
        else:
            self.in_multi = False
            yield ("cmd", [b"EXEC"])

    # == value-type families: each type module's family below its own marker ==============
    # A family may yield ("cmd", args, norm): norm(reply) -> what is compared (an unordered
    # reply as a sorted list, a random reply by its shape), instead of the reply itself.

    # == hashes family (kv_hash) ===========================================================
    #
    # Keys h0..h2 (hashes of at most 10 fields from _H_FIELDS; a long field or value turns one
    # into a Redis hashtable, whose order is Redis's own: replies that list fields are compared
    # sorted), ho (short fields and values only: always a listpack, compared in order, HSCAN
    # with any cursor), hs (a string: WRONGTYPE), hbig (511..514 fields around the listpack
    # threshold, then deleted), nokey.  Random picks (HRANDFIELD) are compared by shape.
    _H_KEYS = [b"h0", b"h1", b"h2", b"h0", b"ho", b"hs", b"nokey"]
    _H_FIELDS = [b"a", b"b", b"c", b"n", b"f", b"", b"\xff\xfe", b"hello world", b"x" * 70,
                 b"9223372036854775807"]
    _H_SHORT = [b"a", b"b", b"c", b"n", b"f", b"", b"\xff\xfe", b"hello world"]
    _H_VALUES = VALUES + [b"y" * 64, b"y" * 65, b"inf", b"-inf", b"1e400", b"0x10", b"1e-4940", b"5e-18",
                          b"-9223372036854775807", b"nan"]
    _H_INCR = INTS + [b" 5", b"-0", b"+1", b"007", b"9223372036854775808", -9223372036854775807]
    _H_FLOATS = FLOATS + [b"inf", b"-inf", b"+inf", b"nan", b"0x1p3", b"0x1.8p1", b" 5", b"5 ", b"1e-5000",
                          b"1e5000", b"1e-4940", b"-1e400", b"infinity", b"1.1", b"3.0e-17", b"1e17",
                          b"123456789012345678901234567890", b"-0.0", b"0x", b"1e", b"-1.5"]

    @staticmethod
    def _h_pairs(rep):
        """A flat field/value array (HGETALL, HSCAN's second element) as sorted pairs."""
        t, v = rep
        if t != "*" or v is None:
            return rep
        flat = [x[1] for x in v]
        return (t, sorted(zip(flat[0::2], flat[1::2])))

    @staticmethod
    def _h_sorted(rep):
        t, v = rep
        return (t, sorted(x[1] for x in v)) if t == "*" and v is not None else rep

    @staticmethod
    def _h_scan(rep):
        t, v = rep
        if t != "*":
            return rep
        flat = [x[1] for x in v[1][1]]
        return (v[0][1], sorted(zip(flat[0::2], flat[1::2])))

    def _h_rand(self, count, withvalues, pool=None):
        """norm of HRANDFIELD [count [WITHVALUES]]: nil or a field of the pool; with a count
        the number of picks, distinctness (count > 0), the picks as a sorted whole when they
        are the whole hash (fewer than count), all from the pool."""
        pool = frozenset(self._H_FIELDS) if pool is None else pool

        def norm(rep):
            t, v = flat_pairs(rep) if withvalues else rep
            if t != "*" or v is None:
                return (t, v is None or v in pool)
            flat = [x[1] for x in v]
            got = flat[0::2] if withvalues else flat
            pairs = sorted(zip(flat[0::2], flat[1::2])) if withvalues else None
            ok = all(f in pool for f in got)
            if count > 0 and len(got) < count:
                return ("whole", sorted(got), pairs, len(flat) % 2 if withvalues else 0)
            return ("part", len(got), ok, count < 0 or len(set(got)) == len(got))
        return norm

    def g_hashes(self):
        r = self.r
        c = r.randrange(34)
        k = r.choice(self._H_KEYS)
        fld = lambda: r.choice(self._H_FIELDS)   # noqa: E731
        val = lambda: r.choice(self._H_VALUES)   # noqa: E731
        short = lambda: r.choice(self._H_SHORT)  # noqa: E731
        ordered = k == b"ho"
        if c < 4:
            args = [r.choice([b"HSET", b"hset", b"HMSET"]), k]
            for _ in range(r.randint(1, 3)):
                args += [short(), r.choice(VALUES[:-1])] if ordered else [fld(), val()]
            yield ("cmd", args)
        elif c == 4:
            yield ("cmd", [b"HSETNX", k, short() if ordered else fld(), r.choice(VALUES[:-1]) if ordered else val()])
        elif c == 5:
            yield ("cmd", [b"HDEL", k] + [fld() for _ in range(r.randint(1, 3))])
        elif c == 6:
            yield ("cmd", [b"HGET", k, fld()])
        elif c == 7:
            yield ("cmd", [b"HMGET", k] + [fld() for _ in range(r.randint(1, 4))])
        elif c == 8:
            yield ("cmd", [r.choice([b"HEXISTS", b"HSTRLEN"]), k, fld()])
        elif c == 9:
            yield ("cmd", [b"HLEN", k])
        elif c < 12:
            name = r.choice([b"HGETALL", b"HKEYS", b"HVALS"])
            if ordered:
                yield ("cmd", [name, k])
            else:
                yield ("cmd", [name, k], self._h_pairs if name == b"HGETALL" else self._h_sorted)
        elif c < 14:
            fields = self._H_SHORT[:5] + ([] if ordered else [b"x" * 70])
            yield ("cmd", [b"HINCRBY", k, r.choice(fields), r.choice(self._H_INCR)])
        elif c < 16:
            # ho stays a listpack: no long field, no increment that makes a long value
            f = r.choice(self._H_SHORT[:5] + ([] if ordered else [b"x" * 70]))
            by = r.choice(self._H_FLOATS)
            if ordered and by in (b"1e400", b"-1e400"):
                by = b"1e17"
            yield ("cmd", [b"HINCRBYFLOAT", k, f, by])
            if r.random() < 0.3:
                yield ("cmd", [b"HGET", k, f])
        elif c == 16:
            v = r.choice([b"9223372036854775807", b"-9223372036854775808", b"9223372036854775806",
                          b"1.5", b"1e400", b"-1e4932", b"1.18e4932", b"0x1p-3", b"inf", b" 5",
                          b"99999999999999999999", b"-0", b"3"])
            if ordered and v in (b"1e400", b"-1e4932", b"1.18e4932"):
                v = b"1e30"
            yield ("cmd", [b"HSET", k, r.choice(self._H_SHORT[:5]), v])
        elif c < 19:
            n = r.choice([None, 0, 1, 2, 3, 5, 10, 20, -1, -2, -5, -20])
            wv = n is not None and r.random() < 0.5
            yield ("cmd", [b"HRANDFIELD", k] + ([] if n is None else [n]) + ([r.choice([b"WITHVALUES", b"withvalues"])] if wv else []),
                   self._h_rand(1 if n is None else n, wv) if n is not None else self._h_rand(1, False))
        elif c == 19:
            yield ("cmd", r.choice([
                [b"HRANDFIELD", k, b"abc"], [b"HRANDFIELD", k, 1, b"WITHVALUE"], [b"HRANDFIELD", k, 1, b"WITHVALUES", b"x"],
                [b"HRANDFIELD", k, -9223372036854775808], [b"HRANDFIELD", b"hnone", -9223372036854775807],
                [b"HRANDFIELD", k, 9223372036854775807, b"WITHVALUES"], [b"HRANDFIELD", k, -4611686018427387904, b"WITHVALUES"],
                [b"HRANDFIELD", k, 4611686018427387903, b"WITHVALUES"], [b"HRANDFIELD", k, 4611686018427387904, b"WITHVALUES"],
                [b"HRANDFIELD", k, b"007"], [b"HRANDFIELD", k, b" 1"], [b"HRANDFIELD", k, 0, b"WITHVALUES"],
                [b"HRANDFIELD", b"hnone", -5, b"WITHVALUES"], [b"HRANDFIELD", k, 9223372036854775807],
                [b"HRANDFIELD", k, b"9223372036854775808"], [b"HRANDFIELD", k, b"1.0"]]),
                self._h_sorted)     # what answers is the whole hash (count >= its size) or an error
        elif c < 22:
            # cursor 0 with a COUNT > the hash's size (h0..h2 hold at most 10 fields): the
            # whole hash whatever its encoding; ho (a listpack) with any cursor and COUNT
            opts = []
            if r.random() < 0.5:
                opts += [b"MATCH", r.choice([b"*", b"?", b"[a-c]", b"*e*", b"x*", b"9*", b"\xff*", b"[^a]*", b"", b"h*d"])]
            if ordered:
                cur = r.choice([0, 0, 1, 7, 12345, b"18446744073709551615", b"-1", b"+3", b""])
                if r.random() < 0.5:
                    opts += [b"COUNT", r.choice([1, 2, 10, 100])]
            else:       # COUNT > the size: a hashtable of exactly COUNT fields may stop early in Redis
                cur = 0
                opts += [b"COUNT", r.choice([11, 12, 100])]
            if len(opts) == 4 and r.random() < 0.3:
                opts = opts[2:] + opts[:2]
            yield ("cmd", [b"HSCAN", k, cur] + opts, None if ordered else self._h_scan)
        elif c == 22:
            yield ("cmd", r.choice([
                [b"HSCAN", k, b"x"], [b"HSCAN", k, b" 1"], [b"HSCAN", k, b"-1", b"COUNT", 0],
                [b"HSCAN", k, 0, b"COUNT", 0], [b"HSCAN", k, 0, b"COUNT", b"abc"], [b"HSCAN", k, 0, b"COUNT", -1],
                [b"HSCAN", k, 0, b"TYPE", b"hash"], [b"HSCAN", k, 0, b"COUNT"], [b"HSCAN", k, 0, b"MATCH"],
                [b"HSCAN", b"hs", 0], [b"HSCAN", b"hs", b"abc"], [b"HSCAN", b"nokey", 0, b"BAD"],
                [b"HSCAN", k, b"18446744073709551616"], [b"HSCAN", k, b"1.5"], [b"HSCAN", k, 0, b"NOVALUES"],
                [b"HSCAN", k, 0, b"count", 100, b"match", b"*", b"COUNT", b"x"]]), self._h_scan)
        elif c == 23:
            yield ("cmd", r.choice([
                [b"HSET", k], [b"HSET", k, b"a"], [b"HSET", k, b"a", b"1", b"b"], [b"HMSET", k, b"a"],
                [b"HMSET", k, b"a", b"1", b"b"], [b"HSETNX", k, b"a"], [b"HSETNX", k, b"a", b"1", b"2"],
                [b"HGET", k], [b"HGET", k, b"a", b"b"], [b"HMGET", k], [b"HDEL", k], [b"HEXISTS", k],
                [b"HSTRLEN", k, b"a", b"b"], [b"HLEN"], [b"HLEN", k, k], [b"HKEYS"], [b"HVALS", k, k],
                [b"HGETALL"], [b"HINCRBY", k, b"a"], [b"HINCRBY", k, b"a", 1, 2], [b"HINCRBYFLOAT", k, b"a"],
                [b"HRANDFIELD"], [b"HSCAN", k], [b"HSET"], [b"hgetall", k, b"x"]]))
        elif c == 24:
            yield ("cmd", [b"SET", r.choice([b"hs", b"hs", b"h1"]), self.val()])
        elif c == 25:
            yield ("cmd", [r.choice([b"TYPE", b"EXISTS"]), k])
        elif c == 26:
            yield ("cmd", [b"DEL", k])
        elif c == 27:
            yield ("cmd", [b"EXPIRE", k, r.randint(100, 10000)])
            yield ("cmd", [b"TTL", k])
        elif c == 28:
            # around the listpack limits (hash-max-listpack-entries 512, -value 64): 511..514
            # fields, maybe one value of 64 or 65 bytes
            n = r.choice([511, 512, 513, 514])
            long_v = r.choice([None, None, 64, 65])
            args = [b"HSET", b"hbig"]
            for i in range(n):
                args += [b"f%d" % i, b"v" * long_v if long_v and i == n // 2 else b"%d" % i]
            lp = n <= 512 and long_v != 65
            yield ("cmd", [b"DEL", b"hbig"])
            yield ("cmd", args)
            if r.random() < 0.5:
                yield ("cmd", [b"HSET", b"hbig", r.choice([b"f0", b"new"]), b"z"])
                lp = lp and n < 512
            yield ("cmd", [b"HLEN", b"hbig"])
            if lp:      # a listpack: whole, in order, whatever the cursor and COUNT
                yield ("cmd", [b"HSCAN", b"hbig", r.choice([0, 5]), b"COUNT", 1])
                yield ("cmd", [b"HKEYS", b"hbig"])
            else:       # a hashtable: a partial first call (shape), then the whole with a big COUNT
                yield ("cmd", [b"HSCAN", b"hbig", 0, b"COUNT", 1],
                       lambda rep: (rep[0], rep[1][0][1] != b"0", len(rep[1][1][1]) < 2 * n))
                yield ("cmd", [b"HSCAN", b"hbig", 0, b"COUNT", 1000], self._h_scan)
                yield ("cmd", [b"HKEYS", b"hbig"], self._h_sorted)
            pool = frozenset(b"f%d" % i for i in range(n)) | {b"new"}
            cnt = r.choice([5, -5, 600, -700])
            yield ("cmd", [b"HRANDFIELD", b"hbig", cnt] + ([b"WITHVALUES"] if r.random() < 0.5 else []),
                   lambda rep, cnt=cnt: (rep[0], len(rep[1]) in (abs(cnt), 2 * abs(cnt), n, n + 1, 2 * n, 2 * n + 2)))
            yield ("cmd", [b"HRANDFIELD", b"hbig"], self._h_rand(1, False, pool))
            yield ("cmd", [b"HGETALL", b"hbig"], self._h_pairs)
            yield ("cmd", [b"DEL", b"hbig"])
        elif c == 29:
            # emptied hashes are deleted
            yield ("cmd", [b"HDEL", k] + list(self._H_FIELDS))
            yield ("cmd", [b"EXISTS", k])
        elif c == 30:
            yield ("cmd", [b"MULTI"])
            yield ("cmd", [b"HSET", b"ho", short(), r.choice(VALUES[:-1])])
            yield ("cmd", [b"HINCRBY", b"ho", b"n", r.choice([1, -1, 5])])
            yield ("cmd", [b"HINCRBYFLOAT", b"ho", b"f", r.choice([b"1.5", b"abc", b"-0.25"])])
            yield ("cmd", [b"HGETALL", b"ho"])
            yield ("cmd", [b"EXEC"])
        elif c == 31:
            yield ("cmd", [b"HGETALL", b"ho"])
        elif c == 32:
            # a known hash: what HRANDFIELD picks must come from it, with its values
            yield ("cmd", [b"DEL", b"hk"])
            yield ("cmd", [b"HSET", b"hk", b"a", b"1", b"b", b"2", b"c", b"3"])
            n = r.choice([1, 2, 3, 4, -4])
            yield ("cmd", [b"HRANDFIELD", b"hk", n, b"WITHVALUES"],
                   lambda rep: (lambda t, v: (t, all(dict([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]).get(f[1]) == x[1]
                                                     for f, x in zip(v[0::2], v[1::2])), len(v)))(*flat_pairs(rep)))
        else:
            yield ("cmd", [b"RENAME", r.choice([b"h0", b"h1", b"h2"]), r.choice([b"h0", b"h1", b"h2"])])


    # == lists family (kv_list) ============================================================
    #
    _LELEMS = [b"a", b"b", b"c", b"a", b"", b"1", b"xyz", b"\xff"]
    _LIDX = [0, 1, -1, 2, -2, 3, -3, 5, -6, 100, -100, 9223372036854775807, -9223372036854775808,
             b"x", b"1.5", b"", b"99999999999999999999"]

    def _lkey(self):
        return self.r.choice([b"l0", b"l1", b"l2", b"l0", b"l1", b"s0", b"nx"])

    def _lel(self):
        return self.r.choice(self._LELEMS)

    def g_lists(self):
        r = self.r
        c = r.randrange(30)
        k = self._lkey()
        idx = lambda: r.choice(self._LIDX)   # noqa: E731
        if c < 5:
            yield ("cmd", [r.choice([b"LPUSH", b"RPUSH", b"lpush", b"RPUSH"]), k]
                   + [self._lel() for _ in range(r.randint(1, 4))])
        elif c == 5:
            yield ("cmd", [r.choice([b"LPUSHX", b"RPUSHX"]), k] + [self._lel() for _ in range(r.randint(1, 3))])
        elif c < 8:
            cnt = [] if r.random() < 0.5 else [r.choice([0, 1, 2, 3, 10, -1, b"x", 9223372036854775807])]
            if r.random() < 0.03:
                cnt += [1]
            yield ("cmd", [r.choice([b"LPOP", b"RPOP"]), k] + cnt)
        elif c == 8:
            yield ("cmd", [b"LLEN", k])
        elif c < 11:
            yield ("cmd", [b"LRANGE", k, idx(), idx()])
        elif c == 11:
            yield ("cmd", [b"LINDEX", k, idx()])
        elif c == 12:
            yield ("cmd", [b"LSET", k, idx(), self._lel()])
        elif c == 13:
            yield ("cmd", [b"LINSERT", k, r.choice([b"BEFORE", b"AFTER", b"after", b"MIDDLE"]),
                           self._lel(), self._lel()])
        elif c == 14:
            yield ("cmd", [b"LREM", k, r.choice([0, 1, -1, 2, -2, 5, b"x"]), self._lel()])
        elif c == 15:
            yield ("cmd", [b"LTRIM", k, idx(), idx()])
        elif c < 18:
            opts = []
            for _ in range(r.choice([0, 0, 1, 1, 2, 3])):
                o = r.choice([b"RANK", b"COUNT", b"MAXLEN", b"rank", b"BOGUS"])
                opts += [o, r.choice([0, 1, 2, -1, -2, 3, 10, b"x"])]
            if r.random() < 0.05:
                opts.append(b"RANK")
            yield ("cmd", [b"LPOS", k, self._lel()] + opts)
        elif c < 20:
            yield ("cmd", [b"LMOVE", k, self._lkey(), r.choice([b"LEFT", b"RIGHT", b"left", b"UP"]),
                           r.choice([b"LEFT", b"RIGHT", b"right"])])
        elif c == 20:
            yield ("cmd", [b"RPOPLPUSH", k, self._lkey()])
        elif c < 23:
            n = r.choice([1, 1, 2, 3, 0, -1, b"x", 5])
            keys = [self._lkey() for _ in range(r.randint(1, 3))]
            tail = [r.choice([b"LEFT", b"RIGHT", b"right", b"NONE"])]
            if r.random() < 0.5:
                tail += [b"COUNT", r.choice([1, 2, 3, 10, 0, -1, b"x"])]
            if r.random() < 0.05:
                tail += [r.choice([b"COUNT", b"junk"])]
            yield ("cmd", [b"LMPOP", n] + keys + tail)
        elif c == 23:
            yield ("cmd", [b"SET", b"s0", self.val()])
        elif c == 24:
            yield ("cmd", [b"DEL", k])
        elif c == 25:
            yield ("cmd", r.choice([[b"LPUSH", k], [b"LPOP"], [b"LRANGE", k, 0], [b"LINSERT", k, b"BEFORE", b"a"],
                                    [b"LMOVE", k, k, b"LEFT"], [b"LMPOP", 1], [b"LPOS", k], [b"LSET", k, 0],
                                    [b"LLEN", k, k], [b"RPOPLPUSH", k]]))
        elif c == 26:
            yield ("cmd", [b"TYPE", k])
        elif c == 27:
            yield ("cmd", [b"EXISTS", k])
        else:
            yield ("cmd", [b"LRANGE", k, 0, -1])


    # == blocking family (kv_list's blocking pops, BZPOPMIN/MAX) ===========================
    #
    # Clients block on a few list (and sorted-set) keys, writes serve them: who is served, in
    # which order (FIFO per key, the key that became ready), from which end, BLMOVE chains,
    # pushes inside MULTI, timeouts, the non-blocking form inside MULTI, and every error.
    _B_KEYS = [b"bl0", b"bl1", b"bl2"]
    _B_ZKEYS = [b"bz0", b"bz1"]

    def _b_cmd(self, timeout: bytes, zset: bool):
        r = self.r
        if zset:
            ks = r.sample(self._B_ZKEYS, r.randint(1, 2))
            c = r.random()
            if c < 0.6:
                return [r.choice([b"BZPOPMIN", b"BZPOPMAX"]), *ks, timeout]
            return [b"BZMPOP", timeout, b"%d" % len(ks), *ks, r.choice([b"MIN", b"MAX"]),
                    *r.choice([[], [b"COUNT", r.choice([b"1", b"2", b"5"])]])]
        ks = r.sample(self._B_KEYS, r.randint(1, 3))
        c = r.random()
        if c < 0.45:
            return [r.choice([b"BLPOP", b"BRPOP"]), *ks, timeout]
        if c < 0.7:
            return [b"BLMOVE", ks[0], r.choice(self._B_KEYS + [b"bs"]), r.choice([b"LEFT", b"RIGHT"]),
                    r.choice([b"LEFT", b"RIGHT"]), timeout]
        if c < 0.8:
            return [b"BRPOPLPUSH", ks[0], r.choice(self._B_KEYS), timeout]
        return [b"BLMPOP", timeout, b"%d" % len(ks), *ks, r.choice([b"LEFT", b"RIGHT"]),
                *r.choice([[], [b"COUNT", r.choice([b"1", b"2", b"3"])]])]

    def _b_push(self, zset: bool):
        r = self.r
        if zset:
            return [b"ZADD", r.choice(self._B_ZKEYS), *[x for _ in range(r.randint(1, 3))
                                                        for x in (b"%d" % r.randint(0, 9), b"m%d" % r.randint(0, 20))]]
        return [r.choice([b"LPUSH", b"RPUSH"]), r.choice(self._B_KEYS),
                *[b"e%d" % r.randint(0, 99) for _ in range(r.randint(1, 3))]]

    def g_blocking(self):
        r = self.r
        zsets = b"BZPOPMIN" in _REGISTERED
        c = r.random()
        if c < 0.15:     # setup: change the keys without anybody blocked
            k = r.choice(self._B_KEYS + self._B_ZKEYS)
            yield ("cmd", r.choice([[b"DEL", k], [b"RPUSH", r.choice(self._B_KEYS), b"s%d" % r.randint(0, 9)],
                                    [b"LPOP", r.choice(self._B_KEYS)], [b"SET", b"bs", b"str"],
                                    [b"LRANGE", r.choice(self._B_KEYS), b"0", b"-1"]]))
        elif c < 0.3:    # errors and immediate answers (data there, wrong type, bad arguments)
            bad = r.choice([b"-1", b"abc", b"inf", b"1e400", b"", b"-1.5"])   # never 0 or -0.001: forever, as in Redis
            cmd = self._b_cmd(r.choice([b"0.05", bad]), zsets and r.random() < 0.3)
            if r.random() < 0.2:
                cmd = cmd[:1] + [b"bs"] + cmd[2:]
            if r.random() < 0.1:
                cmd = cmd[:r.randint(1, 2)]
            if r.random() < 0.1 and cmd[0] in (b"BLMPOP", b"BZMPOP") and len(cmd) > 2:
                cmd[2] = r.choice([b"0", b"-1", b"x", b"9"])
            yield ("block", (0, cmd))
            yield ("wake", 0)
        elif c < 0.4:    # the non-blocking form inside MULTI
            yield ("cmd", [b"MULTI"])
            for _ in range(r.randint(1, 3)):
                yield ("cmd", r.choice([self._b_cmd(b"0", zsets and r.random() < 0.3), self._b_push(False)]))
            yield ("cmd", [b"EXEC"])
        else:            # clients block, writes serve them
            m = r.randint(1, 3)
            waiting = []
            for i in range(m):
                cmd = self._b_cmd(b"3", zsets and r.random() < 0.3)
                yield ("block", (i, cmd))
                waiting.append((i, cmd))
            for _ in range(r.randint(0, 3)):
                c2 = r.random()
                if c2 < 0.5:
                    yield ("cmd", self._b_push(zsets and r.random() < 0.3))
                elif c2 < 0.65:
                    k = r.choice(self._B_KEYS)
                    yield ("cmd", [b"MULTI"])
                    yield ("cmd", [b"RPUSH", k, b"t1", b"t2"])
                    yield ("cmd", r.choice([[b"LPOP", k], [b"RPUSH", r.choice(self._B_KEYS), b"t3"], [b"DEL", k]]))
                    yield ("cmd", [b"EXEC"])
                elif c2 < 0.75:
                    yield ("cmd", [b"LMOVE", r.choice(self._B_KEYS), r.choice(self._B_KEYS), b"LEFT", b"RIGHT"])
                elif c2 < 0.85:
                    yield ("cmd", [b"RENAME", r.choice(self._B_KEYS), r.choice(self._B_KEYS)])
                else:
                    yield ("cmd", [b"LRANGE", r.choice(self._B_KEYS), b"0", b"-1"])
            # then enough for everybody still waiting, in one go, and read every answer
            for i, cmd in waiting:
                z = cmd[0].startswith(b"BZ")
                keys = cmd[1:-1] if cmd[0] in (b"BLPOP", b"BRPOP", b"BZPOPMIN", b"BZPOPMAX") else \
                    [cmd[1]] if cmd[0] in (b"BLMOVE", b"BRPOPLPUSH") else cmd[3:3 + int(cmd[2])]
                for k in keys:
                    if k == b"bs":
                        continue
                    yield ("cmd", [b"ZADD", k, b"1", b"f%d" % i] if z else [b"RPUSH", k, b"f%d" % i])
            for i, _ in waiting:
                yield ("wake", i)

    # == sets family (kv_set) ==============================================================
    #
    # Keys s0..s3 (sets, sometimes a string), si (integer members only: a Redis intset, which
    # SSCAN returns whole whatever the cursor), sx (a string).  Random picks are compared by shape
    # (count, distinctness, membership of the member pool) and the key they changed is then
    # emptied (SPOP with a count >= its size, or DEL), so both servers hold the same sets again.
    _S_KEYS = [b"s0", b"s1", b"s2", b"s3"]
    _S_MEMBERS = [b"a", b"b", b"c", b"d", b"e", b"f", b"1", b"2", b"10", b"-3", b"007", b"",
                  b"hello world", b"\xff\xfe", b"x" * 70, b"9223372036854775807"]
    _S_INTS = [b"1", b"2", b"3", b"-5", b"100", b"0", b"42", b"9223372036854775807"]
    _S_ALL = frozenset(_S_MEMBERS) | frozenset(_S_INTS)

    @staticmethod
    def _s_sorted(rep):
        t, v = rep
        return (t, sorted(x[1] for x in v)) if t == "*" and v is not None else rep

    @staticmethod
    def _s_scan(rep):
        t, v = rep
        if t != "*":
            return rep
        return (v[0][1], sorted(x[1] for x in v[1][1]))

    def _s_pick(self, count, whole=True):
        """norm of a random pick (SPOP/SRANDMEMBER) of `count` (None: one member); whole: a
        reply shorter than count is the whole set, compared exactly (False after a random pop
        left the two servers with different members)."""
        pool = self._S_ALL

        def norm(rep):
            t, v = rep
            if t != "*" or v is None:
                return (t, v is None or v in pool)
            got = [x[1] for x in v]
            if count is None:
                return ("array", len(got), ok)
            ok = all(x in pool for x in got)
            if whole and count >= 0 and len(got) < count:
                return ("whole", sorted(got), ok)
            return ("part", len(got), ok, count < 0 or len(set(got)) == len(got))
        return norm

    def _s_members(self, n=None):
        return [self.r.choice(self._S_MEMBERS) for _ in range(n or self.r.randint(1, 4))]

    def g_sets(self):
        r = self.r
        c = r.randrange(30)
        k = r.choice(self._S_KEYS)
        ks = [r.choice(self._S_KEYS + [b"si", b"sx", b"nokey"]) for _ in range(r.randint(1, 3))]
        srt = self._s_sorted
        if c < 5:
            yield ("cmd", [b"SADD", k] + self._s_members())
        elif c == 5:
            yield ("cmd", [b"SREM", k] + self._s_members())
        elif c == 6:
            yield ("cmd", [b"SMEMBERS", r.choice(ks)], srt)
        elif c == 7:
            yield ("cmd", [b"SISMEMBER", r.choice(ks), r.choice(self._S_MEMBERS)])
        elif c == 8:
            yield ("cmd", [b"SMISMEMBER", r.choice(ks)] + self._s_members())
        elif c == 9:
            yield ("cmd", [b"SCARD", r.choice(ks)])
        elif c == 10:
            # a random pop, then the key emptied: both servers agree again
            n = r.choice([None, 0, 1, 2, 3, 5])
            yield ("cmd", [b"SPOP", k] + ([] if n is None else [n]), self._s_pick(n))
            yield ("cmd", [b"SCARD", k])
            yield ("cmd", [b"SPOP", k, 100], self._s_pick(100, False)) if r.random() < 0.5 else ("cmd", [b"DEL", k])
        elif c == 11:
            yield ("cmd", [b"SPOP", k, r.choice([30, 100, 9223372036854775807])], srt)   # > any set here
        elif c == 12:
            n = r.choice([None, 0, 1, 2, 3, 5, 20, 100, -1, -3, -20])
            yield ("cmd", [b"SRANDMEMBER", r.choice(ks)] + ([] if n is None else [n]), self._s_pick(n))
        elif c == 13:
            yield ("cmd", [b"SMOVE", k, r.choice(self._S_KEYS + [b"sx", b"nokey", k]), r.choice(self._S_MEMBERS)])
        elif c == 14:
            yield ("cmd", [r.choice([b"SINTER", b"SUNION", b"SDIFF"])] + ks, srt)
        elif c == 15:
            opt = r.choice([[], [], [b"LIMIT", r.choice([0, 1, 2, 3, 100])], [b"limit", 1, b"LIMIT", 0]])
            yield ("cmd", [b"SINTERCARD", len(ks)] + ks + opt)
        elif c == 16:
            dst = r.choice(self._S_KEYS + [b"sx"])
            yield ("cmd", [r.choice([b"SINTERSTORE", b"SUNIONSTORE", b"SDIFFSTORE"]), dst] + ks)
            if r.random() < 0.3:
                yield ("cmd", [b"TTL", dst])
            if r.random() < 0.2:
                yield ("cmd", [b"DEL", b"nokey"])
        elif c == 17:
            opts = [b"COUNT", r.choice([50, 100, 1000])]
            if r.random() < 0.4:
                opts = [b"MATCH", r.choice([b"*", b"?", b"[a-c]", b"*e*", b"1*", b"x*"])] + opts
            if r.random() < 0.2:
                r.shuffle(opts) if len(opts) == 4 else None
            yield ("cmd", [b"SSCAN", r.choice(ks), 0] + opts, self._s_scan)
        elif c == 18:
            # the intset key: integer members only
            x = r.randrange(6)
            if x < 3:
                yield ("cmd", [b"SADD", b"si"] + [r.choice(self._S_INTS) for _ in range(r.randint(1, 3))])
            elif x == 3:
                yield ("cmd", [b"SREM", b"si", r.choice(self._S_INTS)])
            elif x == 4:
                yield ("cmd", [b"SSCAN", b"si", r.choice([0, 1, 7, 12345, b"18446744073709551615"]),
                               b"COUNT", r.choice([1, 2, 10])], self._s_scan)
            else:
                n = r.choice([1, 2])
                yield ("cmd", [b"SPOP", b"si", n], self._s_pick(n))
                yield ("cmd", [b"SPOP", b"si", 50], self._s_pick(50, False))
        elif c == 19:
            yield ("cmd", r.choice([
                [b"SSCAN", k, b"x"], [b"SSCAN", k, b" 1"], [b"SSCAN", k, b"-1", b"COUNT", 0],
                [b"SSCAN", k, 0, b"COUNT", 0], [b"SSCAN", k, 0, b"COUNT", b"abc"],
                [b"SSCAN", k, 0, b"TYPE", b"set"], [b"SSCAN", k, 0, b"COUNT"], [b"SSCAN", k, 0, b"MATCH"],
                [b"SSCAN", b"sx", 0], [b"SSCAN", b"sx", b"abc"], [b"SSCAN", b"nokey", 0, b"BAD"],
                [b"SSCAN", k, b"18446744073709551616"], [b"SSCAN", k, b"", b"COUNT", 100]]),
                self._s_scan)
        elif c == 20:
            cmd = r.choice([
                [b"SPOP", k, -1], [b"SPOP", k, b"abc"], [b"SPOP", k, 1, 2], [b"SPOP", b"sx", 0],
                [b"SRANDMEMBER", b"sx"], [b"SRANDMEMBER", k, b"abc"], [b"SRANDMEMBER", k, 1, 2],
                [b"SRANDMEMBER", k, -9223372036854775808], [b"SRANDMEMBER", b"sx", 0],
                [b"SRANDMEMBER", k, b"007"], [b"SPOP", k, b"1.5"], [b"SPOP", b"nokey"],
                [b"SPOP", b"nokey", 3], [b"SRANDMEMBER", b"nokey"], [b"SRANDMEMBER", b"nokey", -3]])
            yield ("cmd", cmd, self._s_pick(cmd[2] if len(cmd) == 3 and type(cmd[2]) is int else None))
            if cmd[:2] == [b"SPOP", b"nokey"]:
                yield ("cmd", [b"DEL", b"nokey"])
        elif c == 21:
            yield ("cmd", r.choice([
                [b"SINTERCARD", 0, k], [b"SINTERCARD", -1, k], [b"SINTERCARD", b"abc", k],
                [b"SINTERCARD", 3, k, k], [b"SINTERCARD", 1, k, b"LIMIT"], [b"SINTERCARD", 1, k, b"LIMIT", -1],
                [b"SINTERCARD", 1, k, b"LIMIT", b"x"], [b"SINTERCARD", 1, k, b"FOO", 1],
                [b"SINTERCARD", 2, k, b"sx"], [b"SINTERCARD", 1], [b"SINTERCARD", 9223372036854775808, k]]))
        elif c == 22:
            yield ("cmd", r.choice([
                [b"SADD", k], [b"SREM", k], [b"SMEMBERS"], [b"SMEMBERS", k, k], [b"SISMEMBER", k],
                [b"SMISMEMBER", k], [b"SCARD"], [b"SPOP"], [b"SRANDMEMBER"], [b"SMOVE", k, k],
                [b"SINTER"], [b"SUNION"], [b"SDIFF"], [b"SINTERSTORE", k], [b"SUNIONSTORE", k],
                [b"SDIFFSTORE", k], [b"SSCAN", k], [b"SADD", b"sx", b"a"], [b"SREM", b"sx", b"a"],
                [b"SISMEMBER", b"sx", b"a"], [b"SMISMEMBER", b"sx", b"a"], [b"SCARD", b"sx"],
                [b"SMEMBERS", b"sx"], [b"SMOVE", b"sx", k, b"a"], [b"SMOVE", b"nokey", b"sx", b"a"]]), srt)
        elif c == 23:
            yield ("cmd", [b"SET", r.choice([b"sx", b"sx", k]), self.val()])
        elif c == 24:
            yield ("cmd", [b"EXPIRE", k, r.randint(100, 10000)])
            yield ("cmd", [b"TTL", k])
        elif c == 25:
            yield ("cmd", [r.choice([b"TYPE", b"EXISTS"]), r.choice(ks)])
        elif c == 26:
            yield ("cmd", [b"DEL", k])
        elif c == 27:
            # a known set: what SPOP / SRANDMEMBER pick must come from it
            known = self._s_members(5)
            yield ("cmd", [b"DEL", b"sk"])
            yield ("cmd", [b"SADD", b"sk"] + known)
            pool = frozenset(known)
            n = r.choice([1, 2, 3])
            yield ("cmd", [r.choice([b"SPOP", b"SRANDMEMBER"]), b"sk", n],
                   lambda rep, pool=pool, n=n: (rep[0], len(rep[1]) == min(n, len(pool)) and
                                               set(x[1] for x in rep[1]) <= pool))
            yield ("cmd", [b"SPOP", b"sk"], lambda rep, pool=pool: (rep[0], rep[1] is None or rep[1] in pool))
            yield ("cmd", [b"SPOP", b"sk", 10], lambda rep, pool=pool: (rep[0], set(x[1] for x in rep[1]) <= pool))
            yield ("cmd", [b"EXISTS", b"sk"])
        elif c == 28:
            yield ("cmd", [b"MULTI"])
            yield ("cmd", [b"SADD", k] + self._s_members())
            yield ("cmd", [b"SCARD", k])
            yield ("cmd", [b"SUNIONSTORE", r.choice(self._S_KEYS), k] + ks)
            yield ("cmd", [b"EXEC"])
        else:
            yield ("cmd", [b"SMOVE", r.choice(self._S_KEYS + [b"si"]), r.choice(self._S_KEYS), r.choice(self._S_INTS)])


    # == zsets family (kv_zset) ============================================================
    #
    # Keys z0..z3 (sorted sets, sometimes a string), zl (every score 0: the lex commands' key, in
    # lex order whatever its encoding), zs (a set: a valid input of ZUNION & co), zx (a string).
    # A member of 70 bytes turns a zset into a skiplist.  Random picks (ZRANDMEMBER) are compared
    # by shape; ZSCAN with a large COUNT from cursor 0 as a sorted list of pairs.
    _Z_KEYS = [b"z0", b"z1", b"z2", b"z3"]
    _Z_MEMBERS = [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"1", b"10", b"", b"\xff", b"x" * 70]
    _Z_SCORES = [b"0", b"1", b"2", b"-1", b"3.5", b"-2.25", b"1e3", b"0.1", b"0.2", b"inf", b"-inf",
                 b"+inf", b"-0", b"1e-310", b"0x10", b"100", b"7"]
    _Z_BAD_SCORES = [b"abc", b"nan", b"", b" 1", b"1 ", b"1e400", b"1e-400", b"(1", b"--1", b"inf1"]
    _Z_BOUNDS = [b"-inf", b"+inf", b"inf", b"0", b"1", b"(1", b"(0", b"2", b"(3.5", b"-1", b"100",
                 b"(-inf", b"(+inf", b"", b"(", b" 5", b"0x2", b"1e400"]
    _Z_BAD_BOUNDS = [b"abc", b"((1", b"1 ", b"nan", b"(nan", b"[1"]
    _Z_LEX = [b"-", b"+", b"[a", b"(a", b"[c", b"(c", b"[", b"(", b"[e", b"(g", b"[10", b"[\xff", b"(b"]
    _Z_BAD_LEX = [b"a", b"", b"+a", b"-a", b"{a"]

    def _z_member(self):
        return self.r.choice(self._Z_MEMBERS[:-1]) if self.r.random() < 0.97 else self._Z_MEMBERS[-1]

    def _z_pairs(self, n=None):
        out = []
        for _ in range(n or self.r.randint(1, 3)):
            out += [self.r.choice(self._Z_SCORES), self._z_member()]
        return out

    def _z_bound(self):
        return self.r.choice(self._Z_BOUNDS) if self.r.random() < 0.95 else self.r.choice(self._Z_BAD_BOUNDS)

    def _z_lex(self):
        return self.r.choice(self._Z_LEX) if self.r.random() < 0.93 else self.r.choice(self._Z_BAD_LEX)

    @staticmethod
    def _z_scan(rep):
        t, v = rep
        if t != "*":
            return rep
        flat = [x[1] for x in v[1][1]]
        return (v[0][1], sorted(zip(flat[0::2], flat[1::2])))

    @staticmethod
    def _z_rand(count, withscores):
        def norm(rep):
            t, v = rep
            if t != "*" or v is None:
                return (t, v is None)
            if withscores:
                v = flat_pairs(rep)[1]
            n = len(v) // 2 if withscores else len(v)
            if count is not None and count > 0:
                return ("distinct", n, len({x[1] for x in (v[0::2] if withscores else v)}))
            return ("picks", n)
        return norm

    def _z_limit(self):
        r = self.r
        return [b"LIMIT", r.choice([0, 1, 2, -1, 5]), r.choice([-1, 0, 1, 2, 3, -5])]

    def g_zsets(self):
        r = self.r
        c = r.randrange(34)
        k = r.choice(self._Z_KEYS)
        ks = [r.choice(self._Z_KEYS + [b"zs", b"zl", b"nokey"]) for _ in range(r.randint(1, 3))]
        if c < 5:
            opts = []
            for f in (b"NX", b"XX", b"CH", b"GT", b"LT", b"INCR"):
                if r.random() < 0.12:
                    opts.append(f if r.random() < 0.8 else f.lower())
            pairs = self._z_pairs(1 if b"INCR" in opts and r.random() < 0.8 else None)
            if r.random() < 0.04:
                pairs[0] = r.choice(self._Z_BAD_SCORES)
            if r.random() < 0.03:
                pairs = pairs[:-1]
            yield ("cmd", [b"ZADD", r.choice([k, k, k, b"zx"])] + opts + pairs)
        elif c == 5:
            yield ("cmd", [b"ZINCRBY", r.choice([k, k, b"zx"]),
                           r.choice(self._Z_SCORES + self._Z_BAD_SCORES[:3]), self._z_member()])
        elif c == 6:
            yield ("cmd", [b"ZREM", r.choice(ks)] + [self._z_member() for _ in range(r.randint(1, 3))])
        elif c == 7:
            yield ("cmd", [r.choice([b"ZSCORE", b"ZRANK", b"ZREVRANK"]), r.choice(ks), self._z_member()])
        elif c == 8:
            yield ("cmd", [b"ZMSCORE", r.choice(ks)] + [self._z_member() for _ in range(r.randint(1, 3))])
        elif c == 9:
            yield ("cmd", [b"ZCARD", r.choice(ks)])
            yield ("cmd", [b"ZCOUNT", r.choice(ks), self._z_bound(), self._z_bound()])
        elif c == 10:
            yield ("cmd", [b"ZLEXCOUNT", r.choice([b"zl", b"zl", b"nokey", b"zx"]), self._z_lex(), self._z_lex()])
        elif c == 11:
            args = [b"ZRANGE", r.choice(ks), r.choice([0, 1, -1, -2, 2, 100, -100, b"x"]),
                    r.choice([0, 1, -1, -2, 3, 100, -100])]
            if r.random() < 0.4:
                args.append(b"WITHSCORES")
            if r.random() < 0.3:
                args.append(b"REV")
            if r.random() < 0.1:
                args += [b"LIMIT", 0, r.choice([-1, 1])]
            yield ("cmd", args)
        elif c == 12:
            args = [b"ZRANGE", r.choice(ks), self._z_bound(), self._z_bound(), b"BYSCORE"]
            if r.random() < 0.4:
                args.append(b"REV")
            if r.random() < 0.4:
                args += self._z_limit()
            if r.random() < 0.4:
                args.append(b"WITHSCORES")
            r.shuffle(args[4:]) if r.random() < 0.3 else None
            yield ("cmd", args)
        elif c == 13:
            args = [b"ZRANGE", r.choice([b"zl", b"zl", b"nokey", b"zx"]), self._z_lex(), self._z_lex(), b"BYLEX"]
            if r.random() < 0.4:
                args.append(b"REV")
            if r.random() < 0.4:
                args += self._z_limit()
            if r.random() < 0.05:
                args.append(b"WITHSCORES")
            yield ("cmd", args)
        elif c == 14:
            name = r.choice([b"ZRANGEBYSCORE", b"ZREVRANGEBYSCORE"])
            args = [name, r.choice(ks), self._z_bound(), self._z_bound()]
            if r.random() < 0.4:
                args.append(b"WITHSCORES")
            if r.random() < 0.4:
                args += self._z_limit()
            if r.random() < 0.05:
                args.append(r.choice([b"REV", b"BYSCORE", b"BYLEX", b"LIMIT"]))
            yield ("cmd", args)
        elif c == 15:
            name = r.choice([b"ZRANGEBYLEX", b"ZREVRANGEBYLEX"])
            args = [name, r.choice([b"zl", b"zl", b"nokey", b"zx"]), self._z_lex(), self._z_lex()]
            if r.random() < 0.4:
                args += self._z_limit()
            if r.random() < 0.05:
                args.append(r.choice([b"REV", b"WITHSCORES", b"BYLEX"]))
            yield ("cmd", args)
        elif c == 16:
            args = [b"ZREVRANGE", r.choice(ks), r.choice([0, 1, -1, -3]), r.choice([0, 2, -1, -2])]
            if r.random() < 0.4:
                args.append(b"WITHSCORES")
            if r.random() < 0.05:
                args.append(r.choice([b"REV", b"BYSCORE"]))
            yield ("cmd", args)
        elif c == 17:
            dst = r.choice(self._Z_KEYS + [b"zd"])
            x = r.randrange(3)
            if x == 0:
                args = [b"ZRANGESTORE", dst, r.choice(ks), r.choice([0, 1, -2]), r.choice([-1, 1, 3])]
            elif x == 1:
                args = [b"ZRANGESTORE", dst, r.choice(ks), self._z_bound(), self._z_bound(), b"BYSCORE"]
                if r.random() < 0.4:
                    args += self._z_limit()
            else:
                args = [b"ZRANGESTORE", dst, r.choice([b"zl", b"nokey"]), self._z_lex(), self._z_lex(), b"BYLEX"]
            if r.random() < 0.3:
                args.append(b"REV")
            if r.random() < 0.05:
                args.append(b"WITHSCORES")
            yield ("cmd", args)
            yield ("cmd", [b"ZRANGE", dst, 0, -1, b"WITHSCORES"])
        elif c == 18:
            name = r.choice([b"ZPOPMIN", b"ZPOPMAX"])
            n = r.choice([None, None, 0, 1, 2, 5, -1, b"x"])
            yield ("cmd", [name, r.choice(ks)] + ([] if n is None else [n]))
        elif c == 19:
            opt = [] if r.random() < 0.5 else [b"COUNT", r.choice([1, 2, 10, 0, -1])]
            yield ("cmd", [b"ZMPOP", len(ks)] + ks + [r.choice([b"MIN", b"MAX", b"max", b"FOO"])] + opt)
        elif c == 20:
            x = r.randrange(3)
            if x == 0:
                yield ("cmd", [b"ZREMRANGEBYRANK", r.choice(ks), r.choice([0, 1, -1, -2, b"x"]), r.choice([0, 1, -1, -3])])
            elif x == 1:
                yield ("cmd", [b"ZREMRANGEBYSCORE", r.choice(ks), self._z_bound(), self._z_bound()])
            else:
                yield ("cmd", [b"ZREMRANGEBYLEX", r.choice([b"zl", b"nokey", b"zx"]), self._z_lex(), self._z_lex()])
        elif c in (21, 22):
            name = r.choice([b"ZUNION", b"ZINTER", b"ZDIFF", b"ZUNIONSTORE", b"ZINTERSTORE", b"ZDIFFSTORE"])
            store = name.endswith(b"STORE")
            dst = r.choice(self._Z_KEYS + [b"zd"])
            opts = []
            if r.random() < 0.4:
                opts += [b"WEIGHTS"] + [r.choice([b"1", b"2", b"-1", b"0", b"0.5", b"inf", b"-inf", b"x"][:7 if r.random() < 0.95 else 8]) for _ in ks]
            if r.random() < 0.4:
                opts += [b"AGGREGATE", r.choice([b"SUM", b"MIN", b"MAX", b"max", b"avg"][:4 if r.random() < 0.95 else 5])]
            if not store and r.random() < 0.5:
                opts.append(b"WITHSCORES")
            if r.random() < 0.1:
                r.shuffle(opts)
            n = len(ks) if r.random() < 0.95 else r.choice([0, -1, len(ks) + 1, b"x"])
            yield ("cmd", [name] + ([dst] if store else []) + [n] + ks + opts)
            if store:
                yield ("cmd", [b"ZRANGE", dst, 0, -1, b"WITHSCORES"])
        elif c == 23:
            opt = [] if r.random() < 0.6 else [b"LIMIT", r.choice([0, 1, 2, -1, b"x"])]
            n = len(ks) if r.random() < 0.95 else r.choice([0, len(ks) + 1])
            yield ("cmd", [b"ZINTERCARD", n] + ks + opt)
        elif c == 24:
            n = r.choice([None, 0, 1, 2, 3, 20, -1, -3, -10])
            ws = n is not None and r.random() < 0.4
            yield ("cmd", [b"ZRANDMEMBER", r.choice(ks)] + ([] if n is None else [n]) + ([b"WITHSCORES"] if ws else []),
                   self._z_rand(n, ws))
        elif c == 25:
            opts = [b"COUNT", 1000]
            if r.random() < 0.4:
                opts = [b"MATCH", r.choice([b"*", b"?", b"[a-c]", b"1*", b"x*"])] + opts
            yield ("cmd", [b"ZSCAN", r.choice(ks), 0] + opts, self._z_scan)
        elif c == 26:
            yield ("cmd", r.choice([
                [b"ZADD", k, b"NX", b"XX", 1, b"a"], [b"ZADD", k, b"GT", b"LT", 1, b"a"], [b"ZADD", k, b"GT", b"NX", 1, b"a"],
                [b"ZADD", k, b"LT", b"NX", 1, b"a"], [b"ZADD", k, b"INCR", 1, b"a", 2, b"b"], [b"ZADD", k, b"XX"],
                [b"ZADD", k, b"CH", b"1"], [b"ZADD", k, 1, b"a", 2], [b"ZADD", k, b"INCR", b"-inf", b"a"],
                [b"ZADD", k, b"INCR", b"inf", b"a"], [b"ZADD", k, b"XX", b"INCR", 1, b"zz"], [b"ZADD", b"zx", b"x", b"a"],
                [b"ZRANGE", k, 0, 1, b"LIMIT", 0, 1], [b"ZRANGE", k, 0, 1, b"BYSCORE", b"BYLEX"], [b"ZRANGE", k, 0, 1, b"REV", b"REV"],
                [b"ZRANGE", k, b"-", b"+", b"BYLEX", b"WITHSCORES"], [b"ZRANGE", k, 0, 1, b"LIMIT", 0], [b"ZRANGE", k, 0, 1, b"FOO"],
                [b"ZRANGESTORE", b"zd", k, 0, -1, b"WITHSCORES"], [b"ZREVRANGE", k, 0, -1, b"LIMIT", 0, 1],
                [b"ZPOPMIN", k, 1, 2], [b"ZMPOP", 0, k, b"MIN"], [b"ZMPOP", 2, k, b"MIN"], [b"ZMPOP", 1, k, b"MIN", b"COUNT", 1, b"COUNT", 1],
                [b"ZMPOP", b"x", k, b"MIN"], [b"ZMPOP", 1, k, b"MIN", b"COUNT"], [b"ZUNIONSTORE", b"zd", 0, k],
                [b"ZUNION", 1, k, b"WEIGHTS"], [b"ZUNION", 1, k, b"WEIGHTS", 1, 2], [b"ZUNION", 1, k, b"AGGREGATE"],
                [b"ZDIFF", 1, k, b"WEIGHTS", 1], [b"ZDIFF", 1, k, b"AGGREGATE", b"SUM"], [b"ZINTERSTORE", b"zd", 1, k, b"WITHSCORES"],
                [b"ZINTERCARD", 1, k, b"WEIGHTS", 1], [b"ZUNION", 2, k, b"zx"], [b"ZUNION", 2, b"zx", k, b"BAD"],
                [b"ZRANDMEMBER", k, 1, 2], [b"ZRANDMEMBER", k, 1, b"WITHSCORE"], [b"ZRANDMEMBER", k, b"x"],
                [b"ZRANDMEMBER", k, -9223372036854775808], [b"ZRANDMEMBER", k, -9223372036854775807, b"WITHSCORES"],
                [b"ZRANDMEMBER", k, 4611686018427387904, b"WITHSCORES"],
                [b"ZSCAN", k, b"x"], [b"ZSCAN", k, 0, b"COUNT", 0], [b"ZSCAN", k, 0, b"FOO"], [b"ZSCAN", b"zx", 0, b"FOO"],
                [b"ZSCAN", b"nokey", 0, b"FOO"], [b"ZSCAN", k, 0, b"COUNT", b"x"],
                [b"ZCOUNT", b"zx", b"x", 1], [b"ZREMRANGEBYRANK", b"zx", b"x", 1], [b"ZINCRBY", k, b"nan", b"a"]]))
        elif c == 27:
            yield ("cmd", r.choice([
                [b"ZADD", k], [b"ZADD", k, 1], [b"ZINCRBY", k, 1], [b"ZREM", k], [b"ZSCORE", k], [b"ZMSCORE", k],
                [b"ZCARD"], [b"ZCARD", k, k], [b"ZCOUNT", k, 1], [b"ZLEXCOUNT", k, b"-"], [b"ZRANGE", k, 0],
                [b"ZRANGEBYSCORE", k, 0], [b"ZREVRANGEBYSCORE", k], [b"ZRANGEBYLEX", k, b"-"], [b"ZREVRANGEBYLEX", k],
                [b"ZREVRANGE", k, 0], [b"ZRANGESTORE", k, k, 0], [b"ZRANK", k], [b"ZREVRANK", k, b"a", b"b"],
                [b"ZPOPMIN"], [b"ZPOPMAX"], [b"ZMPOP", 1, k], [b"ZREMRANGEBYSCORE", k, 1], [b"ZREMRANGEBYRANK", k],
                [b"ZREMRANGEBYLEX", k, b"-"], [b"ZUNIONSTORE", k, 1], [b"ZINTERSTORE", k], [b"ZDIFFSTORE", k, 1],
                [b"ZUNION", 1], [b"ZINTER", 1], [b"ZDIFF", 1], [b"ZINTERCARD", 1], [b"ZRANDMEMBER"], [b"ZSCAN", k],
                [b"ZSCORE", b"zx", b"a"], [b"ZRANK", b"zx", b"a"], [b"ZCARD", b"zx"], [b"ZRANGE", b"zx", 0, -1],
                [b"ZPOPMIN", b"zx"], [b"ZMPOP", 2, b"nokey", b"zx", b"MIN"], [b"ZREM", b"zx", b"a"], [b"ZMSCORE", b"zx", b"a"],
                [b"ZRANDMEMBER", b"zx"], [b"ZRANGESTORE", b"zd", b"zx", 0, -1], [b"ZINTERCARD", 2, k, b"zx"]]))
        elif c == 28:
            yield ("cmd", [b"SET", r.choice([b"zx", b"zx", b"zd", k]), self.val()])
        elif c == 29:
            x = r.randrange(4)
            if x < 2:
                yield ("cmd", [b"ZADD", b"zl"] + [y for _ in range(r.randint(1, 3)) for y in (b"0", self._z_member())])
            elif x == 2:
                yield ("cmd", [b"SADD", b"zs", r.choice(self._Z_MEMBERS[:6])])
            else:
                yield ("cmd", [b"ZRANGE", b"zl", 0, -1, b"WITHSCORES"])
        elif c == 30:
            yield ("cmd", [r.choice([b"TYPE", b"EXISTS"]), r.choice(ks)])
        elif c == 31:
            yield ("cmd", [b"DEL", r.choice(self._Z_KEYS + [b"zl", b"zd"])])
        elif c == 32:
            yield ("cmd", [b"MULTI"])
            yield ("cmd", [b"ZADD", k] + self._z_pairs())
            yield ("cmd", [b"ZINCRBY", k, b"1", self._z_member()])
            yield ("cmd", [b"ZUNIONSTORE", r.choice(self._Z_KEYS), len(ks)] + ks)
            yield ("cmd", [b"ZRANGE", k, 0, -1, b"WITHSCORES"])
            yield ("cmd", [b"EXEC"])
        elif r.random() < 0.3:
            # zb: more than 128 members, a skiplist (where a -0 score stays -0)
            pairs = [x for i in range(r.choice([120, 130])) for x in (str(r.choice([i, i / 4, -i])).encode(), b"m%d" % i)]
            yield ("cmd", [b"ZADD", b"zb"] + pairs)
            yield ("cmd", [b"ZADD", b"zb", b"-0", r.choice([b"m1", b"new"]), b"0", b"zero"])
            yield ("cmd", [b"ZINCRBY", b"zb", b"-0", b"m0"])
            yield ("cmd", [b"ZRANGEBYSCORE", b"zb", self._z_bound(), self._z_bound(), b"WITHSCORES"] + self._z_limit())
            yield ("cmd", [b"ZREVRANK", b"zb", b"m%d" % r.randrange(140)])
            yield ("cmd", [b"ZSCAN", b"zb", 0, b"COUNT", 1000], self._z_scan)
            yield ("cmd", [b"ZREMRANGEBYRANK", b"zb", r.randint(-5, 5), r.randint(-140, 20)])
            yield ("cmd", [r.choice([b"ZPOPMIN", b"ZPOPMAX"]), b"zb", r.choice([1, 3])])
            yield ("cmd", [b"ZRANGE", b"zb", 0, -1, b"WITHSCORES"])
            yield ("cmd", [b"ZUNIONSTORE", b"zd", 2, b"zb", k, b"WEIGHTS", b"-1", b"2"])
            yield ("cmd", [b"ZRANGE", b"zd", 0, -1, b"WITHSCORES"])
            if r.random() < 0.5:
                yield ("cmd", [b"DEL", b"zb"])
        else:
            yield ("cmd", [b"ZRANGE", k, 0, -1, b"WITHSCORES"])
            yield ("cmd", [b"ZCARD", k])


    # == bitmaps family (kv_strings: SETBIT GETBIT BITCOUNT BITPOS LCS) ====================
    #
    _B_KEYS = [b"b0", b"b1", b"b2"]
    _B_VALUES = [b"", b"0", b"1", b"9999", b"10000", b"-1", b"-0", b"007", b"+5", b"3.0", b"foobar",
                 b"\xff\xf0\x00", b"\x00\x00\x01", b"9223372036854775807", b"9223372036854775808",
                 b"-9223372036854775808", b"-9223372036854775809", b"12345678901234567890",
                 b"123456789012345678901", b"x" * 44, b"y" * 45, b"1" * 44, b"ab" * 30,
                 b"ohmytext", b"mynewtext", b"AGCTAGCATCGA" * 3]

    @staticmethod
    def _shape(rep):
        return rep[0]

    @staticmethod
    def _enc(rep):          # a hash's encoding is kv_hash's answer; a string's is compared exactly
        return ("$", b"<hash>") if rep[1] in (b"listpack", b"hashtable") else rep

    def _b_range(self):
        r = self.r
        x = r.random()
        if x < 0.15:
            return []
        out = [r.choice([0, 1, 2, -1, -2, -3, 5, -100, 100, b"x", b"1.5"]) if r.random() < 0.9 else r.randint(-40, 40)]
        if x < 0.3:
            return out           # start alone: BITCOUNT's syntax error, BITPOS's "no end"
        out.append(r.choice([0, 1, 2, -1, -2, 3, 7, 100, -100, b"y"]) if r.random() < 0.9 else r.randint(-40, 400))
        if r.random() < 0.4:
            out.append(r.choice([b"BIT", b"BYTE", b"bit", b"byte", b"BITS"]))
            if r.random() < 0.05:
                out.append(b"BIT")
        return out

    def g_bitmaps(self):
        r = self.r
        c = r.randrange(24)
        k = r.choice(self._B_KEYS)
        if c < 4:
            off = r.choice([r.randint(0, 70), r.randint(0, 70), r.randint(0, 300), 4294967296, -1, b"x", b"1.5",
                            b"99999999999999999999", r.randint(0, 24)])
            bit = r.choice([0, 1, 1, 0, 1, 2, -1, b"x", b"01", b" 1"])
            yield ("cmd", [b"SETBIT", k, off, bit])
        elif c < 6:
            yield ("cmd", [b"GETBIT", k, r.choice([r.randint(0, 70), r.randint(0, 300), 4294967295, 4294967296, -1, b"x"])])
        elif c < 8:
            yield ("cmd", [b"BITCOUNT", k] + self._b_range())
        elif c < 11:
            yield ("cmd", [b"BITPOS", k, r.choice([0, 1, 0, 1, 2, -1, b"x"])] + self._b_range())
        elif c < 13:
            opts = [r.choice([b"LEN", b"IDX", b"WITHMATCHLEN", b"MINMATCHLEN", b"idx", b"bogus"])
                    for _ in range(r.choice([0, 0, 1, 2, 3]))]
            if b"MINMATCHLEN" in opts and r.random() < 0.8:
                opts.insert(opts.index(b"MINMATCHLEN") + 1, r.choice([0, 1, 2, 4, -1, b"x"]))
            if r.random() < 0.3 and b"IDX" not in opts:
                opts = [b"IDX"] + opts
            yield ("cmd", [b"LCS", k, r.choice(self._B_KEYS + [b"bh"])] + opts)
        elif c < 15:
            vk = r.choice(self._B_KEYS)
            yield ("cmd", [r.choice([b"SET", b"SET", b"SETNX", b"GETSET"]), vk, r.choice(self._B_VALUES)])
            yield ("cmd", [b"OBJECT", b"ENCODING", vk], self._enc)
        elif c == 15:
            sub = r.choice([b"ENCODING", b"ENCODING", b"encoding", b"REFCOUNT", b"REFCOUNT", b"IDLETIME", b"FREQ",
                            b"HELP", b"bogus"])
            args = [b"OBJECT", sub, r.choice(self._B_KEYS + [b"bh"])]
            if sub == b"HELP" and r.random() < 0.8:
                args.pop()
            elif r.random() < 0.05:
                args = args[:r.choice([1, 2])] if r.random() < 0.5 else args + [b"extra"]
            norm = None
            if sub == b"IDLETIME":       # time-dependent (a shared integer's is the server's age)
                norm = self._shape
            elif sub.upper() == b"ENCODING":
                norm = self._enc
            yield ("cmd", args, norm) if norm else ("cmd", args)
        elif c == 16:
            yield ("cmd", [b"APPEND", k, r.choice(self._B_VALUES)])
            yield ("cmd", [b"OBJECT", b"ENCODING", k], self._enc)
        elif c == 17:
            yield ("cmd", [b"SETRANGE", k, r.choice([0, 1, 3, 9, -1, b"z", 536870912]), r.choice(self._B_VALUES)])
            yield ("cmd", [b"OBJECT", r.choice([b"ENCODING", b"REFCOUNT"]), k], self._enc)
        elif c == 18:
            yield ("cmd", [b"GETRANGE", k, r.randint(-6, 6), r.choice([r.randint(-6, 6), 100])])
            yield ("cmd", [b"STRLEN", k])
        elif c == 19:
            cmd = r.choice([[b"INCR", k], [b"INCRBY", k, r.choice([1, -3, 10000])], [b"DECR", k],
                            [b"INCRBYFLOAT", k, r.choice([b"1", b"0.5", b"1e3", b"-2"])]])
            yield ("cmd", cmd)
            yield ("cmd", [b"OBJECT", r.choice([b"ENCODING", b"REFCOUNT"]), k], self._enc)
        elif c == 20:
            if r.random() < 0.5:
                yield ("cmd", [b"HSET", b"bh", b"f", self.val()])
            else:                          # a hash at a bitmap key: WRONGTYPE
                yield ("cmd", [b"DEL", k])
                yield ("cmd", [b"HSET", k, b"f", b"v"])
        elif c == 21:
            yield ("cmd", [b"DEL", k] if r.random() < 0.7 else [b"MSET", k, r.choice(self._B_VALUES), r.choice(self._B_KEYS), b"\x0f"])
        elif c == 22:
            yield ("cmd", r.choice([[b"SETBIT", k, 1], [b"SETBIT", k, 1, 1, 1], [b"GETBIT", k], [b"GETBIT", k, 1, 2],
                                    [b"BITCOUNT"], [b"BITPOS", k], [b"LCS", k], [b"OBJECT"], [b"SETBIT"],
                                    [b"BITCOUNT", k, 0, 1, b"BIT", b"x"], [b"BITPOS", k, 1, 0, 1, b"BIT", b"x"],
                                    [b"BITCOUNT", b"bh", 0], [b"BITPOS", b"bh", 1, b"x"], [b"GETBIT", b"bh", b"x"],
                                    [b"SETBIT", b"bh", 1, 1], [b"GETBIT", b"bh", 1], [b"BITCOUNT", b"bh"],
                                    [b"BITPOS", b"bh", 0], [b"SETBIT", b"nokey", 7, 0], [b"BITPOS", b"nokey", 0, 3],
                                    [b"BITPOS", b"nokey", 1, 0, -1, b"BIT"], [b"BITCOUNT", b"nokey", b"x", b"y"]]))
        else:
            yield ("cmd", [b"GET", k])
            yield ("cmd", [b"TYPE", k])


    # == mixed-types family (every type, WRONGTYPE, TYPE/RENAME/COPY/SCAN TYPE) ============
    #
    # Keys m0..m3 are written by every type's writers (strings, hashes, lists, sets, and sorted
    # sets once ZADD is registered), so reads and writes meet WRONGTYPE all the time, also as
    # the second key of SINTER / SMOVE / LMOVE / LMPOP / ZUNIONSTORE.  The generic commands run
    # on every type: TYPE, EXISTS, DEL/UNLINK/TOUCH, RENAME/RENAMENX onto keys of other types,
    # COPY (a deep copy: the copy is changed, then the original read), the EXPIRE family on
    # containers (a write keeps the TTL, SET and a *STORE drop it, an emptied container takes it
    # with it), full SCAN iterations with TYPE, KEYS, DBSIZE, RANDOMKEY (compared as nil or not)
    # and OBJECT ENCODING once OBJECT is registered.  Commands of a type whose module is not
    # registered yet are not sent (the family runs before and after the sorted-set type lands).
    # GETSET / SET ... GET on containers (WRONGTYPE, nothing written) and INCRBYFLOAT on values
    # APPEND builds (1e312345678901234567890: "ERR value is not a valid float" at once) are in:
    # both once broke KV Store (a half-done write; an exponent expanded to a 10^20-digit number).
    _MX_KEYS = [b"m0", b"m1", b"m2", b"m3"]
    _MX_ELEMS = [b"a", b"b", b"c", b"1", b"2", b"", b"-3", b"xyz"]
    _MX_SCORES = [0, 1, -1, 2.5, b"-inf", b"+inf", 10, b"3e2", b"x"]
    _MX_HAVE = frozenset(__import__("kv_registry").SPECS)

    def _mx_key(self, missing: bool = True) -> bytes:
        return self.r.choice(self._MX_KEYS + ([b"mx"] if missing else []))

    def _mx_el(self) -> bytes:
        return self.r.choice(self._MX_ELEMS)

    def _mx_els(self, lo: int = 1, hi: int = 3) -> list:
        return [self._mx_el() for _ in range(self.r.randint(lo, hi))]

    @staticmethod
    def _mx_sorted(rep):
        """An unordered array (SMEMBERS, SINTER, HKEYS, ...) as its sorted members."""
        t, v = rep
        return (t, sorted(x[1] for x in v)) if t == "*" and v is not None else rep

    @staticmethod
    def _mx_pairs(rep):
        """HGETALL: a flat field/value array as its sorted pairs."""
        t, v = rep
        if t != "*" or v is None:
            return rep
        return (t, sorted((v[i][1], v[i + 1][1]) for i in range(0, len(v) - 1, 2)))

    def _mx_pick(self, ops: list, ordered: bool = False):
        """One of ops ((name, args-builder, norm) triples) whose command is registered;
        ordered: only those compared as they are (inside MULTI, where EXEC is compared whole)."""
        ops = [o for o in ops if o[0] in self._MX_HAVE and not (ordered and o[2] is not None)]
        name, build, norm = self.r.choice(ops)
        args = [name.encode()] + build()
        return ("cmd", args, norm) if norm is not None else ("cmd", args)

    def _mx_writer(self, k: bytes):
        r, el, els = self.r, self._mx_el, self._mx_els
        val = self.val
        return self._mx_pick([
            ("SET", lambda: [k, val()] + r.choice([[], [], [b"NX"], [b"XX"], [b"KEEPTTL"], [b"EX", r.randint(100, 1000)]]), None),
            ("APPEND", lambda: [k, val()], None),
            ("INCR", lambda: [k], None),
            ("SETRANGE", lambda: [k, r.choice([0, 2]), el()], None),
            ("SETNX", lambda: [k, val()], None),
            ("GETSET", lambda: [k, val()], None),
            ("SET", lambda: [k, val(), b"GET"] + r.choice([[], [b"NX"], [b"XX"]]), None),
            ("INCRBYFLOAT", lambda: [k, r.choice([b"1.5", b"-0.25", b"1e4932", b"1e99999999999", b"1e-4952"])], None),
            ("APPEND", lambda: [k, r.choice([b"e4931", b"e99999999999", b"0", b"e-4950"])], None),
            ("MSET", lambda: [k, val(), self._mx_key(), val()], None),
            ("MSETNX", lambda: [k, val(), self._mx_key(), val()], None),
            ("HSET", lambda: [k] + [x for _ in range(r.randint(1, 2)) for x in (el(), val())], None),
            ("HDEL", lambda: [k] + els(), None),
            ("HSETNX", lambda: [k, el(), val()], None),
            ("HINCRBY", lambda: [k, el(), r.choice([1, -2, b"x"])], None),
            ("LPUSH", lambda: [k] + els(), None),
            ("RPUSH", lambda: [k] + els(), None),
            ("LPUSHX", lambda: [k] + els(), None),
            ("LPOP", lambda: [k] + r.choice([[], [1], [5]]), None),
            ("RPOP", lambda: [k] + r.choice([[], [2]]), None),
            ("LSET", lambda: [k, r.choice([0, -1, 5]), el()], None),
            ("LREM", lambda: [k, r.choice([0, 1, -1]), el()], None),
            ("SADD", lambda: [k] + els(), None),
            ("SREM", lambda: [k] + els(), None),
            ("ZADD", lambda: [k] + [x for _ in range(r.randint(1, 2)) for x in (r.choice(self._MX_SCORES[:7]), el())], None),
            ("ZINCRBY", lambda: [k, r.choice([1, -2, b"x"]), el()], None),
            ("ZREM", lambda: [k] + els(), None),
            ("ZPOPMIN", lambda: [k] + r.choice([[], [2]]), None),
        ])

    def _mx_reader(self, k: bytes, ordered: bool = False):
        r, el, srt = self.r, self._mx_el, self._mx_sorted
        return self._mx_pick(ordered=ordered, ops=[
            ("GET", lambda: [k], None), ("STRLEN", lambda: [k], None),
            ("GETRANGE", lambda: [k, 0, -1], None), ("GETDEL", lambda: [k], None),
            ("GETEX", lambda: [k] + r.choice([[], [b"PERSIST"]]), None),
            ("MGET", lambda: [k, self._mx_key(), self._mx_key()], None),
            ("HGET", lambda: [k, el()], None), ("HLEN", lambda: [k], None),
            ("HGETALL", lambda: [k], self._mx_pairs), ("HMGET", lambda: [k, el(), el()], None),
            ("HEXISTS", lambda: [k, el()], None), ("HKEYS", lambda: [k], srt),
            ("HVALS", lambda: [k], srt), ("HSTRLEN", lambda: [k, el()], None),
            ("LLEN", lambda: [k], None), ("LRANGE", lambda: [k, 0, -1], None),
            ("LINDEX", lambda: [k, r.choice([0, -1, 3])], None), ("LPOS", lambda: [k, el()], None),
            ("SMEMBERS", lambda: [k], srt), ("SCARD", lambda: [k], None),
            ("SISMEMBER", lambda: [k, el()], None), ("SMISMEMBER", lambda: [k, el(), el()], None),
            ("ZRANGE", lambda: [k, 0, -1, b"WITHSCORES"], None), ("ZCARD", lambda: [k], None),
            ("ZSCORE", lambda: [k, el()], None), ("ZRANK", lambda: [k, el()], None),
        ])

    def _mx_multikey(self):
        r, srt = self.r, self._mx_sorted
        ks = lambda: [self._mx_key() for _ in range(r.randint(1, 3))]   # noqa: E731
        a, b = self._mx_key(), self._mx_key()
        side = lambda: r.choice([b"LEFT", b"RIGHT"])   # noqa: E731
        return self._mx_pick([
            ("SINTER", ks, srt), ("SUNION", ks, srt), ("SDIFF", ks, srt),
            ("SINTERCARD", lambda: (lambda x: [len(x)] + x)(ks()), None),
            ("SINTERSTORE", lambda: [a] + ks(), None), ("SUNIONSTORE", lambda: [a] + ks(), None),
            ("SDIFFSTORE", lambda: [a] + ks(), None),
            ("SMOVE", lambda: [a, b, self._mx_el()], None),
            ("LMOVE", lambda: [a, b, side(), side()], None),
            ("RPOPLPUSH", lambda: [a, b], None),
            ("LMPOP", lambda: (lambda x: [len(x)] + x + [side()] + r.choice([[], [b"COUNT", 2]]))(ks()), None),
            ("ZUNIONSTORE", lambda: (lambda x: [a, len(x)] + x)(ks()), None),
            ("ZINTERSTORE", lambda: (lambda x: [a, len(x)] + x)(ks()), None),
            ("ZDIFFSTORE", lambda: (lambda x: [a, len(x)] + x)(ks()), None),
            ("ZUNION", lambda: (lambda x: [len(x)] + x + [b"WITHSCORES"])(ks()), None),
            ("ZRANGESTORE", lambda: [a, b, 0, -1], None),
        ])

    def g_mixed(self):
        r = self.r
        c = r.randrange(40)
        k, k2 = self._mx_key(), self._mx_key()
        if c < 10:
            yield self._mx_writer(self._mx_key(missing=False))
        elif c < 15:
            yield self._mx_reader(k)
        elif c < 20:
            yield self._mx_multikey()
        elif c == 20:
            yield ("cmd", [b"TYPE", k])
        elif c == 21:
            yield ("cmd", [b"EXISTS"] + [self._mx_key() for _ in range(r.randint(1, 4))])
        elif c == 22:
            yield ("cmd", [r.choice([b"DEL", b"UNLINK", b"TOUCH"])] + [self._mx_key() for _ in range(r.randint(1, 3))])
        elif c == 23:
            yield ("cmd", [r.choice([b"RENAME", b"RENAMENX"]), k, k2])
            yield ("cmd", [b"TYPE", k2])
        elif c == 24:
            # a deep copy: change the copy (whatever its type), then read the original
            yield ("cmd", [b"COPY", k, k2] + r.choice([[], [b"REPLACE"], [b"DB", 0, b"REPLACE"]]))
            if k != k2:
                for name, args in ((b"RPUSH", [b"z"]), (b"SADD", [b"z"]), (b"HSET", [b"z", b"z"]),
                                   (b"APPEND", [b"z"]), (b"ZADD", [7, b"z"]), (b"LPOP", []), (b"SPOP", [9]),
                                   (b"HDEL", [b"a", b"b"])):
                    if name.decode() in self._MX_HAVE:
                        yield ("cmd", [name, k2] + args, self._mx_sorted if name == b"SPOP" else None)
                for name, norm in ((b"LRANGE", None), (b"SMEMBERS", self._mx_sorted), (b"HGETALL", self._mx_pairs),
                                   (b"GET", None), (b"ZRANGE", None)):
                    if name.decode() in self._MX_HAVE:
                        args = [name, k] + ([0, -1] if name in (b"LRANGE", b"ZRANGE") else [])
                        yield ("cmd", args + ([b"WITHSCORES"] if name == b"ZRANGE" else []), norm)
        elif c == 25:
            # a TTL on a container: writes keep it, SET / *STORE / emptying drop it
            yield ("cmd", [r.choice([b"EXPIRE", b"PEXPIRE"]), k,
                           r.randint(100, 10000) * (1 if r.random() < 0.5 else 1000)]
                   + r.choice([[], [], [b"NX"], [b"XX"], [b"GT"], [b"LT"]]))
            yield self._mx_writer(k)
            yield ("cmd", [r.choice([b"TTL", b"PTTL"]), k])
        elif c == 26:
            yield ("cmd", [r.choice([b"TTL", b"PTTL", b"EXPIRETIME"]), k])
        elif c == 27:
            yield ("cmd", [b"PERSIST", k])
            yield ("cmd", [b"TTL", k])
        elif c == 28:
            opts = [b"TYPE", r.choice([b"string", b"hash", b"list", b"set", b"zset", b"LIST", b"stream", b"nosuch"])]
            if r.random() < 0.3:
                opts += [b"MATCH", r.choice([b"m*", b"m[0-1]", b"*2"])]
            if r.random() < 0.5:
                opts += [b"COUNT", r.choice([1, 2, 10])]
            if r.random() < 0.2:
                r.shuffle(opts)   # words out of their pairs: syntax errors, as Redis says
            yield ("scan", opts)
        elif c == 29:
            yield ("cmd", [b"DBSIZE"])
            if r.random() < 0.5:
                yield ("cmd", [b"KEYS", r.choice([b"*", b"m?", b"m[2-3]"])])
        elif c == 30:
            yield ("cmd", [b"RANDOMKEY"])
        elif c == 31:
            if "OBJECT" in self._MX_HAVE:
                yield ("cmd", [b"OBJECT", b"ENCODING", k])
            else:
                yield ("cmd", [b"TYPE", k])
        elif c == 32:
            # a container with a short TTL, then a pause: gone on both servers (EXISTS first:
            # Redis reclaims it on that access, so DBSIZE agrees afterwards)
            yield ("cmd", [b"DEL", k])
            yield self._mx_writer(k)
            yield ("cmd", [b"PEXPIRE", k, r.randint(5, 30)])
            yield ("sleep", 0.1)
            yield ("cmd", [b"EXISTS", k])
            yield ("cmd", [r.choice([b"TYPE", b"TTL", b"DBSIZE"])] + ([] if r.random() < 0.3 else [k]))
        elif c == 33:
            # WRONGTYPE inside a transaction: a runtime error in EXEC's array, the rest runs
            yield ("cmd", [b"MULTI"])
            yield self._mx_writer(k)
            yield self._mx_writer(k)
            yield self._mx_reader(k, ordered=True)
            yield ("cmd", [b"TYPE", k])
            yield ("cmd", [b"EXEC"])
        elif c == 34:
            # a container made empty goes away with its TTL
            yield ("cmd", [r.choice([b"RPUSH", b"SADD"]), b"me", b"a"])
            yield ("cmd", [b"EXPIRE", b"me", 1000])
            yield ("cmd", [b"SREM", b"me", b"a"] if r.random() < 0.5 else [b"LPOP", b"me"])
            yield ("cmd", [r.choice([b"TTL", b"EXISTS", b"TYPE"]), b"me"])
            yield ("cmd", [b"DEL", b"me"])
        elif c == 35:
            yield ("cmd", [b"SELECT", r.choice([0, 0, 16, -1, b"x"])])   # one database: 1..15 differ (docs)
            yield ("cmd", r.choice([[b"PING"], [b"PING", self._mx_el()], [b"ECHO", self._mx_el()],
                                    [b"TYPE"], [b"TYPE", k, k], [b"RENAME", k], [b"COPY", k], [b"COPY", k, k],
                                    [b"COPY", k, k2, b"BOGUS"], [b"EXPIRE", k, b"x"], [b"PERSIST"],
                                    [b"SCAN", 0, b"TYPE"], [b"OBJECT"] if "OBJECT" in self._MX_HAVE else [b"DBSIZE", k]]))
        elif c == 36 and r.random() < 0.1:
            yield ("cmd", [b"FLUSHDB"])
        else:
            yield self._mx_writer(self._mx_key(missing=False))


# Every g_<name> method of Gen is a family, in the order they are defined.
FAMILIES = [n[2:] for n in vars(Gen) if n.startswith("g_")]


# --------------------------------------------------------------------------------- comparison
_TOL = {b"TTL": 1, b"EXPIRETIME": 1, b"PTTL": 1000, b"PEXPIRETIME": 1000}


def _norm(reply, name: bytes):
    t, v = reply
    if t == "-":
        return ("-", v.split(" ", 1)[0])
    if name == b"KEYS" and t == "*" and v is not None:
        return ("set", frozenset(x[1] for x in v))
    if name == b"RANDOMKEY":
        return ("randomkey", v is not None)
    return reply


def agree(a, b, name: bytes) -> bool:
    a, b = _norm(a, name), _norm(b, name)
    if name in _TOL and a[0] == b[0] == ":" and a[1] >= 0 and b[1] >= 0:
        return abs(a[1] - b[1]) <= _TOL[name]
    return a == b


def agree_exec(a, b, queued: list) -> bool:
    if a[0] != b[0] or a[0] != "*" or a[1] is None or b[1] is None:
        return _norm(a, b"EXEC") == _norm(b, b"EXEC")
    if len(a[1]) != len(b[1]):
        return False
    names = queued + [b"?"] * (len(a[1]) - len(queued))
    return all(agree(x, y, n) for x, y, n in zip(a[1], b[1], names))


def full_scan(conn: Resp, opts: list) -> tuple:
    keys = set()
    cursor = b"0"
    for _ in range(10_000):
        rep = conn.call(b"SCAN", cursor, *opts)
        if rep[0] == "-":
            return ("-", rep[1].split(" ", 1)[0])
        cursor = rep[1][0][1]
        keys.update(x[1] for x in rep[1][1][1])
        if cursor == b"0":
            return ("set", frozenset(keys))
    raise AssertionError(f"SCAN {opts} did not finish in 10,000 calls")


def _show(args) -> str:
    return " ".join(a.decode("utf-8", "backslashreplace") if isinstance(a, bytes) else str(a) for a in args)


def _blocked_clients(conn: Resp) -> int:
    rep = as_resp2(conn.call(b"INFO", b"clients"))
    for line in rep[1].decode().splitlines():
        if line.startswith("blocked_clients:"):
            return int(line.split(":")[1])
    raise AssertionError(f"INFO clients has no blocked_clients: {rep!r}")


class Blockers:
    """The blocker connections of one stream: per server, connection i sends a blocking command
    and its answer is read later (wake).  block() returns once, on each server, the command
    answered at once or its client counts in INFO's blocked_clients."""

    def __init__(self, main: tuple):
        self.main = main                      # (redis conn, our conn): for INFO
        self.conns: dict[int, tuple] = {}
        self.pending: dict[int, list] = {}    # i -> the command sent
        self.blocked = [0, 0]

    def _conn(self, i: int) -> tuple:
        c = self.conns.get(i)
        if c is None:
            c = self.conns[i] = tuple(Resp(m.sock.getpeername()[1]) for m in self.main)
            for m, b in zip(self.main, c):
                if m.protocol >= 3:
                    assert b.call(b"HELLO", b"3")[0] == "%"
        return c

    def block(self, i: int, args: list) -> None:
        assert i not in self.pending, f"blocker {i} is still waiting for {self.pending[i]}"
        conns = self._conn(i)
        for side, c in enumerate(conns):
            c.sock.sendall(b"*%d\r\n" % len(args) + b"".join(
                b"$%d\r\n%b\r\n" % (len(a), a) for a in (x if isinstance(x, bytes) else str(x).encode()
                                                            for x in args)))
            deadline = time.monotonic() + 10
            while True:
                r, _, _ = select.select([c.sock], [], [], 0)
                if r:
                    break       # answered at once
                if _blocked_clients(self.main[side]) > self.blocked[side]:
                    self.blocked[side] += 1
                    break
                assert time.monotonic() < deadline, f"{_show(args)}: neither answered nor blocked after 10 s"
                time.sleep(0.002)
        self.pending[i] = args

    def wake(self, i: int) -> tuple:
        args = self.pending.pop(i)
        out = []
        for side, c in enumerate(self._conn(i)):
            out.append(c._read())
        for side in (0, 1):
            self.blocked[side] = _blocked_clients(self.main[side])
        return args, out[0], out[1]

    def close(self) -> None:
        for pair in self.conns.values():
            for c in pair:
                c.close()


def run_stream(family: str, seed: int, n: int, redis: tuple, ours: tuple, verbose: bool = False) -> int:
    """Run one stream; returns the number of commands compared; raises AssertionError at the
    first disagreement."""
    (ra, rb), (oa, ob) = redis, ours
    blockers = Blockers((ra, oa))
    try:
        return _run_stream(family, seed, n, redis, ours, verbose, blockers)
    finally:
        blockers.close()


def _run_stream(family, seed, n, redis, ours, verbose, blockers) -> int:
    (ra, rb), (oa, ob) = redis, ours
    for c in (ra, oa):
        for w in (b"DISCARD", b"UNWATCH"):
            c.call(w)
        assert c.call(b"FLUSHALL") == ("+", "OK")
    for c in (rb, ob):
        c.call(b"UNWATCH")
    history: list[str] = []
    queued: list | None = None
    compared = 0
    for op in Gen(family, seed).ops(n):
        kind, args = op[0], op[1]
        norm = op[2] if len(op) > 2 else None
        if kind == "sleep":
            time.sleep(args)
            continue
        if kind == "scan":
            x, y = full_scan(ra, args), full_scan(oa, args)
            raw = (x, y)
            line = "SCAN (full iteration) " + _show(args)
            ok = x == y
        elif kind == "block":
            blockers.block(args[0], args[1])
            compared += 1    # its answer is compared at its "wake"
            if verbose:
                print(f"      [blocker {args[0]}] sent {_show(args[1])}")
            continue
        elif kind == "wake":
            sent, x, y = blockers.wake(args)
            raw = (x, y)
            line = f"[blocker {args}] " + _show(sent)
            name = sent[0].upper()
            same_types = x[0] == y[0] == "-" or ra.protocol < 3 or resp3_types(x) == resp3_types(y)
            if ra.protocol >= 3:
                x, y = as_resp2(x), as_resp2(y)
            ok = same_types and (agree(x, y, name) if norm is None else norm(x) == norm(y))
        else:
            conns = (ra, oa) if kind == "cmd" else (rb, ob)
            x, y = conns[0].call(*args), conns[1].call(*args)
            raw = (x, y)
            name = args[0].upper() if args else b""
            line = ("" if kind == "cmd" else "[other client] ") + _show(args)
            # RESP3: the same types at every level, then the values compared as under RESP2
            same_types = x[0] == y[0] == "-" or conns[0].protocol < 3 or resp3_types(x) == resp3_types(y)
            if conns[0].protocol >= 3:
                x, y = as_resp2(x), as_resp2(y)
            if not same_types:
                ok = False
            elif norm is not None:
                ok = x[0] == y[0] == "-" and agree(x, y, name) or \
                    x[0] != "-" and y[0] != "-" and norm(x) == norm(y)
            elif kind == "cmd" and name == b"EXEC" and queued is not None:
                ok = agree_exec(x, y, queued)
            else:
                ok = agree(x, y, name)
            if kind == "cmd":
                if name == b"MULTI" and x == ("+", "OK"):
                    queued = []
                elif name in (b"EXEC", b"DISCARD") and x[0] != "-" or (name == b"EXEC" and x[1].startswith("EXECABORT")):
                    queued = None
                elif queued is not None and x == ("+", "QUEUED"):
                    queued.append(name)
        compared += 1
        history.append(line)
        if verbose:
            print(f"{compared:5d} {line}\n      redis: {raw[0]}\n      ours:  {raw[1]}")
        if not ok:
            context = "\n    ".join(history[-12:-1])
            raise AssertionError(
                f"family {family}, seed {seed}: command #{compared} disagrees\n"
                f"  command: {line}\n  redis:   {raw[0]!r}\n  ours:    {raw[1]!r}\n"
                f"  preceding commands:\n    {context}\n"
                f"  replay: python test_redis_diff.py --family {family} --seed {seed}"
                f"{' --protocol 3' if ra.protocol >= 3 else ''} -v")
    return compared


# --------------------------------------------------------------------------------- fixtures
class RedisServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kvdiff-redis-")
        self.port = pick_free_ports(1)[0]
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                c = Resp(self.port)
                if c.call(b"PING") == ("+", "PONG"):
                    c.close()
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def servers():
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    redis = RedisServer()
    cluster = LocalCluster(n=3, fsync="no", heartbeat_interval=0.1, election_timeout=1.5)
    conns = []
    try:
        cluster.start()
        primary = cluster.wait_for_single_primary(timeout=15)
        port = cluster.port(primary)
        conns = [Resp(redis.port), Resp(redis.port), Resp(port), Resp(port)]
        yield (conns[0], conns[1]), (conns[2], conns[3]), cluster
    finally:
        for c in conns:
            c.close()
        cluster.cleanup()
        redis.stop()


@pytest.mark.parametrize("seed", _seeds())
@pytest.mark.parametrize("family", FAMILIES)
def test_agrees_with_redis(servers, family, seed):
    redis, ours, cluster = servers
    n = run_stream(family, seed, COMMANDS, redis, ours)
    assert n >= COMMANDS


# RESP3: each family runs one seed (the first of KV_DIFF_SEEDS, the same command count) on
# connections that sent HELLO 3.  A family that disagrees only under RESP3, in code another
# owner has, is listed here with its minimal repro (strict: the mark flips when it is fixed).
RESP3_XFAIL: dict[str, str] = {}   # none today (set replies became RESP3 sets)


def _resp3_params():
    return [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=RESP3_XFAIL[f]))
            if f in RESP3_XFAIL else f for f in FAMILIES]


@pytest.fixture(scope="module")
def servers3(servers):
    """Four more connections to the same two servers, switched to RESP3."""
    (ra, _), (oa, _), cluster = servers
    redis_port, our_port = ra.sock.getpeername()[1], oa.sock.getpeername()[1]
    conns = []
    try:
        for port in (redis_port, redis_port, our_port, our_port):
            conns.append(Resp(port))
            conns[-1].hello(3)
        yield (conns[0], conns[1]), (conns[2], conns[3]), cluster
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("family", _resp3_params())
def test_agrees_with_redis_resp3(servers3, family):
    redis, ours, cluster = servers3
    n = run_stream(family, _seeds()[0], COMMANDS, redis, ours)
    assert n >= COMMANDS


def test_resp3_reader_keeps_types_apart(servers3):
    """Redis's RESP3 replies read as their own types, and a set is not an array."""
    (ra, _), (oa, _), cluster = servers3
    ra.call(b"FLUSHALL")
    ra.call(b"SADD", b"s", b"a")
    ra.call(b"HSET", b"h", b"f", b"v")
    assert ra.call(b"SMEMBERS", b"s") == ("~", [("$", b"a")])
    assert ra.call(b"HGETALL", b"h") == ("%", [(("$", b"f"), ("$", b"v"))])
    assert ra.call(b"GET", b"nokey") == ("_", None)
    assert ra.call(b"INCRBYFLOAT", b"n", b"1.5") == ("$", b"1.5")
    assert ra.call(b"HELLO", 3)[0] == "%"
    assert resp3_types(("~", [("$", b"a")])) != resp3_types(("*", [("$", b"a")]))
    assert as_resp2(("%", [(("$", b"f"), ("$", b"v"))])) == ("*", [("$", b"f"), ("$", b"v")])
    assert as_resp2(("#", True)) == (":", 1) and as_resp2((",", b"1.5")) == ("$", b"1.5")


def test_replicas_converge_after_the_streams(servers):
    """Everything the streams wrote (TTLs, transactions, purges) replicated identically."""
    redis, ours, cluster = servers
    run_stream("expiry", 99, 200, redis, ours)
    st = cluster.wait_converged(timeout=15)
    assert len({s["digest"] for s in st.values()}) == 1


def test_harness_catches_a_disagreement(servers):
    """The comparison can fail: a stream against two different databases disagrees."""
    (ra, rb), (oa, ob), cluster = servers
    oa.call(b"FLUSHALL")
    ra.call(b"FLUSHALL")
    ra.call(b"SET", b"k1", b"only-in-redis")
    assert not agree(ra.call(b"GET", b"k1"), oa.call(b"GET", b"k1"), b"GET")
    assert agree(("-", "ERR x"), ("-", "ERR y"), b"GET")
    assert not agree(("-", "ERR x"), ("-", "EXECABORT y"), b"GET")
    assert agree((":", 100), (":", 99), b"TTL") and not agree((":", 100), (":", 98), b"TTL")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=FAMILIES, action="append")
    ap.add_argument("--seed", type=int, action="append")
    ap.add_argument("-n", type=int, default=COMMANDS)
    ap.add_argument("-v", action="store_true")
    ap.add_argument("--protocol", type=int, choices=(2, 3), default=2, help="3: HELLO 3 on every connection first")
    a = ap.parse_args()
    rs = RedisServer()
    cl = LocalCluster(n=3, fsync="no", heartbeat_interval=0.1, election_timeout=1.5)
    try:
        cl.start()
        p = cl.port(cl.wait_for_single_primary(timeout=15))
        rconn, oconn = (Resp(rs.port), Resp(rs.port)), (Resp(p), Resp(p))
        if a.protocol == 3:
            for c in rconn + oconn:
                c.hello(3)
        for fam in a.family or FAMILIES:
            for sd in a.seed or _seeds():
                t0 = time.monotonic()
                k = run_stream(fam, sd, a.n, rconn, oconn, verbose=a.v)
                print(f"{fam} seed {sd}: {k} commands agree ({time.monotonic() - t0:.1f}s)")
    finally:
        cl.cleanup()
        rs.stop()
