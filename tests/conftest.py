"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: tiny models train fastest on one
    thread (the default count spins on a loaded 2-core machine), and torchrun workers and
    simulated Flower nodes run with one, so float results match theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_fresh_process(request):
    """True in the pytest process after the calling test has run (and passed) in a fresh
    interpreter; False inside that interpreter, where the test body runs. For tests that start
    Ray: two Ray sessions started and stopped in one process can crash it (a segfault seen
    once in CI), so each Ray test gets an interpreter of its own."""
    import os
    import subprocess
    import sys

    nodeid = request.node.nodeid
    if os.environ.get("ROBUSTAGG_TEST_CHILD") == nodeid:
        return False
    env = dict(os.environ, ROBUSTAGG_TEST_CHILD=nodeid)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
                         cwd=str(request.config.rootpath), env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{nodeid} in a fresh interpreter:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    assert " passed" in run.stdout, run.stdout[-2000:]
    return True
