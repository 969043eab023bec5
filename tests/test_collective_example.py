"""experiments/ddp_example.py runs under torchrun (3 processes, the last one Byzantine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_example_trains_with_a_robust_rule():
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
           str(ROOT / "experiments" / "ddp_example.py"), "--steps", "30"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("rule="))
    assert "trained" in line, line
    accuracy = float(line.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.5, line  # ten classes: chance is 0.1
