"""docs/QUICKSTART.md, run as written: its blocks marked runnable, in order, on a fresh cluster;
and the runnable-block convention every test_docs_* runner shares (this file is its home).

A fenced block opened with ```sh runnable is shell; ```python runnable is fed to `python -`.
In a shell block a line starting with "$ " is a command whose output follows it in the block
(compared line by line, after the default ports 6379/6380/6381 in it are replaced by the
test's where it substitutes ports; a line that is only "..." stands for any number of lines,
and "..." inside a line for any text); every other line is a command that must succeed. All
blocks run in one bash process (`set -e`), so a variable set in one block (KV_PORT, KV_DATA,
PRIMARY) holds in the next. A block opened with ```sh runnable background starts each of its
commands in the background, as if pasted into a terminal of its own (output: a log file, shown
when the run fails), and leaves it running; the commands after it wait for what they need
themselves (`--action health --wait`, a client's retry deadline), as a reader would. Whatever
the document started and still runs at its end is stopped by PID (SIGTERM, then SIGKILL after
a deadline), like closing those terminals. test_docs.py checks that every sh and python block
of the docs is runnable or says why not (```sh benchmark, ```sh pytest, ```sh deploy).

Documents that name fixed ports and ./data as they stand (README.md, docs/CLUSTERING.md) run
on a fresh clone (the tracked files copied to a temporary directory) inside a network
namespace of their own (`unshare --net`, root): 6379-6381 and every other port are free there
and the machine's own are never touched, so every command runs exactly as written.

The QUICKSTART test picks three free consecutive ports (KV_PORT) and a temporary cluster
directory (KV_DATA); the whole run is bounded in time.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

from kv_client import ClusterClient
from kv_localcluster import LocalCluster, port_in_use, pick_free_ports

ROOT = Path(__file__).resolve().parent
QUICKSTART = ROOT / "docs" / "QUICKSTART.md"
CLIENT_GUIDE = ROOT / "docs" / "CLIENT_GUIDE.md"
TESTING_GUIDE = ROOT / "docs" / "TESTING_GUIDE.md"
DEFAULT_PORTS = (6379, 6380, 6381)
RUN_TIMEOUT = 150          # seconds for the whole walk-through (the demos take ~10 s of it)
STOP_GRACE = 10            # seconds a process has to exit on SIGTERM at the end of a run

_FENCE = re.compile(r"^```(\w+) runnable( background)?[ \t]*$(.*?)^```[ \t]*$", re.M | re.S)


class Block(NamedTuple):
    lang: str              # "sh" or "python"
    body: str
    background: bool = False


def runnable_blocks(text: str) -> list[Block]:
    """The runnable blocks, in order."""
    return [Block(m.group(1), m.group(3), bool(m.group(2))) for m in _FENCE.finditer(text)]


def build_script(blocks) -> tuple[str, list[tuple[str, list[str]]]]:
    """One bash script for every block, and [(command, expected output lines or None)] in the
    order their markers appear in the script's output.  Background commands log to
    $KV_DOC_LOGS/background-<step>.log, record their PID in $KV_DOC_LOGS/background.pids and,
    if they end, their exit status in background-<step>.exit."""
    steps: list[tuple[str, list[str] | None]] = []
    lines = ["set -e -o pipefail"]

    def step(cmd: str, expected, run: str):
        lines.append(f"echo '@@STEP {len(steps)}'")
        steps.append((cmd, expected))
        lines.append(run)

    for block in blocks:
        lang, body = block.lang, block.body
        if lang == "python":
            assert not block.background, "a python block cannot run in the background"
            step(body.strip(), None, f"python - <<'KV_PYTHON_EOF'\n{body}KV_PYTHON_EOF")
            continue
        assert lang == "sh", f"a runnable block in {lang!r}: only sh and python are run"
        current = None
        for raw in body.splitlines():
            if block.background:
                assert not raw.startswith("$ "), f"a background block shows no output: {raw}"
                if raw.strip() and not raw.lstrip().startswith("#"):
                    name = f'"$KV_DOC_LOGS/background-{len(steps)}'
                    step(raw, None, f'( set +e\n{raw}\necho $? > {name}.exit"\n) > {name}.log" 2>&1 < /dev/null &\n'
                                    f'echo $! >> "$KV_DOC_LOGS/background.pids"')
            elif raw.startswith("$ "):
                current = [raw[2:], []]
                step(current[0], current[1], current[0])
            elif current is not None:
                current[1].append(raw)
            elif raw.strip() and not raw.lstrip().startswith("#"):
                step(raw, None, raw)
    lines.append("echo '@@STEP end'")
    return "\n".join(lines) + "\n", steps


def split_output(out: str) -> dict[str, list[str]]:
    """{step: its output lines}.  A marker may follow a step's last output on the same line
    (a REPL's last prompt ends with no newline)."""
    parts: dict[str, list[str]] = {}
    key = None
    for line in out.splitlines():
        m = re.search(r"@@STEP (\d+|end)$", line)
        if m and key is not None and m.start() > 0:
            parts[key].append(line[:m.start()])
        if m:
            key = m.group(1)
            parts[key] = []
        elif key is not None:
            parts[key].append(line)
    return parts


@functools.lru_cache(maxsize=None)
def _line_pattern(want: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(piece) for piece in want.split("...")), re.S)


def lines_match(want: list[str], got: list[str]) -> bool:
    """got is what want shows: line by line (trailing blanks ignored), a want line "..." standing
    for any number of lines and "..." inside a line for any text."""
    want = [w.rstrip() for w in want]
    got = [g.rstrip() for g in got]

    @functools.lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i] == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and _line_pattern(want[i]).fullmatch(got[j]) is not None and match(i + 1, j + 1)
    return match(0, 0)


def three_free_ports() -> int:
    for _ in range(50):
        base = pick_free_ports(1)[0]
        if base + 2 < 65536 and all(port_in_use("127.0.0.1", base + i) is None for i in (1, 2)) \
                and not set(DEFAULT_PORTS) & {base, base + 1, base + 2}:
            return base
    pytest.fail("no three consecutive free ports found")


def fresh_clone(dest: Path) -> Path:
    """The files git tracks in this checkout, as they are in the working tree, copied to dest:
    what a fresh clone holds (no ./data, no caches, no untracked files)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                                timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        listed = []
    names = [n for n in listed if n and (ROOT / n).is_file()]
    if names:
        for name in names:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    else:      # not a git checkout (an unpacked archive): everything but data and caches
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", "data", "data-*", "__pycache__", ".pytest_cache", "*.egg-info", "build", ".venv", "venv"))
    return dest


def need_netns() -> None:
    """README and CLUSTERING run in a network namespace of their own: root and unshare(1)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.fail("this test runs the document's commands as written (ports 6379.., ./data) in a "
                    "network namespace of its own: it needs root, unshare (util-linux) and ip (iproute2)")


@dataclasses.dataclass
class DocRun:
    """One document run: its steps, what each printed, and the end state."""
    label: str
    steps: list
    parts: dict
    returncode: int | None
    out: str
    logs: Path
    left_running: list[str]       # processes the document started and had not stopped (background excluded)
    background_exits: dict        # {step: exit status} of background commands that ended during the run

    def output_of(self, fragment: str) -> list[str]:
        """What the first step whose command contains fragment printed."""
        for i, (cmd, _) in enumerate(self.steps):
            if fragment in cmd:
                return self.parts.get(str(i), [])
        raise AssertionError(f"{self.label}: no step runs {fragment!r}")

    def background_logs(self) -> str:
        out = []
        for path in sorted(self.logs.glob("background-*.log")):
            n = int(path.stem.split("-")[1])
            tail = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- background `{self.steps[n][0]}` (last lines):\n" + "\n".join(tail))
        return "\n".join(out)

    def check(self, ports: dict[str, str] | None = None) -> None:
        """Every step succeeded and printed what the document shows after `$ ` (the default
        ports mapped through ports, when given)."""
        if self.returncode != 0 or "end" not in self.parts:
            ran = [k for k in self.parts if k != "end"]
            last = int(ran[-1]) if ran else 0
            pytest.fail(f"{self.label}: step failed (exit {self.returncode}): {self.steps[last][0]}\n"
                        f"its output:\n" + "\n".join(self.parts.get(str(last), [])[-40:]) +
                        "\n" + self.background_logs())
        failed = {n: code for n, code in self.background_exits.items() if code != 0}
        if failed:
            pytest.fail(f"{self.label}: background commands failed: " +
                        "; ".join(f"`{self.steps[n][0]}` exited {code}" for n, code in failed.items()) +
                        "\n" + self.background_logs())
        for i, (cmd, expected) in enumerate(self.steps):
            if expected is None:
                continue
            want = expected if not ports else \
                [re.sub(r"\b(6379|6380|6381)\b", lambda m: ports[m.group(1)], line) for line in expected]
            got = self.parts.get(str(i), [])
            assert lines_match(want, got), \
                f"{self.label} promises for `{cmd}`:\n" + "\n".join(want) + "\nbut it printed:\n" + "\n".join(got)


def _started_by_run(scope: str, logs: Path, since: float) -> tuple[list[psutil.Process], set[int]]:
    """(every process the run started that still runs, the PIDs of the background commands' trees):
    the background commands and their descendants, and any process whose working directory or
    command line is inside scope (the run's temporary directory)."""
    found: dict[int, psutil.Process] = {}
    background: set[int] = set()
    pids_file = logs / "background.pids"
    for word in (pids_file.read_text().split() if pids_file.exists() else ()):
        try:
            p = psutil.Process(int(word))
            if p.create_time() + 1 < since:
                continue                          # an old process that got a recycled PID
            tree = [p] + p.children(recursive=True)
        except psutil.NoSuchProcess:
            continue                              # it ended
        for q in tree:
            found[q.pid] = q
            background.add(q.pid)
    for p in psutil.process_iter(["pid", "cwd", "cmdline"]):
        if p.pid == os.getpid():
            continue
        cwd, cmd = p.info["cwd"] or "", p.info["cmdline"] or []
        if cwd.startswith(scope) or any(scope in a for a in cmd):
            found.setdefault(p.pid, p)
    return list(found.values()), background


def stop_processes(procs: list[psutil.Process]) -> None:
    """SIGTERM each (by PID), then SIGKILL what is still there after STOP_GRACE seconds."""
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass                                  # already gone
    _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass                                  # exited between the wait and the kill
    psutil.wait_procs(alive, timeout=5)


def run_doc(label: str, blocks, *, cwd: Path, scope: Path, env: dict | None = None, netns: bool = False,
            stdin: str = "", timeout: float = RUN_TIMEOUT) -> DocRun:
    """Run the blocks in one bash (in a network namespace of its own with netns), with stdin as
    its standard input (for a REPL the document starts); stop by PID whatever it left running."""
    script, steps = build_script(blocks)
    logs = scope / "doc-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **(env or {}), KV_DOC_LOGS=str(logs), NO_COLOR="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    argv = ["unshare", "--net", "bash", "-c", "ip link set lo up || exit 97\n" + script] if netns \
        else ["bash", "-c", script]
    since = time.time()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            out, _ = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"{label} did not finish within {timeout} s; output:\n{out[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        exits = {int(p.stem.split("-")[1]): int(p.read_text().strip() or -1)
                 for p in logs.glob("background-*.exit")}    # read before the stop below ends the rest
        procs, background = _started_by_run(str(scope), logs, since)
        left = []
        for p in procs:
            if p.pid not in background:
                try:
                    left.append(f"pid {p.pid}: {' '.join(p.cmdline())[:150]}")
                except psutil.NoSuchProcess:
                    pass                          # it ended meanwhile: not left running
        stop_processes(procs)
    return DocRun(label, steps, split_output(out), proc.returncode, out, logs, left, exits)


def test_parser_reads_expected_output():
    script, steps = build_script(runnable_blocks(
        "```sh runnable\nexport A=1\n$ echo hi\nhi\n```\n```python runnable\nprint(2)\n```\n"
        "```sh\nnot run\n```\n```sh runnable background\nsleep 5   # a server\n```\n"))
    assert [s[0] for s in steps] == ["export A=1", "echo hi", "print(2)", "sleep 5   # a server"]
    assert steps[1][1] == ["hi"] and "not run" not in script
    assert '( set +e\nsleep 5   # a server\necho $? > "$KV_DOC_LOGS/background-3.exit"\n) > ' \
           '"$KV_DOC_LOGS/background-3.log"' in script
    assert split_output("@@STEP 0\nkv> @@STEP 1\nx\n@@STEP end\n") == {"0": ["kv> "], "1": ["x"], "end": []}


def test_expected_output_wildcards():
    assert lines_match(["a", "...", "z"], ["a", "b", "c", "z"]) and lines_match(["a", "...", "z"], ["a", "z"])
    assert lines_match(["pid ... up"], ["pid 42 up  "]) and not lines_match(["pid ... up"], ["pid 42 down"])
    assert not lines_match(["a", "z"], ["a", "b", "z"]) and not lines_match(["a"], ["a", "b"])
    assert lines_match(["x [1, 2] (y)"], ["x [1, 2] (y)"]) and not lines_match(["x.y"], ["xzy"])


@pytest.mark.skipif(not (shutil.which("nc") and shutil.which("redis-cli")),
                    reason="QUICKSTART uses nc and redis-cli (apt: netcat-openbsd, redis-tools)")
def test_quickstart_runs_as_written(tmp_path):
    blocks = runnable_blocks(QUICKSTART.read_text())
    assert len(blocks) >= 5, "QUICKSTART.md lost its runnable blocks"
    port = three_free_ports()
    run = run_doc("QUICKSTART.md", blocks, cwd=ROOT, scope=tmp_path,
                  env={"KV_PORT": str(port), "KV_DATA": str(tmp_path / "data")})
    run.check(ports={str(d): str(port + i) for i, d in enumerate(DEFAULT_PORTS)})
    # The walk-through ends with --action stop: nothing of the cluster may still run (the
    # standalone node of section 4 runs in a terminal of its own until the end).
    assert not run.left_running, f"still running after the QUICKSTART's stop: {run.left_running}"


def test_client_guide_examples_run(capsys):
    """docs/CLIENT_GUIDE.md's runnable Python blocks, in order, against a fresh 3-node cluster:
    the guide's 127.0.0.1:6379 becomes the primary's address and 6380/6381 the others'."""
    blocks = [b.body for b in runnable_blocks(CLIENT_GUIDE.read_text()) if b.lang == "python"]
    assert len(blocks) >= 3, "CLIENT_GUIDE.md lost its runnable examples"
    with LocalCluster(n=3) as c:
        c.start()
        primary = c.wait_for_single_primary()
        order = [primary] + [n for n in c.ids if n != primary]
        ports = {str(p): c.addr(nid)[1] for p, nid in zip(DEFAULT_PORTS, order)}
        for i, body in enumerate(blocks):
            code = re.sub(r"\b(6379|6380|6381)\b", lambda m: str(ports[m.group(1)]), body)
            exec(compile(code, f"docs/CLIENT_GUIDE.md block {i + 1}", "exec"), {"__name__": "client_guide"})
        # What the examples wrote is in the cluster (KVStoreClient answers errors as dicts, so
        # a silently refused write would show here).
        with ClusterClient(c.addresses()) as cc:
            assert cc.get("hits") == 6 and cc.get("counter") == 1 and cc.get("a") == 1
            assert cc.get("k") == [1, 2] and cc.get("greeting") == "hello"
            assert cc.get("user:1", None) is None and cc.ttl("session") == -1
        c.check_safety()


def test_testing_guide_runs_as_written(tmp_path):
    """docs/TESTING_GUIDE.md's runnable blocks (the simulation's replay tool), in order."""
    blocks = runnable_blocks(TESTING_GUIDE.read_text())
    assert len(blocks) >= 1, "TESTING_GUIDE.md lost its runnable blocks"
    run = run_doc("TESTING_GUIDE.md", blocks, cwd=ROOT, scope=tmp_path)
    run.check()
