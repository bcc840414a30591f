"""The command registry against Redis, the docs and the differential test (fast).

    python -m pytest -q test_registry.py

For every command kv_registry declares:
- (a) our COMMAND INFO row, read from a running KV Store node, equals redis-server 7.0's (arity,
  flags, first/last/step key positions, ACL categories; flags and categories as sets) and so
  do COMMAND DOCS group and since; a mismatch fails with one table of every difference;
  commands declared as Redis's (redis=True) that Redis does not have fail too, listed;
- (b) COMMAND COUNT equals the number of registered commands, and COMMAND / COMMAND LIST /
  COMMAND INFO have a row for each;
- (c) each has a table row in docs/CLUSTERING.md's `## Commands` section (its name in the row's
  first cell), and a test_redis_diff.py family sends it: the names are collected from the
  streams the CI seeds really send (run_stream sends each op's args verbatim); commands that
  cannot be diffed are in EXEMPT with the reason.
Redis's rows come from a redis-server this module starts on a free 127.0.0.1 port and stops
by its PID; without redis-server the Redis comparisons skip with the reason.
"""

from __future__ import annotations

import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import kv_registry  # noqa: E402
import test_redis_diff as D  # noqa: E402
from kv_localcluster import LocalCluster  # noqa: E402

SPECS = kv_registry.SPECS
REFERENCE = os.path.join(HERE, "docs", "CLUSTERING.md")

# Commands no diff family sends, and why.
EXEMPT = {
    # KV Store's own (redis=False): nothing to compare with
    "STATUS": "KV Store's own: the node's Raft status as JSON",
    "SNAPSHOT": "KV Store's own: writes a snapshot",
    "FLUSH": "KV Store's own: fsyncs the write-ahead log",
    "TRANSFER": "KV Store's own: planned leadership transfer",
    "CLUSTER": "KV Store's own membership commands (not Redis Cluster's)",
    "CAS": "KV Store's own compare-and-swap (line protocol)",
    # connection and server commands whose replies describe the server, not the data
    "AUTH": "needs a password configured on both servers; covered by test_protocol / test_opsafety",
    "HELLO": "its reply describes the server (name, version, id, role); test_redis_diff's RESP3 run "
             "sends HELLO 3 on every connection and then diffs every family",
    "QUIT": "closes the connection the stream runs on",
    "CLIENT": "ids, names and client lists differ per server by nature",
    "COMMAND": "compared row by row with Redis's by this module",
    "CONFIG": "the servers' configurations differ by nature",
    "INFO": "server text (versions, memory, replication) differs by nature",
    "SHUTDOWN": "stops the server",
    "ROLE": "a 3-node cluster's replication role against a standalone redis-server",
    "READONLY": "a cluster command: standalone Redis refuses it (cluster support disabled)",
    "READWRITE": "a cluster command: standalone Redis refuses it (cluster support disabled)",
    "SENTINEL": "Sentinel discovery: redis-server is not a sentinel (test_sentinel covers it)",
    "SUBSCRIBE": "pub/sub: only +switch-master is published (Sentinel discovery)",
    "UNSUBSCRIBE": "pub/sub: only +switch-master is published (Sentinel discovery)",
    "PSUBSCRIBE": "pub/sub: only +switch-master is published (Sentinel discovery)",
    "PUNSUBSCRIBE": "pub/sub: only +switch-master is published (Sentinel discovery)",
}

# Registry rows Redis's COMMAND cannot confirm, and why.
NOT_IN_REDIS_SERVER = {
    "SENTINEL": "only a Sentinel (redis-server --sentinel) has it; our row is redis-sentinel 7.0's",
}
# KV Store's own commands (redis=False) that reuse a Redis command's name for another command.
SHADOWS_A_REDIS_COMMAND = {
    "CLUSTER": "our membership commands (CLUSTER ADD / REMOVE / MEMBERS), not Redis Cluster's; "
               "COMMAND INFO CLUSTER gives our row (group kvstore)",
}

# Families being written by other helpers right now: a command of theirs with no family yet is
# an expected failure (the xfail below flips when their family lands).
PENDING_PREFIXES = {"hash": "H", "sorted-set": "Z", "bitmap": ""}
PENDING_NAMES = {"SETBIT", "GETBIT", "BITCOUNT", "BITPOS", "LCS"}


def _text(x) -> str:
    v = x[1]
    return v.decode() if isinstance(v, bytes) else str(v)


# ------------------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def redis():
    if D.REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it): "
                    "Redis's COMMAND rows cannot be read")
    rs = D.RedisServer()
    conn = D.Resp(rs.port)
    try:
        yield conn
    finally:
        conn.close()
        rs.stop()


@pytest.fixture(scope="module")
def node():
    c = LocalCluster(n=1, fsync="no", heartbeat_interval=0.1, election_timeout=1.5)
    conn = None
    try:
        c.start()
        conn = D.Resp(c.port(c.wait_for_single_primary(timeout=15)))
        yield conn
    finally:
        if conn is not None:
            conn.close()
        c.cleanup()


def info_rows(conn, names: list[str]) -> dict:
    """{NAME: {field: value} or None} from COMMAND INFO and COMMAND DOCS."""
    info = conn.call(b"COMMAND", b"INFO", *names)
    assert info[0] == "*", info
    docs = conn.call(b"COMMAND", b"DOCS", *names)
    assert docs[0] == "*", docs
    d = {}
    for i in range(0, len(docs[1]), 2):
        m = docs[1][i + 1][1]
        d[_text(docs[1][i]).upper()] = {_text(m[j]): m[j + 1] for j in range(0, len(m), 2)}
    out = {}
    for name, row in zip(names, info[1]):
        if row[1] is None:
            out[name] = None
            continue
        x = row[1]
        dd = d.get(name, {})
        out[name] = {
            "arity": x[1][1], "flags": frozenset(_text(f) for f in x[2][1]),
            "keys": (x[3][1], x[4][1], x[5][1]), "acl": frozenset(_text(a) for a in x[6][1]),
            "group": _text(dd["group"]) if "group" in dd else None,
            "since": _text(dd["since"]) if "since" in dd else None,
        }
    return out


def _fmt(v) -> str:
    if isinstance(v, frozenset):
        return ",".join(sorted(v)) or "-"
    return str(v)


# ------------------------------------------------------------------------------ (a)
def test_command_info_and_docs_match_redis(redis, node):
    names = [n for n, s in SPECS.items() if s.redis]
    theirs, ours = info_rows(redis, names), info_rows(node, names)
    absent = sorted(n for n in names if theirs[n] is None and n not in NOT_IN_REDIS_SERVER)
    assert [n for n in NOT_IN_REDIS_SERVER if theirs.get(n) is not None] == [], "redis-server has it now"
    rows = []
    for n in names:
        if theirs[n] is None:
            continue
        if ours[n] is None:
            rows.append((n, "(row)", "missing", "present"))
            continue
        for field in ("arity", "flags", "keys", "acl", "group", "since"):
            if ours[n][field] != theirs[n][field]:
                rows.append((n, field, _fmt(ours[n][field]), _fmt(theirs[n][field])))
    problems = []
    if rows:
        w = [max(len(r[i]) for r in rows + [("command", "field", "ours", "redis")]) for i in range(4)]
        line = lambda r: "  " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r))   # noqa: E731
        problems.append("COMMAND INFO / DOCS differ from redis-server's:\n"
                        + "\n".join(line(r) for r in [("command", "field", "ours", "redis")] + rows))
    if absent:
        problems.append("declared as Redis commands (redis=True) but redis-server has no such command: "
                        + ", ".join(absent))
    assert not problems, "\n".join(problems)


def test_our_own_commands_are_not_redis_commands(redis):
    """redis=False is only for names Redis really lacks (else the comparison above would skip
    a real Redis command)."""
    own = [n for n, s in SPECS.items() if not s.redis]
    rows = info_rows(redis, own)
    assert sorted(n for n in own if rows[n] is not None) == sorted(SHADOWS_A_REDIS_COMMAND)


# ------------------------------------------------------------------------------ (b)
def test_command_count_list_and_info_cover_the_registry(node):
    assert node.call(b"COMMAND", b"COUNT") == (":", len(SPECS))
    listed = node.call(b"COMMAND", b"LIST")
    assert sorted(_text(x).upper() for x in listed[1]) == sorted(SPECS)
    full = node.call(b"COMMAND")
    assert sorted(_text(row[1][0]).upper() for row in full[1]) == sorted(SPECS)
    rows = info_rows(node, list(SPECS))
    assert [n for n, r in rows.items() if r is None] == []


# ------------------------------------------------------------------------------ (c)
def docs_rows() -> set[str]:
    """The command names in the first cell of a table row of docs/CLUSTERING.md `## Commands`."""
    text = open(REFERENCE, encoding="utf-8").read()
    m = re.search(r"^## Commands\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "docs/CLUSTERING.md has no '## Commands' section"
    names = set()
    for line in m.group(1).splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            names.update(re.findall(r"\b[A-Z][A-Z0-9]+\b", line.split("|")[1]))
    return names


def test_every_command_has_a_docs_row():
    rows = docs_rows()
    missing = sorted(n for n in SPECS if n not in rows)
    assert not missing, ("no table row (name in the first cell) in docs/CLUSTERING.md "
                         "'## Commands' for: " + ", ".join(missing))


def sent_by_families() -> dict[str, set[str]]:
    """{COMMAND: families whose CI streams send it}: the ops of every family for the CI seeds,
    exactly the commands run_stream sends ("scan" ops send SCAN)."""
    out: dict[str, set[str]] = {}
    for fam in D.FAMILIES:
        for seed in D._seeds():
            for op in D.Gen(fam, seed).ops(D.COMMANDS):
                if op[0] == "scan":
                    name = "SCAN"
                elif op[0] in ("cmd", "other") and op[1]:
                    a = op[1][0]
                    name = (a if isinstance(a, bytes) else str(a).encode()).decode("utf-8", "replace").upper()
                else:
                    continue
                out.setdefault(name, set()).add(fam)
    return out


def _no_family() -> list[str]:
    sent = sent_by_families()
    return sorted(n for n in SPECS if n not in sent and n not in EXEMPT)


def _pending(name: str) -> bool:
    g = SPECS[name].group
    return name in PENDING_NAMES or (g in PENDING_PREFIXES and name.startswith(PENDING_PREFIXES[g]))


_MISSING = _no_family()
_PENDING_MISSING = [n for n in _MISSING if _pending(n)]


@pytest.mark.xfail(bool(_MISSING) and len(_PENDING_MISSING) == len(_MISSING), strict=True,
                   reason="no diff family yet (other helpers' families, being written): "
                          + ", ".join(_PENDING_MISSING))
def test_every_command_is_sent_by_a_diff_family():
    missing = _no_family()
    assert not missing, ("registered commands no test_redis_diff.py family sends (add them to a family, "
                         "or to EXEMPT with the reason): " + ", ".join(missing))


def test_exempt_lists_every_own_command_and_only_registered_ones():
    own = {n for n, s in SPECS.items() if not s.redis}
    assert own <= set(EXEMPT), f"redis=False commands missing from EXEMPT: {sorted(own - set(EXEMPT))}"
    assert set(EXEMPT) <= set(SPECS), f"EXEMPT names no registered command: {sorted(set(EXEMPT) - set(SPECS))}"
    sent = sent_by_families()
    assert [n for n in EXEMPT if n in sent] == [], "exempt commands a family does send: drop them from EXEMPT"


def test_the_checks_can_fail():
    assert "NOSUCHCMD" not in docs_rows() and "HSET" in docs_rows()
    sent = sent_by_families()
    assert "GET" in sent and "NO-SUCH-COMMAND" not in sent and "SCAN" in sent
