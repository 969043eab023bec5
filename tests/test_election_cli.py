"""`robustagg certify` and `robustagg election` on tiny synthetic data, and the election config loader."""

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robustagg import cli
from robustagg import election as el
from robustagg.election import config as elcfg

RADII = [0, 1, 2, 3]


def _table(out: str) -> dict:
    """Parse the printed table: {method: [accuracy per radius]} (fractions)."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("radius"))
    methods = lines[start].split()[1:]
    rows = [ln.split() for ln in lines[start + 1:start + 1 + len(RADII)]]
    return {m: [float(r[j + 1].rstrip("%")) / 100 for r in rows] for j, m in enumerate(methods)}


def _write_ensemble(ens, scores, labels, k, d, shifts, stacked=False):
    """An ensemble directory as train_ensemble leaves it: manifest, per-model scores, their digests."""
    ens.mkdir()
    (ens / "manifest.json").write_text(json.dumps({"num_models": k * d, "k": k, "d": d, "shifts": list(shifts)}))
    names = [f"scores_{i:05d}.npy" for i in range(k * d)]
    for name, s in zip(names, scores):
        np.save(ens / name, s)
    if stacked:
        np.save(ens / "scores.npy", scores)
        names.append("scores.npy")
    (ens / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((ens / n).read_bytes()).hexdigest()}  {n}\n"
                                            for n in names))
    np.save(ens / "labels.npy", labels)
    return ens


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    scores = rng.normal(size=(6, 40, 3))
    scores[:, np.arange(40), labels] += rng.uniform(0, 2, (6, 40))  # mostly right, with margins
    np.save(tmp_path / "scores.npy", scores)
    np.save(tmp_path / "labels.npy", labels)
    return tmp_path, scores, labels


def test_certify_prints_certified_accuracy_and_writes_certificates(saved, capsys):
    path, scores, labels = saved
    argv = ["certify", str(path / "scores.npy"), "--labels", str(path / "labels.npy"), "--method", "dpa",
            "--method", "dpa+roe", "--radii", *map(str, RADII), "--out", str(path / "out" / "certs.npz")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "40 test points, 6 base models, 3 classes" in out
    table = _table(out)
    with np.load(path / "out" / "certs.npz") as f:
        assert sorted(f.files) == ["dpa", "dpa+roe"]
        for m in ("dpa", "dpa+roe"):
            expected = el.certify(scores, labels, m)
            assert np.array_equal(f[m], expected)
            assert np.allclose(table[m], el.certified_accuracy(expected, RADII), atol=5e-4)


def test_certify_fa_infers_k_and_takes_the_shift_seed(saved, capsys):
    path, scores, labels = saved
    base = ["certify", str(path / "scores.npy"), "--method", "fa+roe", "--d", "2", "--radii", *map(str, RADII)]
    assert cli.main(base + ["--seed", "5", "--out", str(path / "c.npz")]) == 0  # labels.npy found next to the scores
    with np.load(path / "c.npz") as f:
        assert np.array_equal(f["fa+roe"], el.certify(scores, labels, "fa+roe", k=3, d=2, shifts=el.fa_shifts(3, 2, 5)))
    capsys.readouterr()
    assert cli.main(base + ["--k", "3"]) == 0
    expected = el.certified_accuracy(el.certify(scores, labels, "fa+roe", k=3, d=2), RADII)
    assert np.allclose(_table(capsys.readouterr().out)["fa+roe"], expected, atol=5e-4)


def test_certify_reads_npz_and_ensemble_directories(saved, capsys):
    path, scores, labels = saved
    np.savez(path / "both.npz", scores=scores, labels=labels)
    assert cli.main(["certify", str(path / "both.npz"), "--method", "dpa", "--radii", *map(str, RADII)]) == 0
    first = _table(capsys.readouterr().out)
    ens = _write_ensemble(path / "ens", scores, labels, k=6, d=1, shifts=[0])
    assert cli.main(["certify", str(ens), "--method", "dpa", "--radii", *map(str, RADII)]) == 0
    assert _table(capsys.readouterr().out) == first


@pytest.mark.parametrize("extra, message", [
    (["--method", "fa"], "needs --d"),
    (["--method", "fa", "--d", "4"], "not a multiple of --d 4"),
    (["--method", "dpa", "--d", "2"], "FA methods only"),
    (["--method", "dpa", "--k", "5"], "needs 5 base models"),
    (["--method", "dpa", "--labels", "missing.npy"], "labels file 'missing.npy' not found"),
])
def test_certify_errors_are_one_clear_line(saved, capsys, extra, message):
    path, _, _ = saved
    assert cli.main(["certify", str(path / "scores.npy"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustagg certify: error:") and message in err


def test_certify_rejects_mismatched_labels_and_missing_scores(saved, capsys):
    path, _, labels = saved
    np.save(path / "short.npy", labels[:10])
    assert cli.main(["certify", str(path / "scores.npy"), "--labels", str(path / "short.npy"), "--method", "dpa"]) == 2
    assert "40 test points, labels have shape (10,)" in capsys.readouterr().err
    assert cli.main(["certify", str(path / "nope.npy"), "--method", "dpa"]) == 2
    assert "not found" in capsys.readouterr().err


def _write_config(path, method="dpa", **overrides):
    part = {"dpa": 'method = "dpa"\nk = 5\nhash = "sha256"',
            "fa": 'method = "fa"\nk = 3\nd = 2\nhash = "pixel-sum"\nseed = 4'}[method]
    text = textwrap.dedent(f"""\
        out = "{path / 'unused'}"
        [data]
        dataset = "synthetic"
        params = {{ n = 300, d = 5, num_classes = 3, seed = 1 }}
        test_points = 50
        [partition]
        {{part}}
        [model]
        name = "logistic"
        [train]
        epochs = 3
        lr = 0.1
        batch_size = 16
        [certify]
        radii = {RADII}
        """).replace("{part}", part)
    for key, line in overrides.items():
        text = text.replace(key, line)
    cfg = path / f"{method}.toml"
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize("method", ["dpa", "fa"])
def test_election_runs_the_pipeline_and_resumes(tmp_path, capsys, method):
    cfg = _write_config(tmp_path, method)
    out = tmp_path / "run"
    assert cli.main(["election", str(cfg), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    K = 5 if method == "dpa" else 6
    assert f"trained {K} of {K} base models" in captured.out
    assert f"{method} base models" in captured.err and f"{K}/{K}" in captured.err  # the tqdm bar
    scores, labels = el.load_scores(out), np.load(out / "labels.npy")
    assert scores.shape == (K, 50, 3)
    assert ((scores.argmax(2) == labels).mean(1) > 0.6).all()  # the base models learned something
    table = _table(captured.out)
    kw = {} if method == "dpa" else {"k": 3, "d": 2, "shifts": el.fa_shifts(3, 2, 4)}
    with np.load(out / "certs.npz") as f:
        for m in (method, method + "+roe"):
            expected = el.certify(scores, labels, m, **kw)
            assert np.array_equal(f[m], expected)
            assert np.allclose(table[m], el.certified_accuracy(expected, RADII), atol=5e-4)
    assert (out / "certified_accuracy.csv").read_text().startswith(f"radius,{method},{method}+roe\n")
    assert json.loads((out / "config.json").read_text())["partition"]["method"] == method
    # a second run finds every model and the certificates: nothing is trained again
    assert cli.main(["election", str(cfg), "--out", str(out), "--no-progress"]) == 0
    again = capsys.readouterr()
    assert f"trained 0 of {K} base models" in again.out and _table(again.out) == table
    # and `certify` reads the run's directory
    assert cli.main(["certify", str(out), "--method", method, "--radii", *map(str, RADII)]
                    + (["--d", "2", "--seed", "4"] if method == "fa" else [])) == 0
    assert _table(capsys.readouterr().out)[method] == table[method]


@pytest.mark.parametrize("edit, kind, message", [
    (("[partition]", "[parition]"), ValueError, "unknown key 'parition' in the configuration. Did you mean 'partition'?"),
    (("epochs = 3", "epoch = 3"), ValueError, "unknown key 'epoch' in train. Did you mean 'epochs'?"),
    (("epochs = 3", 'epochs = "3"'), TypeError, "train.epochs must be an integer, got '3' (str)"),
    (("lr = 0.1", "lr = -0.1"), ValueError, "lr must be >= 0.0"),
    (("lr = 0.1", "lr = true"), TypeError, "train.lr must be a real number"),
    (("k = 5\n", ""), ValueError, "partition.k is required"),
    (('method = "dpa"', 'method = "bagging"'), ValueError, "partition.method must be one of 'dpa', 'fa'"),
    (("radii = [0, 1, 2, 3]", "radii = [0, -1]"), ValueError, "certify.radii[1] must be >= 0"),
    (("radii = [0, 1, 2, 3]", 'radii = [0, 1]\nmethods = ["fa"]'), ValueError, "certify.methods[0]"),
    (("radii = [0, 1, 2, 3]", "radii = 5"), TypeError, "certify.radii must be a non-empty list"),
    (('k = 5\nhash = "sha256"', 'k = 5\nd = 2'), ValueError, "partition.d applies to method 'fa' only"),
    ({'[model]\nname = "logistic"\n': "", "out = ": "model = 3\nout = "}, TypeError, "[model] must be a section"),
    (("[model]", "[other]\n[model]"), ValueError, "unknown key 'other' in the configuration."),
    (("test_points = 50", "test_points = 50\n[train.extra]"), ValueError, "unknown key 'extra' in train"),
    (("test_points = 50", "test_points = = 50"), ValueError, "invalid TOML"),
])
def test_bad_configs_raise_clear_errors(tmp_path, edit, kind, message):
    cfg = _write_config(tmp_path, "dpa", **(edit if isinstance(edit, dict) else {edit[0]: edit[1]}))
    with pytest.raises(kind) as info:
        elcfg.load_config(cfg)
    assert message in str(info.value) and str(cfg) in str(info.value)


def test_fa_config_needs_d_and_defaults_are_filled(tmp_path):
    with pytest.raises(ValueError, match="partition.d is required for method 'fa'"):
        elcfg.load_config({"data": {"dataset": "digits"}, "partition": {"method": "fa", "k": 4},
                           "model": {"name": "logistic"}})
    cfg = elcfg.load_config({"data": {"dataset": "digits"}, "partition": {"method": "dpa", "k": 4},
                             "model": {"name": "logistic"}})
    assert cfg["partition"]["d"] == 1 and cfg["certify"]["methods"] == ["dpa", "dpa+roe"]
    assert cfg["certify"]["radii"] == [0, 5, 10, 15, 20, 25] and cfg["train"]["jobs"] == 1
    assert cfg["out"] == "results/election" and cfg["data"]["test_points"] is None


def test_election_errors_are_one_clear_line(tmp_path, capsys):
    assert cli.main(["election", str(tmp_path / "missing.toml")]) == 2
    assert "configuration file" in capsys.readouterr().err
    cfg = _write_config(tmp_path, "dpa", **{'name = "logistic"': 'name = "logistik"'})
    assert cli.main(["election", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustagg election: error:") and "logistic" in err  # the registry's suggestion
    cfg = _write_config(tmp_path, "dpa", **{"test_points = 50": "test_points = 5000"})
    assert cli.main(["election", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "has 60 test points" in capsys.readouterr().err


def test_example_config_is_valid():
    from pathlib import Path

    cfg = elcfg.load_config(Path(__file__).resolve().parents[1] / "experiments" / "configs" / "election_mnist5k.toml")
    assert cfg["partition"] == {"method": "fa", "k": 80, "d": 16, "hash": "pixel-sum", "seed": None}
    assert cfg["data"]["dataset"] == "mnist-5k" and cfg["certify"]["methods"] == ["fa", "fa+roe"]


def test_module_entry_point_lists_the_election_commands():
    done = subprocess.run([sys.executable, "-m", "robustagg.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "certify" in done.stdout and "election" in done.stdout


@pytest.fixture(scope="module")
def fa_ensemble(tmp_path_factory):
    """An FA ensemble with the issue's layout (k = 80, d = 16: 1,280 base models), 40 test points."""
    rng = np.random.default_rng(7)
    k, d, N, C = 80, 16, 40, 10
    labels = rng.integers(0, C, N)
    scores = rng.normal(size=(k * d, N, C)).astype(np.float32)
    right = rng.random((k * d, N)) < rng.uniform(0.4, 0.95, N)  # easy and hard test points
    scores[right, labels[None, :].repeat(k * d, 0)[right]] += 4
    shifts = el.fa_shifts(k, d)
    ens = _write_ensemble(tmp_path_factory.mktemp("fa") / "ens", scores, labels, k, d, shifts, stacked=True)
    return ens, scores, labels, shifts


RADII_FA = [0, 5, 25, 50]


def test_certify_takes_the_layout_from_the_ensemble_manifest(fa_ensemble, capsys):
    ens, scores, labels, shifts = fa_ensemble
    want = {m: el.certified_accuracy(el.certify(scores, labels, m, k=80, d=16, shifts=shifts), RADII_FA)
            for m in ("fa", "fa+roe")}
    dpa_roe = el.certified_accuracy(el.certify(scores, labels, "dpa+roe"), RADII_FA)
    assert not np.allclose(dpa_roe, want["fa+roe"])  # what a DPA certificate would wrongly claim
    seed = str(el.REFERENCE_SHIFT_SEED)
    for argv in ([str(ens)], [str(ens), "--method", "fa", "--method", "fa+roe", "--d", "16", "--k", "80"],
                 [str(ens / "scores.npy"), "--method", "fa", "--method", "fa+roe", "--seed", seed]):
        assert cli.main(["certify", *argv, "--radii", *map(str, RADII_FA)]) == 0, argv
        out = capsys.readouterr().out
        assert "(layout from manifest.json: k = 80, d = 16)" in out
        lines = out.splitlines()
        table = {m: [float(r.split()[j + 1].rstrip("%")) / 100 for r in lines[2:2 + len(RADII_FA)]]
                 for j, m in enumerate(lines[1].split()[1:])}
        assert list(table) == ["fa", "fa+roe"]
        for m in table:
            assert np.allclose(table[m], want[m], atol=5e-4), (argv, m)


@pytest.mark.parametrize("extra, message", [
    (["--method", "dpa+roe"], "--method dpa+roe does not hold for this ensemble: the ensemble's manifest.json "
                              "(k = 80, d = 16) is Finite Aggregation"),
    (["--method", "dpa"], "use --method fa or fa+roe"),
    (["--method", "fa", "--d", "8"], "--d 8 contradicts the ensemble's manifest.json (k = 80, d = 16)"),
    (["--method", "fa+roe", "--k", "40"], "--k 40 contradicts"),
    (["--method", "fa+roe", "--seed", "5"], "--seed 5 contradicts the ensemble's manifest.json (k = 80, d = 16): "
                                            "the ensemble was trained with shifts"),
])
def test_an_option_contradicting_the_manifest_is_a_one_line_error(fa_ensemble, capsys, extra, message):
    ens = fa_ensemble[0]
    for target in (ens, ens / "scores.npy"):
        assert cli.main(["certify", str(target), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err.strip()
        assert err.startswith("robustagg certify: error:") and message in err and "\n" not in err


def test_certify_refuses_corrupted_score_files_naming_them(saved, capsys):
    path, scores, labels = saved
    ens = _write_ensemble(path / "ens", scores, labels, k=6, d=1, shifts=[0], stacked=True)
    for name in ("scores_00003.npy", "scores.npy"):
        target = ens if name != "scores.npy" else ens / "scores.npy"
        good = (ens / name).read_bytes()
        (ens / name).write_bytes(good[:-1] + bytes([good[-1] ^ 0x10]))  # one flipped bit
        assert cli.main(["certify", str(target), "--method", "dpa"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("robustagg certify: error:") and "\n" not in err
        assert f"{ens / name} is corrupted" in err
        (ens / name).write_bytes(good[:50])  # truncated
        assert cli.main(["certify", str(target), "--method", "dpa"]) == 2
        assert f"{ens / name} is corrupted" in capsys.readouterr().err
        (ens / name).write_bytes(good)
    assert cli.main(["certify", str(ens)]) == 0  # default methods of a DPA ensemble
    assert list(_table(capsys.readouterr().out)) == ["dpa", "dpa+roe"]


@pytest.mark.parametrize("bad", [3, -1, 99])
def test_certify_rejects_labels_outside_the_classes(saved, capsys, bad):
    path, _, labels = saved
    wrong = labels.copy()
    wrong[7] = bad
    np.save(path / "wrong.npy", wrong)
    assert cli.main(["certify", str(path / "scores.npy"), "--labels", str(path / "wrong.npy"), "--method", "dpa"]) == 2
    err = capsys.readouterr().err
    assert f"labels must be class indices in [0, 3), got {bad} at test point 7" in err


def test_certify_needs_a_method_for_a_bare_scores_file(saved, capsys):
    path, _, _ = saved
    assert cli.main(["certify", str(path / "scores.npy")]) == 2
    assert "--method is required" in capsys.readouterr().err


def test_election_refuses_to_reuse_models_of_another_configuration(tmp_path, capsys):
    cfg = _write_config(tmp_path, "dpa")
    out = tmp_path / "run"
    assert cli.main(["election", str(cfg), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    stored = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(stored["config.json"])["out"] == str(out)  # the effective --out, not the file's
    for edit, key in (({'name = "logistic"': 'name = "mlp"'}, "'settings.model.name'"),
                      ({"seed = 1 }": "seed = 2 }"}, "'settings.data.params.seed'"),
                      ({"epochs = 3": "epochs = 4"}, "'epochs'"),
                      ({'hash = "sha256"': 'hash = "pixel-sum"'}, "'settings.partition.hash'")):
        changed = _write_config(tmp_path, "dpa", **edit)
        assert cli.main(["election", str(changed), "--out", str(out), "--no-progress"]) == 2, edit
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.startswith("robustagg election: error:") and "\n" not in err
        assert "holds the base models of a different ensemble" in err and key in err, (edit, err)
        assert "trained" not in captured.out
        assert {p.name: p.read_bytes() for p in out.iterdir()} == stored  # config.json not rewritten


def test_a_broken_manifest_is_a_one_line_error_naming_it(saved, capsys):
    path, scores, labels = saved
    ens = _write_ensemble(path / "ens", scores, labels, k=6, d=1, shifts=[0])
    (ens / "manifest.json").write_text('{"num_models": 6, "k": ')
    assert cli.main(["certify", str(ens), "--method", "dpa"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{ens / 'manifest.json'} is not valid JSON" in err and "\n" not in err
    (ens / "manifest.json").write_text('{"num_models": 6}')  # no layout: certificates could not be trusted
    assert cli.main(["certify", str(ens), "--method", "dpa"]) == 2
    assert "records no partition layout (k, d, shifts)" in capsys.readouterr().err
