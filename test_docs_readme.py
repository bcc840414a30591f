"""README.md, run as written: its runnable blocks in order, on a fresh clone, on the default ports.

The convention is test_docs_quickstart.py's (it defines it). The README names 6379-6381 and
./data as they stand, so the run copies the tracked files to a temporary directory and runs
there inside a network namespace of its own: the commands are pasted exactly as written, and
the machine's own ports and files are never touched. "Two commands" starts the foreground
cluster in a terminal of its own (a background block); "Try it" waits for it (`health
--wait`), talks to it, runs the demos, drills a kill and a restart, and stops it; "By hand"
starts the seed's three nodes in terminals of their own and reads back what the cluster stored.

`--demo interactive` reads the REPL session below from the run's standard input, as if typed.
Needs root (the namespace), nc and redis-cli; the whole run is bounded in time, and everything
it started is stopped by PID at the end.
"""
from __future__ import annotations

import re
import shutil

import pytest

from test_docs_quickstart import fresh_clone, need_netns, run_doc, runnable_blocks

REPL_SESSION = "set readme:k 42\nget readme:k\nquit\n"


@pytest.mark.skipif(not (shutil.which("nc") and shutil.which("redis-cli")),
                    reason="README uses nc and redis-cli (apt: netcat-openbsd, redis-tools)")
def test_readme_runs_as_written(tmp_path):
    need_netns()
    clone = fresh_clone(tmp_path / "clone")
    blocks = runnable_blocks((clone / "README.md").read_text())
    assert sum(b.background for b in blocks) == 2 and len(blocks) >= 5, "README.md lost its runnable blocks"
    run = run_doc("README.md", blocks, cwd=clone, scope=tmp_path, netns=True, stdin=REPL_SESSION)
    run.check()
    # What the README says the commands show, beyond their exit status:
    repl = run.output_of("--demo interactive")
    assert any(re.fullmatch(r"kv:\S+> 42", line.strip()) for line in repl), repl
    assert any(re.match(r"role:(master|slave)\s*$", line) for line in run.output_of("info replication"))
    status = run.output_of("--action status")
    assert sum(" primary " in line for line in status) == 1 and "ROLE" in status[1], status
    assert "passed, 0 failed" in "\n".join(run.output_of("--demo all"))
    # Try it ends with --action stop: nothing but the seed's three nodes (background) still ran.
    assert not run.left_running, f"still running after the README's stop: {run.left_running}"
