"""The notebook runner's memory measurement counts the kernel's own workers (training runs in worker processes)."""

import subprocess
import sys

from replicate.runner import _PeakChildMemory


def test_peak_memory_counts_the_whole_process_tree():
    m = _PeakChildMemory()
    child = ("import subprocess, sys; a = bytearray(100 * 2**20); "
             "subprocess.run([sys.executable, '-c', 'a = bytearray(300 * 2**20); import time; time.sleep(1.5)'])")
    subprocess.run([sys.executable, "-c", child], check=True)
    m.stop()
    assert m.peak_mb() > 400  # the child's 100 MiB and its own child's 300 MiB, resident at the same time
