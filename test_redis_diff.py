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

from kv_localcluster import LocalCluster, pick_free_ports  # noqa: E402

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
    """A minimal RESP2 client that keeps reply types apart: ("+", str), ("-", str), (":", int),
    ("$", bytes | None), ("*", list | None)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def call(self, *args) -> tuple:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> tuple:
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed (read {line!r})")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return ("+", rest.decode())
        if t == b"-":
            return ("-", rest.decode("utf-8", "replace"))
        if t == b":":
            return (":", int(rest))
        if t == b"$":
            n = int(rest)
            if n < 0:
                return ("$", None)
            data = self.f.read(n + 2)
            return ("$", data[:-2])
        if t == b"*":
            n = int(rest)
            if n < 0:
                return ("*", None)
            return ("*", [self._read() for _ in range(n)])
        if t == b"_":
            return ("$", None)
        raise ConnectionError(f"unexpected reply line {line!r}")


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
    (a full SCAN iteration with the given options, compared as a set)."""

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
            t, v = rep
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
                   lambda rep: (rep[0], all(dict([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]).get(f[1]) == v[1]
                                            for f, v in zip(rep[1][0::2], rep[1][1::2])), len(rep[1])))
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

    # == bitmaps family (kv_strings: SETBIT GETBIT BITCOUNT BITPOS LCS) ====================
    #

    # == mixed-types family (every type, WRONGTYPE, TYPE/RENAME/COPY/SCAN TYPE) ============
    #


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


def run_stream(family: str, seed: int, n: int, redis: tuple, ours: tuple, verbose: bool = False) -> int:
    """Run one stream; returns the number of commands compared; raises AssertionError at the
    first disagreement."""
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
            line = "SCAN (full iteration) " + _show(args)
            ok = x == y
        else:
            conns = (ra, oa) if kind == "cmd" else (rb, ob)
            x, y = conns[0].call(*args), conns[1].call(*args)
            name = args[0].upper() if args else b""
            line = ("" if kind == "cmd" else "[other client] ") + _show(args)
            if norm is not None:
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
            print(f"{compared:5d} {line}\n      redis: {x}\n      ours:  {y}")
        if not ok:
            context = "\n    ".join(history[-12:-1])
            raise AssertionError(
                f"family {family}, seed {seed}: command #{compared} disagrees\n"
                f"  command: {line}\n  redis:   {x!r}\n  ours:    {y!r}\n"
                f"  preceding commands:\n    {context}\n"
                f"  replay: python test_redis_diff.py --family {family} --seed {seed} -v")
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
    a = ap.parse_args()
    rs = RedisServer()
    cl = LocalCluster(n=3, fsync="no", heartbeat_interval=0.1, election_timeout=1.5)
    try:
        cl.start()
        p = cl.port(cl.wait_for_single_primary(timeout=15))
        rconn, oconn = (Resp(rs.port), Resp(rs.port)), (Resp(p), Resp(p))
        for fam in a.family or FAMILIES:
            for sd in a.seed or _seeds():
                t0 = time.monotonic()
                k = run_stream(fam, sd, a.n, rconn, oconn, verbose=a.v)
                print(f"{fam} seed {sd}: {k} commands agree ({time.monotonic() - t0:.1f}s)")
    finally:
        cl.cleanup()
        rs.stop()
