"""kv_cli.py: command-line checks shared by the scripts (server, cluster_manager, example_client).

Every user mistake on a command line ends in ONE line on stderr, "<prog>: error: <what and
what to do>", and exit code 2 (argparse's code for bad usage) - never a traceback.

    CliParser          argparse.ArgumentParser whose error() prints one line (no usage dump)
    port(), positive(), non_negative(), at_least()    argparse `type=` validators
    check_node_id()    what a node id may look like
    parse_peers()      "--peers node2=host:port,node3=host:port" -> {id: (host, port)}
    check_host()       a bind/dial address that resolves
    even_size_warning()  why an odd number of nodes is better
"""

from __future__ import annotations

import argparse
import re
import socket
import sys

__all__ = ["CliParser", "UsageError", "port", "port_or_zero", "positive", "non_negative", "at_least", "check_node_id",
           "parse_peers", "parse_addr", "check_host", "port_in_use", "even_size_warning", "fail"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UsageError(Exception):
    """A bad command line; the message is the whole explanation."""


class CliParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("prog: error: ...; see --help") and exit 2."""

    def error(self, message: str):   # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port {n} is out of range (1-65535)")
    return n


def port_or_zero(text: str) -> int:
    """A port, or 0: a free port the OS picks (a standalone node in a test)."""
    if text.strip() == "0":
        return 0
    return port(text)


def _number(text: str, kind):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def positive(kind=float):
    def check(text: str):
        v = _number(text, kind)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return v
    check.__name__ = f"positive {kind.__name__}"
    return check


def non_negative(kind=float):
    def check(text: str):
        v = _number(text, kind)
        if v < 0:
            raise argparse.ArgumentTypeError(f"{text} must not be negative")
        return v
    check.__name__ = f"non-negative {kind.__name__}"
    return check


def at_least(low: int):
    def check(text: str):
        v = _number(text, int)
        if v < low:
            raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
        return v
    check.__name__ = f"integer >= {low}"
    return check


def check_node_id(nid: str, what: str = "node id") -> str:
    if not _ID_RE.match(nid or ""):
        raise UsageError(f"{what} {nid!r} is not valid: use 1-64 letters, digits, '_', '.' or '-' "
                         f"(no spaces), starting with a letter or digit")
    return nid


def parse_addr(text: str, what: str) -> tuple[str, int]:
    """host:port (or [v6]:port) -> (host, port); raises UsageError."""
    host, sep, p = text.rpartition(":")
    if not sep or not host or not p:
        raise UsageError(f"{what}: {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(c.isspace() for c in host):
        raise UsageError(f"{what}: the host {host!r} contains a space")
    if not p.isdigit():
        raise UsageError(f"{what}: port {p!r} is not a number")
    n = int(p)
    if not 1 <= n <= 65535:
        raise UsageError(f"{what}: port {n} is out of range (1-65535)")
    return host, n


def parse_peers(text: str, self_id: str | None = None) -> dict[str, tuple[str, int]]:
    """The --peers value: comma-separated id=host:port, each id and address once, not naming
    self_id.  Raises UsageError with what is wrong."""
    if text is None or not text.strip():
        raise UsageError("--peers is empty: name the other members as node2=host:port,node3=host:port "
                         "(or leave --peers out for the default cluster, or use --standalone)")
    if ";" in text:
        raise UsageError(f"--peers {text!r}: separate entries with ',' not ';'")
    peers: dict[str, tuple[str, int]] = {}
    seen_addr: dict[tuple[str, int], str] = {}
    for item in text.split(","):
        if not item.strip():
            raise UsageError(f"--peers {text!r} has an empty entry (a doubled or trailing ',')")
        nid, sep, addr = item.partition("=")
        if not sep:
            raise UsageError(f"--peers entry {item!r} is not id=host:port")
        check_node_id(nid, "--peers: node id")
        host, p = parse_addr(addr, f"--peers entry {item!r}")
        if nid in peers:
            raise UsageError(f"--peers names {nid} twice")
        if (host, p) in seen_addr:
            raise UsageError(f"--peers gives {seen_addr[(host, p)]} and {nid} the same address {host}:{p}")
        if nid == self_id:
            raise UsageError(f"--peers lists this node ({self_id}); name only the other members")
        peers[nid] = (host, p)
        seen_addr[(host, p)] = nid
    return peers


def check_host(host: str, what: str = "--host") -> str:
    """A host that resolves (a name, an IPv4 or IPv6 address); raises UsageError."""
    if not host or any(c.isspace() for c in host):
        raise UsageError(f"{what} {host!r} is not a host name or address")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"{what} {host!r} does not resolve: {getattr(e, 'strerror', None) or e}") from None
    return host


def port_in_use(host: str, port: int) -> str | None:
    """None when host:port can be bound now (as the server binds: SO_REUSEADDR), else why not."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return f"port {port} on {host} is not available ({e.strerror})"
    return None


def even_size_warning(n: int) -> str | None:
    """A warning for an even cluster size, else None."""
    if n < 2 or n % 2:
        return None
    tolerate = (n - 1) // 2
    return (f"warning: a cluster of {n} nodes needs {n // 2 + 1} for a majority and survives "
            f"{tolerate} failure{'s' if tolerate != 1 else ''}, no more than a cluster of {n - 1}; "
            f"an odd size ({n - 1} or {n + 1}) gives more safety per node")


def fail(prog: str, message: str) -> int:
    """Print the one-line usage error and return 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
