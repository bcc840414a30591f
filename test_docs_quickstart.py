"""docs/QUICKSTART.md, run as written: its blocks marked runnable, in order, on a fresh cluster.

A fenced block opened with ```sh runnable is shell; ```python runnable is fed to `python -`.
In a shell block a line starting with "$ " is a command whose output follows it in the block
(compared line by line, after the default ports 6379/6380/6381 in it are replaced by the
test's); every other line is a command that must succeed. All blocks run in one bash process
(`set -e`), so a variable set in one block (KV_PORT, KV_DATA, PRIMARY) holds in the next.

The test picks three free consecutive ports (KV_PORT) and a temporary cluster directory
(KV_DATA); the whole run is bounded in time, and every process the cluster manager recorded in
KV_DATA/cluster_state.json is stopped by PID at the end, whatever happened.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kv_client import ClusterClient
from kv_localcluster import LocalCluster, port_in_use, pick_free_ports

ROOT = Path(__file__).resolve().parent
QUICKSTART = ROOT / "docs" / "QUICKSTART.md"
CLIENT_GUIDE = ROOT / "docs" / "CLIENT_GUIDE.md"
DEFAULT_PORTS = (6379, 6380, 6381)
RUN_TIMEOUT = 150          # seconds for the whole walk-through (the demos take ~10 s of it)

_FENCE = re.compile(r"^```(\w+) runnable\s*$(.*?)^```\s*$", re.M | re.S)


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """[(language, body)] of the runnable blocks, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def build_script(blocks) -> tuple[str, list[tuple[str, list[str]]]]:
    """One bash script for every block, and [(command, expected output lines or None)] in the
    order their markers appear in the script's output."""
    steps: list[tuple[str, list[str] | None]] = []
    lines = ["set -e -o pipefail"]

    def step(cmd: str, expected, run: str):
        lines.append(f"echo '@@STEP {len(steps)}'")
        steps.append((cmd, expected))
        lines.append(run)

    for lang, body in blocks:
        if lang == "python":
            step(body.strip(), None, f"python - <<'KV_PYTHON_EOF'\n{body}KV_PYTHON_EOF")
            continue
        assert lang == "sh", f"a runnable block in {lang!r}: only sh and python are run"
        current = None
        for raw in body.splitlines():
            if raw.startswith("$ "):
                current = [raw[2:], []]
                step(current[0], current[1], current[0])
            elif current is not None:
                current[1].append(raw)
            elif raw.strip() and not raw.lstrip().startswith("#"):
                step(raw, None, raw)
    lines.append("echo '@@STEP end'")
    return "\n".join(lines) + "\n", steps


def split_output(out: str) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {}
    key = None
    for line in out.splitlines():
        m = re.fullmatch(r"@@STEP (\d+|end)", line)
        if m:
            key = m.group(1)
            parts[key] = []
        elif key is not None:
            parts[key].append(line)
    return parts


def three_free_ports() -> int:
    for _ in range(50):
        base = pick_free_ports(1)[0]
        if base + 2 < 65536 and all(port_in_use("127.0.0.1", base + i) is None for i in (1, 2)) \
                and not set(DEFAULT_PORTS) & {base, base + 1, base + 2}:
            return base
    pytest.fail("no three consecutive free ports found")


def stop_recorded_processes(data_dir: Path) -> None:
    """SIGKILL whatever the cluster manager recorded and still runs (after `--action stop` this
    normally finds nothing)."""
    state = data_dir / "cluster_state.json"
    if not state.exists():
        return
    s = json.loads(state.read_text())
    pids = [n.get("pid") for n in (s.get("nodes") or {}).values()] + [s.get("manager_pid")]
    for pid in pids:
        if not pid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue                       # gone
        if str(data_dir).encode() in cmdline or b"cluster_manager" in cmdline:
            os.kill(pid, signal.SIGKILL)


def test_parser_reads_expected_output():
    script, steps = build_script(runnable_blocks(
        "```sh runnable\nexport A=1\n$ echo hi\nhi\n```\n```python runnable\nprint(2)\n```\n"
        "```sh\nnot run\n```\n"))
    assert [s[0] for s in steps] == ["export A=1", "echo hi", "print(2)"]
    assert steps[1][1] == ["hi"] and "not run" not in script


@pytest.mark.skipif(not (shutil.which("nc") and shutil.which("redis-cli")),
                    reason="QUICKSTART uses nc and redis-cli (apt: netcat-openbsd, redis-tools)")
def test_quickstart_runs_as_written(tmp_path):
    blocks = runnable_blocks(QUICKSTART.read_text())
    assert len(blocks) >= 5, "QUICKSTART.md lost its runnable blocks"
    script, steps = build_script(blocks)
    port = three_free_ports()
    data = tmp_path / "data"
    env = dict(os.environ, KV_PORT=str(port), KV_DATA=str(data), NO_COLOR="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"QUICKSTART did not finish within {RUN_TIMEOUT} s; output:\n{out[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stop_recorded_processes(data)
    parts = split_output(out)
    if proc.returncode != 0 or "end" not in parts:
        ran = [k for k in parts if k != "end"]
        last = int(ran[-1]) if ran else 0
        pytest.fail(f"QUICKSTART step failed (exit {proc.returncode}): {steps[last][0]}\n"
                    f"its output:\n" + "\n".join(parts.get(str(last), [])[-40:]))
    ports = {str(d): str(port + i) for i, d in enumerate(DEFAULT_PORTS)}
    for i, (cmd, expected) in enumerate(steps):
        if expected is None:
            continue
        want = [re.sub(r"\b(6379|6380|6381)\b", lambda m: ports[m.group(1)], line) for line in expected]
        got = parts.get(str(i), [])
        assert [g.rstrip() for g in got] == [w.rstrip() for w in want], \
            f"QUICKSTART promises for `{cmd}`:\n" + "\n".join(want) + "\nbut it printed:\n" + "\n".join(got)
    # The walk-through ends with --action stop: nothing of the cluster may still run.
    state = json.loads((data / "cluster_state.json").read_text()) if (data / "cluster_state.json").exists() else {}
    alive = [n.get("pid") for n in (state.get("nodes") or {}).values()
             if n.get("pid") and Path(f"/proc/{n['pid']}").exists()]
    assert not alive, f"node processes still running after the QUICKSTART's stop: {alive}"


def test_client_guide_examples_run(capsys):
    """docs/CLIENT_GUIDE.md's runnable Python blocks, in order, against a fresh 3-node cluster:
    the guide's 127.0.0.1:6379 becomes the primary's address and 6380/6381 the others'."""
    blocks = [body for lang, body in runnable_blocks(CLIENT_GUIDE.read_text()) if lang == "python"]
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
