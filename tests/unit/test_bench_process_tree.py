"""The benches' control-plane figures count the server's controller process: CPU and peak memory of
a process and its descendants."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dpufleet.bench.harness import cpu_seconds, peak_rss_mib, process_tree

BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\nprint('done', flush=True)\ntime.sleep(30)\n"


def test_cpu_and_peak_memory_include_the_children() -> None:
    own_cpu = cpu_seconds(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"done\n"
        assert child.pid in process_tree(os.getpid())
        assert cpu_seconds(os.getpid()) - own_cpu >= 0.5  # the child's burn, while it runs
        # the tree's figure holds the child's interpreter: read against this process's own peak and the
        # child's, not an earlier tree figure (another descendant of the test run may have exited meanwhile)
        total = peak_rss_mib(os.getpid())
        child_rss = peak_rss_mib(child.pid)
        status = Path(f"/proc/{os.getpid()}/status").read_text().splitlines()
        own_now = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
        assert child_rss > 5 and total >= own_now + child_rss - 1
    finally:
        child.kill()
        child.wait()
    time.sleep(0.05)
    assert cpu_seconds(os.getpid()) - own_cpu >= 0.5  # waited for: in this process's cutime
