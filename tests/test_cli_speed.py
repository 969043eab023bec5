"""Fast feedback (issue 13, item 7): ``robustagg --help`` and ``robustagg list`` do not import
torch, small models default to one torch thread, the grid runner reports progress; the
default arrival model is listed (issue 13, item 8)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustagg as ra
from robustagg import cli

ROOT = Path(__file__).resolve().parents[1]


def run_and_check_torch(args):
    """Run ``robustagg ARGS`` in a fresh interpreter; return (stdout, whether torch got imported)."""
    code = ("import sys\nfrom robustagg import cli\ntry:\n    cli.main(%r)\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % (args,))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stdout.strip().splitlines()[-1] == "TORCH"


@pytest.mark.parametrize("args, shows", [(["--help"], "usage: robustagg"), (["train", "--help"], "--resume"),
                                         (["list", "rules"], "trimmed-mean"), (["list", "datasets"], "digits"),
                                         (["list", "participation"], "full"), (["list", "models"], "mlp"),
                                         (["list"], "poisoning: augmented"), (["list", "methods"], "fa+roe")])
def test_help_and_list_do_not_import_torch(args, shows):
    stdout, torch_imported = run_and_check_torch(args)
    assert shows in stdout and not torch_imported, stdout


@pytest.mark.parametrize("family", list(cli.FAMILIES))
def test_list_reads_the_same_names_as_the_registries(family):
    live = {"rules": ra.available, "attacks": ra.attacks.available, "faults": ra.faults.available,
            "poisoning": ra.poisoning.available, "participation": ra.participation.available,
            "datasets": ra.data.available, "models": ra.models.available,
            "methods": ra.election.available_methods}[family]
    assert cli.registered_names(family) == live()


def test_the_default_arrival_model_full_is_listed_and_builds(capsys):
    assert cli.main(["list", "participation"]) == 0
    assert "full" in capsys.readouterr().out.split(": ")[1].split(", ")
    arrival = ra.participation.get("full")
    assert arrival.arrived(0, 4, 0, torch.rand(4).numpy()).all()


def test_small_models_default_to_one_thread(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "logistic"\n[run]\nsteps = 2\neval_every = 2\n')
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli.main(["train", str(path), "--out", "", "--no-progress"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert cli.main(["train", str(path), "--out", "", "--no-progress", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_the_grid_runner_prints_progress_per_run(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "experiments"))
    import _repro as rp

    base = {"model": {"name": "logistic"}, "workers": {"n": 4, "f": 0}, "run": {"steps": 2, "eval_every": 2}}
    jobs = [{"key": f"r{i}", "config": dict(base, run=dict(base["run"], seed=i))} for i in range(2)]
    rp.run_grid(jobs, tmp_path, processes=1, progress=True)
    out = capsys.readouterr().out
    assert "training 2" in out and "[1/2] r0" in out and "[2/2] r1" in out and "s left" in out
