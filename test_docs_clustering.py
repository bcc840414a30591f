"""docs/CLUSTERING.md, run as written: its runnable blocks in order, on a fresh clone.

The convention is test_docs_quickstart.py's (it defines it). The reference names fixed ports
(6379-6381, 7001-7003, 7100-7102) and ./data, so the run copies the tracked files to a
temporary directory and runs there inside a network namespace of its own, exactly as written:

- Membership: three nodes started by hand with --peers (background: terminals of their own),
  found by a client;
- Operator procedures: a cluster_manager.py cluster, add-node, remove-node, a dead node
  replaced, each with the figures it prints;
- the redis-py Sentinel example; Monitoring (health, status, INFO, STATUS, node.log);
- a second process on a data dir refused (the message and exit code shown);
- backup, restore into a new cluster on other ports (the data read back), its stop;
- recovering a node: a byte of its WAL damaged, the refusal to start (exit 4, the message),
  --check-data (PROBLEM, exit 1), restart --wipe (converged).

Beyond the transcripts the document shows, the test checks that the backup, the restored
cluster and its data agree (digest, key count) and that the wiped node's old dir was kept.
Needs root (the namespace), nc and redis-cli; the whole run is bounded in time, and everything
it started is stopped by PID at the end.
"""
from __future__ import annotations

import re
import shutil

import pytest

from test_docs_quickstart import fresh_clone, need_netns, run_doc, runnable_blocks


@pytest.mark.skipif(not (shutil.which("nc") and shutil.which("redis-cli")),
                    reason="CLUSTERING uses nc and redis-cli (apt: netcat-openbsd, redis-tools)")
def test_clustering_runs_as_written(tmp_path):
    need_netns()
    clone = fresh_clone(tmp_path / "clone")
    blocks = runnable_blocks((clone / "docs" / "CLUSTERING.md").read_text())
    assert len(blocks) >= 10, "CLUSTERING.md lost its runnable blocks"
    run = run_doc("CLUSTERING.md", blocks, cwd=clone, scope=tmp_path, netns=True)
    run.check()

    backup = " ".join(run.output_of("--action backup"))
    restore = " ".join(run.output_of("--action restore"))
    b = re.search(r"at index (\d+) \(term \d+, (\d+) keys, digest (\w+)\)", backup)
    r = re.search(r"from the backup of cluster \w+ at index (\d+) \((\d+) keys, digest (\w+)\)", restore)
    assert b and r and b.groups() == r.groups() and int(b.group(2)) >= 2, (backup, restore)
    assert f"digest {b.group(3)}" in restore.split("seeded", 1)[1].split("from the backup", 1)[1], restore
    wiped = list((clone / "data").glob("node2.wiped-*"))
    assert len(wiped) == 1 and any(wiped[0].glob("wal-*.log")), "restart --wipe kept no copy of node2's old dir"
    assert "converged after" in " ".join(run.output_of("--wipe"))
