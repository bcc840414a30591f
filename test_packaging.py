"""`pip install .`: the console scripts and the flat modules, in a fresh virtual environment.

    test_every_runtime_module_is_packaged    setup.py installs every top-level module but the tests
    test_pip_install_in_a_fresh_venv         python -m venv; pip install . (from a copy of the
                                             tree); kv-store-server, kv-cluster and kv-client run;
                                             kv-cluster --action start --detach, health, stop

The venv test needs pip to reach the package index (setuptools for the build, psutil and
colorama for the install), as the issue's check does.  It copies the tracked files to a temp
dir first so the build leaves nothing in the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

import psutil
import pytest

from kv_localcluster import wait_until
from test_cluster_manager import free_base_port, gone

HERE = os.path.dirname(os.path.abspath(__file__))


def _pyproject() -> dict:
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_console_scripts_point_at_main():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {"kv-store-server": "kv_store_server:main", "kv-cluster": "cluster_manager:main",
                       "kv-client": "example_client:main"}
    for target in scripts.values():
        mod, _, func = target.partition(":")
        with open(os.path.join(HERE, mod + ".py")) as f:
            assert f"\ndef {func}(" in f.read()


def test_every_runtime_module_is_packaged():
    import setup as build
    mods = build.runtime_modules()
    assert {"kv_store_server", "cluster_manager", "example_client", "kv_client", "kv_protocol",
            "kv_sentinel", "kv_info"} <= set(mods)
    assert not [m for m in mods if m.startswith("test_") or m == "setup"]


def _copy_tree(dst: str) -> None:
    """The files a release would hold: everything git tracks, plus untracked new modules."""
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=HERE,
                       capture_output=True, text=True, check=True)
    for rel in r.stdout.split():
        src = os.path.join(HERE, rel)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def _run(cmd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def test_pip_install_in_a_fresh_venv(tmp_path):
    if shutil.which("git") is None:
        pytest.fail("git is needed to list the files of the release")
    src = str(tmp_path / "src")
    _copy_tree(src)
    venv = str(tmp_path / "venv")
    r = _run([sys.executable, "-m", "venv", venv])
    assert r.returncode == 0, r.stderr
    bin_dir = os.path.join(venv, "bin")
    pip = os.path.join(bin_dir, "pip")
    r = _run([pip, "install", "--disable-pip-version-check", "-q", src], timeout=300)
    assert r.returncode == 0, f"pip install . failed:\n{r.stdout}\n{r.stderr}"

    # the three console scripts exist and run
    for script in ("kv-store-server", "kv-cluster", "kv-client"):
        path = os.path.join(bin_dir, script)
        assert os.access(path, os.X_OK), f"{script} was not installed"
        r = _run([path, "--help"], timeout=30)
        assert r.returncode == 0 and "usage:" in r.stdout, (script, r.stdout, r.stderr)

    # every flat module imports from the venv (not from this checkout)
    import setup as build
    py = os.path.join(bin_dir, "python")
    mods = build.runtime_modules()
    r = _run([py, "-c", f"import {', '.join(mods)}; print(kv_store_server.__file__)"], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(venv), r.stdout

    # kv-cluster --action start --detach, then health, then stop
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    data = str(tmp_path / "data")
    base = free_base_port(3)
    kvc = os.path.join(bin_dir, "kv-cluster")
    args = ["--data-dir", data, "--base-port", str(base), "--nodes", "3", "--no-color"]
    r = _run([kvc, "--action", "start", "--detach", *args], timeout=60, cwd=str(tmp_path), env=env)
    state_pids = _pids_under(data)
    try:
        assert r.returncode == 0, f"start --detach failed:\n{r.stdout}\n{r.stderr}"
        assert "cluster started in the background" in r.stdout
        assert f"stop it with: kv-cluster --action stop --data-dir {data}" in r.stdout
        r = _run([kvc, "--action", "health", "--wait", "10", *args], timeout=60, cwd=str(tmp_path), env=env)
        assert r.returncode == 0, f"health failed:\n{r.stdout}\n{r.stderr}"
        state_pids = _pids_under(data)
        assert len(state_pids) >= 4, state_pids       # the supervisor and three nodes
        r = _run([kvc, "--action", "stop", *args], timeout=60, cwd=str(tmp_path), env=env)
        assert r.returncode == 0, f"stop failed:\n{r.stdout}\n{r.stderr}"
        wait_until(lambda: all(gone(p) for p in state_pids), 15, "every cluster process to exit")
    finally:
        for pid in state_pids:
            if not gone(pid):
                os.kill(pid, 9)


def _pids_under(data_dir: str) -> list[int]:
    """PIDs of processes whose command line names data_dir (the supervisor and its nodes)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(data_dir in a for a in cmd):
            found.append(p.info["pid"])
    return found
