"""`s2s-queue run` with a broken handler plug-in installed: one line, exit 2, before connecting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, daemon_env


def install_entry_point(site: Path, value: str) -> None:
    """Metadata of an installed distribution declaring one `s2s_queue.handlers` entry point."""
    info = site / "broken_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[s2s_queue.handlers]\nbroken = {value}\n")


def test_a_plugin_that_fails_to_import_stops_start_up_naming_it(tmp_path):
    """The daemon exits 2 with the entry point and the import error, and never connects."""
    install_entry_point(tmp_path, "no_such_module_s2s:HANDLERS")
    env = {**os.environ, **daemon_env("unused", S2SQ_AMQP_URL="amqp://guest:guest@127.0.0.1:1/"),
           "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "daemon", "run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [(
        "s2s-queue: handler plug-in 'broken = no_such_module_s2s:HANDLERS' (s2s_queue.handlers) "
        "failed to load: ModuleNotFoundError: No module named 'no_such_module_s2s'"
    )]
