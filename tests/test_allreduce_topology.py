"""The ``allreduce`` topology of the distributed trainer (issue 16, items 4 and 5): 2 gloo
processes, no server, reach the in-process parameter server's model within float tolerance,
with a Gram rule (krum) and a coordinate rule (trimmed-mean), without attack, with a NaN fault,
with the mean-based attacks and with those built on coordinate shards (mimic, *-opt);
unsupported attacks are refused with a one-line error. A rank that dies or hangs:
tests/test_rank_failures.py (both topologies).

Run as a script (``torchrun ... tests/test_allreduce_topology.py OUT``) this file is one rank
that trains every case of :data:`CASES` and saves the final models in ``OUT``.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subprocess_env import child_env

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
ATOL = 1e-5

BASE = """
[data]
name = "digits"

[model]
name = "mlp"
params = {hidden = [16]}

[workers]
n = 7
f = 1
batch_size = 16

[optimizer]
lr = 0.3

[run]
steps = 6
eval_every = 6
seed = 5
name = "topo"
"""

RULES = {"krum": '[aggregator]\nname = "krum"\n', "trimmed-mean": '[aggregator]\nname = "trimmed-mean"\n'}
SETTINGS = {
    "none": "",
    # worker 2 (rank 0) sends NaN in every step: dropped and counted against f
    "nan-fault": '[[faults]]\nname = "nonfinite"\nparams = {workers = [2]}\n',
    "alie": '[attack]\nname = "alie"\n',
    # missing rows (Bernoulli arrivals, a dropping fault) under a mean-only attack
    "sign-flip-partial": '[attack]\nname = "sign-flip"\n\n[participation]\n'
                         'arrival = {name = "bernoulli", params = {p = 0.7}}\n\n'
                         '[[faults]]\nname = "drop"\nparams = {q = 0.2}\n',
    "gaussian": '[attack]\nname = "gaussian"\nparams = {sigma = 1.0}\n',
    # a NaN attacker and a NaN fault: 2 > f non-finite rows, every step is skipped on every rank
    "nan-attack-and-fault": '[attack]\nname = "nan"\n\n[[faults]]\nname = "nonfinite"\nparams = {workers = [2]}\n',
    # attacks built on coordinate shards: the honest row chosen from the summed centred Gram
    # matrix; the factor line-searched against the rule run on the shards
    "mimic": '[attack]\nname = "mimic"\nparams = {index = "max-variance"}\n',
    "mimic-index": '[attack]\nname = "mimic"\nparams = {index = 4}\n',
    "alie-opt": '[attack]\nname = "alie-opt"\n',
    "foe-opt": '[attack]\nname = "foe-opt"\n',
}
CASES = {f"{s}-{r}": BASE + SETTINGS[s] + "\n" + RULES[r] for s in SETTINGS for r in RULES
         if s in ("none", "nan-fault", "alie", "mimic", "alie-opt") or r == "krum"}

COUNTS = ("rows", "skipped", "skipped_nonfinite")  # history columns that must agree exactly

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=child_env(), cwd=ROOT)


def in_process(text: str):
    from robustagg.train import ParameterServer, TrainConfig

    ps = ParameterServer(TrainConfig.from_toml_string(text, ["run.out_dir=''", "run.checkpoint_every=0"]))
    ps.run()
    return ps


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("topo")
    done = _torchrun(str(Path(__file__)), str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_reach_the_in_process_model(two_ranks, case):
    got = torch.load(two_ranks / f"{case}.pt")
    ref = in_process(CASES[case])
    assert got["t"] == ref.t
    assert got["ranks_agree"], "the ranks' models differ"
    assert got["writes_run_dir"] == [True, False]  # rank 1 leaves rank 0's files alone
    assert torch.allclose(got["x"], ref.x, rtol=0, atol=ATOL), (got["x"] - ref.x).abs().max()
    assert got["counts"] == [{k: r.get(k) for k in COUNTS} for r in ref.history]
    assert got["loss"] == pytest.approx(ref.history.column("loss"), rel=1e-5)
    if "alie" in case and "opt" not in case or "mimic" in case:
        assert got["attack_last"] == ref.attack.last
    if "opt" in case:  # the same factor from the same candidates; the damage up to summation order
        last, ref_last = got["attack_last"], ref.attack.last
        assert (last["factor"], last["evaluations"]) == (ref_last["factor"], ref_last["evaluations"])
        assert [z for z, _ in last["trace"]] == [z for z, _ in ref_last["trace"]]
        assert [v for _, v in last["trace"]] == pytest.approx([v for _, v in ref_last["trace"]], rel=1e-5)


def test_cli_topology_allreduce_writes_the_results(tmp_path):
    config = tmp_path / "topo.toml"
    config.write_text(CASES["alie-krum"])
    done = _torchrun("-m", "robustagg.train.distributed", str(config), "--out", str(tmp_path), "--no-progress",
                     "--timeout", "60", "--topology", "allreduce", "--set", "run.checkpoint_every=6")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from robustagg.train import checkpoint

    state = checkpoint.load(tmp_path / "topo" / "checkpoint.pt")
    ref = in_process(CASES["alie-krum"])
    assert state["t"] == 6
    assert torch.allclose(state["trainer"]["x"], ref.x, rtol=0, atol=ATOL)
    assert abs(state["history"][-1]["accuracy"] - ref.history.last("accuracy")) < 0.02
    for name in ("config.toml", "metrics.csv"):
        assert (tmp_path / "topo" / name).exists()


@pytest.mark.filterwarnings("ignore:step .* the step is skipped:RuntimeWarning")
def test_killed_and_resumed_run_matches_in_process(tmp_path):
    """Checkpoints carry every rank's loader positions and worker momenta: a run stopped at
    step 3 and resumed (on every rank, from rank 0's file) reaches the uninterrupted model."""
    text = CASES["sign-flip-partial-krum"].replace("lr = 0.3", 'lr = 0.3\nmomentum = 0.9\nmomentum_at = "worker"')
    config = tmp_path / "topo.toml"
    config.write_text(text)
    common = ("-m", "robustagg.train.distributed", str(config), "--out", str(tmp_path), "--no-progress",
              "--timeout", "60", "--topology", "allreduce", "--set", "run.checkpoint_every=3")
    for extra in (("--steps", "3"), ("--resume",)):
        done = _torchrun(*common, *extra)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from robustagg.train import checkpoint

    state = checkpoint.load(tmp_path / "topo" / "checkpoint.pt")
    ref = in_process(text)
    assert state["t"] == 6
    assert torch.allclose(state["trainer"]["x"], ref.x, rtol=0, atol=ATOL), (state["trainer"]["x"] - ref.x).abs().max()
    assert torch.allclose(state["trainer"]["worker_momentum"], ref.worker_momentum, rtol=0, atol=ATOL)


@pytest.mark.parametrize("writes", [True, False])
def test_only_the_writing_rank_removes_stale_temporaries(tmp_path, writes):
    """A rank that does not write the run directory must not delete what the writer has in
    flight (rank 1 once removed rank 0's ``config.toml`` temporary mid-write)."""
    from robustagg.train import ParameterServer, TrainConfig

    ps = ParameterServer(TrainConfig.from_toml_string(BASE + RULES["krum"], [f"run.out_dir='{tmp_path}'",
                                                                          "run.checkpoint_every=0"]))
    ps.writes_run_dir = writes
    ps.run_dir.mkdir(parents=True)
    temporary = ps.run_dir / ".config.toml.abc123.tmp"
    temporary.write_text("in flight")
    ps.run(0, write=False)
    assert temporary.exists() is not writes


@pytest.mark.parametrize("attack, why", [
    ('name = "reverse"\nparams = {per_worker = true}', "'reverse'"),
])
def test_unsupported_attacks_are_refused_in_one_line(tmp_path, capsys, attack, why):
    from robustagg.train.distributed import main

    config = tmp_path / "topo.toml"
    config.write_text(BASE + "\n[attack]\n" + attack + "\n" + RULES["krum"])
    assert main([str(config), "--topology", "allreduce", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "--topology allreduce" in err, err
    assert not (tmp_path / "topo").exists()


def test_attack_objects_outside_the_supported_list_are_refused():
    from robustagg.attacks.classic import Mimic
    from robustagg.attacks.gradient_label_flip import GradientLabelFlip
    from robustagg.train.allreduce import check_topology

    class Custom(Mimic):  # a subclass may look at the rows in any way: not assumed shardable
        pass

    check_topology(Mimic(), "sgd")
    flip = GradientLabelFlip(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 2)
    for attack in (Custom(), flip):
        with pytest.raises(ValueError, match="needs every honest update in one place"):
            check_topology(attack, "sgd")


def test_afa_cs_and_no_server_compute_are_refused(tmp_path, capsys):
    from robustagg.train.distributed import main

    config = tmp_path / "topo.toml"
    config.write_text(BASE + RULES["krum"])
    assert main([str(config), "--topology", "allreduce", "--no-server-compute"]) == 2
    assert "--no-server-compute" in capsys.readouterr().err
    config.write_text('mode = "afa-cs"\n' + BASE + RULES["krum"])
    assert main([str(config), "--topology", "allreduce"]) == 2
    assert "afa-cs" in capsys.readouterr().err


@pytest.mark.parametrize("name, params", [("sign-flip", {}), ("reverse", {}), ("ipm", {}), ("foe", {"z": 2.0}),
                                          ("alie", {}), ("alie", {"z": 0.7}), ("gaussian", {"sigma": 2.0}),
                                          ("random", {}), ("zero", {}), ("nan", {})])
@pytest.mark.parametrize("h", [1, 5])
def test_byzantine_rows_from_mean_and_std_equal_the_attack(name, params, h):
    """What the last rank builds from the all-reduced statistics is the attack on the honest stack."""
    from robustagg import attacks
    from robustagg.train.allreduce import byzantine_rows

    H = torch.randn(h, 9, generator=torch.Generator().manual_seed(h), dtype=torch.float64)
    attack = attacks.get(name, **params)
    f = 1 if h == 1 else 3  # ALIE's formula needs f <= floor(n/2)
    ref = attack(H, f, generator=torch.Generator().manual_seed(1))
    std = H.std(dim=0) if h > 1 else None
    got = byzantine_rows(attack, H.mean(dim=0), std, h, f, None, torch.Generator().manual_seed(1))
    assert torch.allclose(got, ref, equal_nan=True, atol=1e-12), name


def _rank_main(out: Path) -> None:
    import torch.distributed as dist

    from robustagg.train import TrainConfig
    from robustagg.train.allreduce import AllReduceTrainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        for case, text in CASES.items():
            trainer = AllReduceTrainer(TrainConfig.from_toml_string(text, ["run.out_dir=''", "run.checkpoint_every=0"]),
                                       timeout=60)
            trainer.run()
            xs = [torch.empty_like(trainer.x) for _ in range(trainer.world)]
            dist.all_gather(xs, trainer.x)
            writes = [None] * trainer.world
            dist.all_gather_object(writes, trainer.writes_run_dir)
            if trainer.rank == 0:
                torch.save({"x": trainer.x, "t": trainer.t, "ranks_agree": all(torch.equal(x, xs[0]) for x in xs),
                            "counts": [{k: r.get(k) for k in COUNTS} for r in trainer.history],
                            "loss": trainer.history.column("loss"),
                            "attack_last": getattr(trainer.attack, "last", None),
                            "writes_run_dir": writes}, out / f"{case}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
