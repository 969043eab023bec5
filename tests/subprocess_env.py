"""The environment of a child process that runs this checkout's robustagg on one thread."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict:
    """``os.environ`` with this checkout first on ``PYTHONPATH``, ``OMP_NUM_THREADS=1`` and ``extra``."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", **extra)
