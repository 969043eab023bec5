"""Steps with more than ``f`` non-finite updates (issue 12, item 3): ``run.on_nonfinite``
skips them (counted, reported in metrics.csv and the plot) or stops the run."""

import csv

import pytest
import torch

from robustagg import cli
from robustagg.train import build

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(out_dir="", **run):
    """f = 1 NaN attacker plus a NaN fault on worker 0 in about half the steps: those steps have
    two non-finite rows, one more than the rule tolerates."""
    return {
        "workers": {"n": 6, "f": 1, "batch_size": 16},
        "model": {"name": "logistic"},
        "attack": {"name": "nan"},
        "faults": [{"name": "nonfinite", "params": {"value": "nan", "prob": 0.5, "workers": [0]}}],
        "aggregator": {"name": "median"},
        "optimizer": {"lr": 0.5},
        "run": {"steps": 12, "eval_every": 4, "seed": 3, "out_dir": str(out_dir), **run},
    }


def nan_steps_at(trainer, t):
    out = trainer.faults(t, 0, torch.ones(3))
    return out is not None and bool(out.isnan().any())


def nan_steps(trainer, steps):
    return sum(nan_steps_at(trainer, t) for t in range(steps))


def test_skip_is_the_default_and_counts_the_skipped_steps(tmp_path):
    trainer = build(config(tmp_path))
    with pytest.warns(RuntimeWarning, match="more than f=1"):
        history = trainer.run()
    expected = nan_steps(trainer, 12)
    assert 0 < expected < 12
    assert trainer.t == 12 and not any(r.get("diverged") for r in history)
    assert sum(r["skipped_nonfinite"] for r in history) == expected
    assert sum(r["skipped"] for r in history) == expected
    assert torch.isfinite(trainer.x).all()
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(float(r["skipped_nonfinite"]) for r in rows) == expected
    assert (tmp_path / "run" / "plot.png").stat().st_size > 0


def test_resume_passes_the_step_that_used_to_abort(tmp_path):
    whole = build(config(tmp_path / "whole"))
    whole.run()
    killed = build(config(tmp_path / "killed", checkpoint_every=3))
    killed.run(stop_after=7)
    resumed = build(config(tmp_path / "killed", checkpoint_every=3))
    resumed.run(resume=True)
    assert resumed.t == 12
    assert torch.equal(resumed.x, whole.x)
    assert resumed.history.column("skipped_nonfinite") == whole.history.column("skipped_nonfinite")


def test_stop_ends_the_run_at_the_first_such_step(tmp_path):
    trainer = build(config(tmp_path, on_nonfinite="stop"))
    first = next(t for t in range(12) if nan_steps_at(trainer, t))
    with pytest.warns(RuntimeWarning, match="on_nonfinite = 'stop'"):
        history = trainer.run()
    assert trainer.t == first + 1
    assert history.last("stopped") == 1 and history.last("step") == first + 1


def test_cli_skip_reports_the_count_and_stop_exits_1(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[workers]\nn = 6\nf = 1\n[model]\nname = "logistic"\n[attack]\nname = "nan"\n'
                    '[[faults]]\nname = "nonfinite"\nparams = {prob = 0.5, workers = [0]}\n'
                    '[run]\nsteps = 8\neval_every = 4\nseed = 3\n')
    assert cli.main(["train", str(path), "--out", "", "--no-progress"]) == 0
    assert "step(s) skipped: more than f updates were non-finite" in capsys.readouterr().err
    assert cli.main(["train", str(path), "--out", "", "--no-progress", "--set", "run.on_nonfinite=stop"]) == 1
    assert "run.on_nonfinite = 'stop'" in capsys.readouterr().err
