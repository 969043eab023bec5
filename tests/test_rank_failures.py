"""A rank that dies or hangs, under both topologies of the distributed trainer
(``--topology ps`` and ``--topology allreduce``): every surviving rank stops within about
``--timeout`` with exit status 1 and one line on stderr naming the timeout and the checkpoint
to ``--resume`` from, and ``--resume`` then reaches the uninterrupted run's model.

The two ranks are started directly (not through torchrun, which would stop the survivor
itself as soon as one process exits). Run as a script (``python tests/test_rank_failures.py
RANK T HOW ARGS...``) this file is one rank of the launcher whose rank ``RANK`` exits
(status 3) or hangs when it starts step ``T + 1``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from subprocess_env import child_env

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120

CONFIG = """
[data]
name = "digits"

[model]
name = "mlp"
params = {hidden = [16]}

[workers]
n = 7
f = 1
batch_size = 16

[attack]
name = "sign-flip"

[participation]
arrival = {name = "bernoulli", params = {p = 0.7}}

[[faults]]
name = "drop"
params = {q = 0.2}

[aggregator]
name = "krum"

[optimizer]
lr = 0.3
momentum = 0.9
momentum_at = "worker"

[run]
steps = 6
eval_every = 6
seed = 5
name = "dies"
"""

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(text: str):
    from robustagg.train import ParameterServer, TrainConfig

    ps = ParameterServer(TrainConfig.from_toml_string(text, ["run.out_dir=''", "run.checkpoint_every=0"]))
    ps.run()
    return ps


def _two_ranks(rank: int, t: int, how: str, args) -> tuple:
    """Launch the 2 ranks, rank ``rank`` exiting or hanging at the start of step ``t + 1``;
    wait for the other one. Returns ``(exit statuses, the survivor's stderr, seconds waited)``."""
    port, procs = str(_free_port()), []
    for r in range(2):
        env = dict(child_env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__)), str(rank), str(t), how, *args],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    survivor = procs[1 - rank]
    start = time.monotonic()
    try:
        _, err = survivor.communicate(timeout=TIMEOUT)
        waited = time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    return [p.returncode for p in procs], err, waited


def _torchrun(*args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "robustagg.train.distributed", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=child_env(), cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.filterwarnings("ignore:step .* the step is skipped:RuntimeWarning")
@pytest.mark.parametrize("topology, rank, how", [
    ("ps", 1, "exit"), ("ps", 1, "hang"), ("ps", 0, "exit"), ("ps", 0, "hang"),
    ("allreduce", 1, "exit"), ("allreduce", 1, "hang"), ("allreduce", 0, "exit"),
])
def test_a_rank_that_dies_stops_the_others_within_the_timeout_and_resume_continues(tmp_path, topology, rank, how):
    """Rank ``rank`` exits (or hangs) at the start of step 4, after the checkpoint of step 2:
    the surviving rank exits with status 1 and one line naming the timeout and the checkpoint
    within about ``--timeout`` seconds, and ``--resume`` reaches the uninterrupted model
    (bit for bit under the parameter server; up to summation order under the all-reduce)."""
    config = tmp_path / "dies.toml"
    config.write_text(CONFIG)
    common = (str(config), "--out", str(tmp_path), "--no-progress", "--timeout", "5",
              "--topology", topology, "--set", "run.checkpoint_every=2")
    status, err, waited = _two_ranks(rank, 3, how, common)
    assert status[rank] == (3 if how == "exit" else -9)
    assert status[1 - rank] == 1, err[-3000:]
    assert waited < 5 + 40  # start-up and three steps, plus at most --timeout; the default would be 600 s
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"robustagg.train.distributed: error: rank {1 - rank} stopped in step 4: "), last
    assert "--timeout 5 s" in last and "--resume to continue from the checkpoint of step 2" in last, last
    from robustagg.train import checkpoint

    assert checkpoint.load(tmp_path / "dies" / "checkpoint.pt")["t"] == 2
    _torchrun(*common, "--resume")
    state = checkpoint.load(tmp_path / "dies" / "checkpoint.pt")
    ref = in_process(CONFIG)
    assert state["t"] == 6
    x = state["trainer"]["x"]
    if topology == "ps":
        assert torch.equal(x, ref.x), (x - ref.x).abs().max()
        assert torch.equal(state["trainer"]["worker_momentum"], ref.worker_momentum)
    else:
        assert torch.allclose(x, ref.x, rtol=0, atol=1e-5), (x - ref.x).abs().max()


@pytest.mark.filterwarnings("ignore:step .* the step is skipped:RuntimeWarning")
@pytest.mark.parametrize("topology", ["ps", "allreduce"])
def test_a_resumed_run_names_the_checkpoint_it_resumed_from(tmp_path, topology):
    """No checkpoint yet: the line says so. After a resume from the checkpoint of step 4 and a
    death before the next one, rank 1 names step 4 (under the parameter server it never wrote
    or read a checkpoint: rank 0 tells it when it sends the resumed state)."""
    config = tmp_path / "dies.toml"
    config.write_text(CONFIG)
    common = (str(config), "--out", str(tmp_path), "--no-progress", "--timeout", "5",
              "--topology", topology, "--set", "run.checkpoint_every=4")
    status, err, _ = _two_ranks(0, 2, "exit", common)
    assert status == [3, 1], err[-3000:]
    assert err.strip().splitlines()[-1].startswith("robustagg.train.distributed: error: rank 1 stopped in step 3: ")
    assert "; no checkpoint was written yet (" in err, err[-3000:]
    _torchrun(*common, "--steps", "4")
    status, err, _ = _two_ranks(0, 5, "exit", (*common, "--resume"))
    assert status == [3, 1], err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("robustagg.train.distributed: error: rank 1 stopped in step 6: "), last
    assert "--resume to continue from the checkpoint of step 4" in last, last


def _die_main(rank: int, t: int, how: str, argv) -> int:
    """The launcher's ``main(argv)``, with rank ``rank`` exiting (status 3) or hanging when it
    starts step ``t + 1`` (both topologies plan every step on every rank before computing)."""
    from robustagg.train.distributed import main
    from robustagg.train.server import ParameterServer

    plan = ParameterServer.plan

    def dying(self, step):
        if self.rank == rank and step == t:
            if how == "exit":
                os._exit(3)
            time.sleep(3600)
        return plan(self, step)

    ParameterServer.plan = dying
    return main(argv)


if __name__ == "__main__":
    sys.exit(_die_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]))
