"""torch.distributed parameter server (issue 5, item 5): 3 CPU processes (gloo) reach the
same model, bit for bit, as the in-process trainer with the same seed; a killed distributed
run resumes to that same model.

The processes are started by ``torchrun --standalone`` (a free port on localhost) on the
command users run; each run has a timeout so a hang fails the test instead of blocking it.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from robustagg.train import ParameterServer, TrainConfig, checkpoint
from subprocess_env import child_env
from robustagg.train.distributed import DistributedParameterServer, assign_workers

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120

BASE = """
[data]
name = "digits"

[model]
name = "mlp"
params = {hidden = [16], dropout = 0.1}

[workers]
n = 10
f = 2
batch_size = 16

[attack]
name = "alie"

[aggregator]
name = "trimmed-mean"

[optimizer]
lr = 0.3

[run]
steps = 20
eval_every = 10
checkpoint_every = 20
seed = 3
name = "dist"
"""

# missing rows (Bernoulli arrivals, a dropping fault), stale models, worker momentum, a
# stateful pipeline and local steps: everything that crosses process boundaries
ANARCHIC = BASE.replace('name = "alie"', 'name = "alie"\n\n[participation]\n'
                        'arrival = {name = "bernoulli", params = {p = 0.7}}\n'
                        'local_steps = {name = "uniform-steps", params = {low = 1, high = 3}}\n'
                        'delay = {name = "uniform-delay", params = {max_delay = 2}}\n\n'
                        '[[faults]]\nname = "drop"\nparams = {q = 0.2}\n')
ANARCHIC = ANARCHIC.replace('[aggregator]\nname = "trimmed-mean"',
                            '[aggregator]\npipeline = [{name = "nnm"}, '
                            '{name = "centered-clipping", params = {tau = 1.0}}]')
ANARCHIC = ANARCHIC.replace("lr = 0.3", 'lr = 0.3\nmomentum = 0.9\nmomentum_at = "worker"')
ANARCHIC = ANARCHIC.replace("checkpoint_every = 20", "checkpoint_every = 5")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def torchrun(config: Path, out: Path, *args: str, nproc: int = 3) -> subprocess.CompletedProcess:
    env = child_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "robustagg.train.distributed", str(config), "--out", str(out), "--no-progress",
           "--timeout", "60", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def in_process(text: str, steps: int) -> ParameterServer:
    cfg = TrainConfig.from_toml_string(text, ["run.out_dir=''", "run.checkpoint_every=0", f"run.steps={steps}"])
    ps = ParameterServer(cfg)
    ps.run()
    return ps


def test_three_processes_reach_the_in_process_model_bitwise(tmp_path):
    config = tmp_path / "dist.toml"
    config.write_text(BASE)
    done = torchrun(config, tmp_path)
    assert "3 rank(s), backend gloo" in done.stderr
    state = checkpoint.load(tmp_path / "dist" / "checkpoint.pt")
    ref = in_process(BASE, 20)
    assert state["t"] == 20
    assert torch.equal(state["trainer"]["x"], ref.x), (state["trainer"]["x"] - ref.x).abs().max()
    assert state["history"][-1]["loss"] == ref.history.last("loss")
    assert state["history"][-1]["accuracy"] == ref.history.last("accuracy")
    for name in ("config.toml", "metrics.csv", "plot.png"):
        assert (tmp_path / "dist" / name).exists()


@pytest.mark.filterwarnings("ignore:step .* the step is skipped:RuntimeWarning")
def test_anarchic_run_killed_and_resumed_matches_in_process(tmp_path):
    """Missing and stale rows, worker momenta and loader positions survive a resume, even on
    another number of processes (first launch: rank 0 only aggregates; second: 2 processes)."""
    config = tmp_path / "dist.toml"
    config.write_text(ANARCHIC)
    torchrun(config, tmp_path, "--steps", "10", "--no-server-compute")
    assert checkpoint.load(tmp_path / "dist" / "checkpoint.pt")["t"] == 10
    torchrun(config, tmp_path, "--resume", nproc=2)  # another world size, and rank 0 computes
    state = checkpoint.load(tmp_path / "dist" / "checkpoint.pt")
    ref = in_process(ANARCHIC, 20)
    assert state["t"] == 20
    assert torch.equal(state["trainer"]["x"], ref.x), (state["trainer"]["x"] - ref.x).abs().max()
    assert torch.equal(state["trainer"]["worker_momentum"], ref.worker_momentum)
    assert [r["loss"] for r in state["history"]] == ref.history.column("loss")


def test_one_process_group_equals_the_in_process_trainer(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        cfg = TrainConfig.from_toml_string(BASE, ["run.out_dir=''", "run.checkpoint_every=0", "run.steps=6"])
        ps = DistributedParameterServer(cfg)
        assert ps.blocks == [list(range(8))]
        ps.run()
    finally:
        dist.destroy_process_group()
    assert torch.equal(ps.x, in_process(BASE, 6).x)


def test_assign_workers_is_a_balanced_partition():
    for n in range(0, 20):
        for world in range(1, 6):
            for server in (True, False):
                blocks = assign_workers(range(n), world, server_computes=server)
                assert len(blocks) == world
                assert sum(blocks, []) == list(range(n))
                sizes = [len(b) for b in (blocks if server or world == 1 else blocks[1:])]
                assert max(sizes) - min(sizes) <= 1
                if not server and world > 1:
                    assert blocks[0] == []
    with pytest.raises(ValueError):
        assign_workers(range(3), 0)


def test_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedParameterServer({"run": {"out_dir": ""}})


def test_launcher_rejects_bad_configs_in_one_line(tmp_path, capsys):
    from robustagg.train import distributed

    config = tmp_path / "bad.toml"
    config.write_text(BASE.replace("[workers]", "[workers]\nfoo = 1"))
    assert distributed.main([str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'workers.foo'" in err
    config.write_text('trainer = "peer-to-peer"\n')
    assert distributed.main([str(config)]) == 2
    assert "peer-to-peer" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
