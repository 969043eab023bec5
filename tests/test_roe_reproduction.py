"""experiments/roe.py: the ROE reproduction (DPA, DPA+ROE, FA, FA+ROE certified accuracy on mnist-5k).

The fast suite runs a smoke test at a tiny scale (outputs, resume after files
are lost, certificates against a direct computation). ``--quick`` (400 base
models, 1.5-2 minutes on the shared 2-core machine) and the full run (1,360
base models, about 3 minutes there) are marked slow: `make reproduce` runs them.
"""

import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robustagg import election as el

ROOT = Path(__file__).resolve().parents[1]


def _load_roe():
    spec = importlib.util.spec_from_file_location("roe_experiment", ROOT / "experiments" / "roe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


roe = _load_roe()
TINY = {"k": 4, "d": 2, "test_points": 60, "train": {"epochs": 1, "batch_size": 50, "lr": 0.05}}


def _check_outputs(out: Path, res: dict) -> None:
    assert {"table.md", "metrics.csv", "plot.png", "timing.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.rglob("*.tmp*"))
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(roe.METHODS) * len(roe.RADII)
    for m in roe.METHODS:
        got = [float(r["certified_accuracy"]) for r in rows if r["method"] == m]
        assert np.allclose(got, res["accuracy"][m], atol=1e-4)
        assert all(a >= b for a, b in zip(got, got[1:]))  # certified accuracy never grows with the radius
    table = (out / "table.md").read_text()
    assert "| radius | dpa | dpa+roe | fa | fa+roe |" in table and "Paper's claim" in table
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_scale_writes_everything_and_certifies_like_certify(tmp_path):
    res = roe.run(TINY, out=tmp_path, jobs=1)
    _check_outputs(tmp_path, res)
    assert res["k"] == 4 and res["d"] == 2 and res["test_points"] == 60
    assert res["timing"]["trained"] == 4 + 8
    labels = np.load(tmp_path / "dpa" / "labels.npy")
    dpa, fa = el.load_scores(tmp_path / "dpa"), el.load_scores(tmp_path / "fa")
    assert dpa.shape == (4, 60, 10) and fa.shape == (8, 60, 10)
    for m, scores, kw in [("dpa", dpa, {}), ("dpa+roe", dpa, {}), ("fa", fa, {"k": 4, "d": 2}),
                          ("fa+roe", fa, {"k": 4, "d": 2})]:
        expected = el.certified_accuracy(el.certify(scores, labels, m, **kw), roe.RADII)
        assert np.array_equal(res["accuracy"][m], expected), m
    for base in ("dpa", "fa"):
        v = res["verdict"][base]
        gains = 100 * (res["accuracy"][base + "+roe"] - res["accuracy"][base])
        assert np.allclose(v["gains"], gains) and v["holds"] == bool((gains >= -1e-9).all())


def test_resumes_after_losing_models_certificates_and_tables(tmp_path):
    first = roe.run(TINY, out=tmp_path, jobs=1)
    for name in ("fa/scores_00003.npy", "fa/scores_00006.npy", "dpa/scores_00001.npy", "fa/certs.npz",
                 "table.md", "plot.png"):
        (tmp_path / name).unlink()
    (tmp_path / "fa" / "scores_00000.npy.tmp123").write_bytes(b"half a file")  # a killed write
    again = roe.run(TINY, out=tmp_path, jobs=1)
    assert again["timing"]["this_run_trained"] == 3  # only the lost models were trained again
    assert again["timing"]["trained"] == 15  # model trainings measured in this directory
    for m in roe.METHODS:
        assert np.array_equal(again["accuracy"][m], first["accuracy"][m]), m
    assert {"table.md", "plot.png"} <= {p.name for p in tmp_path.iterdir()}
    # a complete run only reads: nothing is trained and the cached certificates are reused
    mtime = (tmp_path / "dpa" / "certs.npz").stat().st_mtime_ns
    third = roe.run(TINY, out=tmp_path, jobs=1)
    assert third["timing"]["this_run_trained"] == 0
    assert (tmp_path / "dpa" / "certs.npz").stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "timing.json").read_text())["trained"] == 15


def test_progress_shows_each_ensemble_and_is_off_by_default(tmp_path, capsys):
    roe.run(TINY, out=tmp_path, jobs=1, progress=True)
    err = capsys.readouterr().err
    assert "dpa base models: 4 to train" in err and "dpa base models: 4/4 models (100%)" in err
    assert "fa base models: 8 to train" in err and "fa base models: 8/8 models (100%)" in err
    assert len(err.splitlines()) <= 2 * 11 and "\r" not in err  # a few lines, no bar, without a terminal
    (tmp_path / "fa" / "scores_00005.npy").unlink()
    roe.run(TINY, out=tmp_path, jobs=1)
    assert capsys.readouterr().err == ""


def test_verdict_reports_where_roe_catches_up():
    acc = {"dpa": np.array([.9, .8, .7, .6, .5, .4]), "dpa+roe": np.array([.88, .8, .71, .6, .52, .45]),
           "fa": np.array([.9, .8, .7, .6, .5, .4]), "fa+roe": np.array([.9, .81, .7, .6, .5, .39])}
    v = roe.verdict(acc)
    assert not v["dpa"]["holds"] and v["dpa"]["wins_from"] == 5
    assert np.allclose(v["dpa"]["gains"], [-2, 0, 1, 0, 2, 5])
    assert not v["fa"]["holds"] and v["fa"]["wins_from"] is None
    assert roe.verdict(dict(acc, **{"fa+roe": acc["fa"]}))["fa"] == {
        "holds": True, "gains": [0.0] * 6, "mean_gain": 0.0, "min_gain": 0.0, "max_gain": 0.0, "wins_from": 0}


def _check_claim(res: dict) -> None:
    """What the measured runs show (docs/election.md, Reproduction).

    The paper's claim, ROE >= its base method at every radius, does NOT hold at
    this scale: with logistic-regression base models the run-off is about 2
    points less accurate at radius 0. What holds, and is asserted: ROE catches
    up with its base method by radius 20 and stays ahead from there, and its
    gain grows with the radius.
    """
    for base in ("dpa", "fa"):
        v = res["verdict"][base]
        assert v["wins_from"] is not None and v["wins_from"] <= 20, (base, v)
        assert v["gains"][-1] > v["gains"][0], (base, v)
        assert v["gains"][-1] > 0, (base, v)


@pytest.mark.slow  # 400 base models: 1.5-2 minutes on the shared 2-core machine, over the ~60 s fast-suite budget
@pytest.mark.timeout(600)
def test_quick_reproduction(tmp_path):
    t0 = time.perf_counter()
    res = roe.run("quick", out=tmp_path, jobs=2)
    _check_outputs(tmp_path, res)
    assert res["k"] == 80 and res["d"] == 4 and res["test_points"] == 1000
    _check_claim(res)
    assert time.perf_counter() - t0 < 300  # <= 2 minutes on a quiet machine; slack for a shared one


@pytest.mark.slow  # the reproduction of `make reproduce`: 1,360 base models, writes results/roe
@pytest.mark.timeout(1800)
def test_full_reproduction():
    t0 = time.perf_counter()
    out = ROOT / "results" / "roe"
    res = roe.run("full", out=out, jobs=2)
    _check_outputs(out, res)
    assert res["k"] == 80 and res["d"] == 16 and res["test_points"] == 1000
    _check_claim(res)
    assert time.perf_counter() - t0 < 1200  # the 20-minute budget on 2 cores


@pytest.mark.slow  # 1,360 CNN base models: about 2.5 minutes on 2 idle cores; writes results/roe-cnn
@pytest.mark.timeout(1800)
def test_cnn_reproduction():
    out = ROOT / "results" / "roe-cnn"
    res = roe.run("cnn", out=out, jobs=2)
    _check_outputs(out, res)
    # measured (docs/reproductions.md): with CNN base models ROE is within 1 point at radius 0,
    # ahead of its base method from radius 10 on, and 3+ points ahead at radius 25 (the paper's
    # "3-4 points"); not ahead at every radius, so the paper's stronger claim is not asserted
    for base in ("dpa", "fa"):
        v = res["verdict"][base]
        assert v["gains"][0] > -1.5, (base, v)
        assert v["wins_from"] is not None and v["wins_from"] <= 10, (base, v)
        assert v["gains"][-1] >= 3.0, (base, v)
