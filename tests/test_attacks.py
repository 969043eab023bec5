"""Attacks: each matches its formula (float64 numpy references), the line searches beat their
fixed-factor versions, and the contract (shapes, dtypes, errors) holds."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import robustagg as ra
from robustagg import attacks

H64 = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.5], [2.0, 4.0, 1.0], [-1.0, 2.0, 0.0]], dtype=torch.float64)
NP = H64.numpy()
MEAN = NP.mean(axis=0)
STD = NP.std(axis=0, ddof=1)


def rows(vector, f=2):
    return np.tile(np.asarray(vector, dtype=np.float64), (f, 1))


@pytest.mark.parametrize("name, params, expected", [
    ("sign-flip", {}, rows(-MEAN)),
    ("reverse", {}, rows(-10 * MEAN)),
    ("reverse", {"s": 3.0}, rows(-3 * MEAN)),
    ("reverse", {"per_worker": True}, -10 * NP[:2]),
    ("ipm", {}, rows(-0.1 * MEAN)),
    ("ipm", {"eps": 2.5}, rows(-2.5 * MEAN)),
    ("foe", {}, rows((1 - 1.1) * MEAN)),
    ("foe", {"z": -0.5}, rows(1.5 * MEAN)),
    ("alie", {"z": 1.7}, rows(MEAN + 1.7 * STD)),
    ("mimic", {}, rows(NP[0])),
    ("mimic", {"index": 3}, rows(NP[3])),
    ("zero", {}, np.zeros((2, 3))),
    ("inf", {}, np.full((2, 3), np.inf)),
    ("inf", {"sign": -1}, np.full((2, 3), -np.inf)),
    ("nan", {}, np.full((2, 3), np.nan)),
])
def test_attack_matches_formula(name, params, expected):
    out = attacks.get(name, **params)(H64, 2)
    assert out.shape == (2, 3) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_alie_default_z_is_baruch_formula():
    # n = h + f = 4 + 2: s = floor(6/2 + 1) - 2 = 2, z = Phi^-1((6 - 2)/6)
    out = attacks.get("alie")(H64, 2)
    z = norm.ppf(4 / 6)
    np.testing.assert_allclose(out.numpy(), rows(MEAN + z * STD), rtol=1e-12)
    for n, f in [(15, 3), (26, 5), (10, 1), (7, 3)]:
        s = math.floor(n / 2 + 1) - f
        assert attacks.alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), abs=1e-12)
    with pytest.raises(ValueError, match="pass z explicitly"):
        attacks.alie_z(10, 6)


def test_mimic_max_variance_picks_extreme_along_top_direction():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(9, 20, generator=g, dtype=torch.float64)
    H[4] += 6 * torch.ones(20, dtype=torch.float64)  # an outlier along a dominant direction
    attack = attacks.get("mimic", index="max-variance")
    out = attack(H, 3)
    C = H.numpy() - H.numpy().mean(axis=0)
    _, _, vt = np.linalg.svd(C, full_matrices=False)
    expected = int(np.argmax(np.abs(C @ vt[0])))
    assert attack.last["index"] == expected == 4
    assert torch.equal(out, H[4].repeat(3, 1))


def test_random_attacks_match_their_generator_draws():
    H = torch.randn(5, 1000, dtype=torch.float64)
    out = attacks.get("random")(H, 3, generator=torch.Generator().manual_seed(5))
    expected = torch.rand((3, 1000), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(out, expected)
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    out = attacks.get("random", low=-2.0, high=4.0)(H, 2, generator=torch.Generator().manual_seed(1))
    expected = -2 + 6 * torch.rand((2, 1000), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    out = attacks.get("gaussian", sigma=3.0)(H, 2, generator=torch.Generator().manual_seed(2))
    expected = H.mean(0) + 3.0 * torch.randn((2, 1000), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    out = attacks.get("gaussian", sigma=200.0, loc=0.0, seed=4)(H, 4)
    assert abs(float(out.mean())) < 5 * 200 / math.sqrt(4000)
    assert float(out.std()) == pytest.approx(200, rel=0.05)


def test_seeded_attacks_reproduce():
    H = torch.randn(6, 50)
    a, b = attacks.get("gaussian", seed=3), attacks.get("gaussian", seed=3)
    assert torch.equal(a(H, 2), b(H, 2)) and not torch.equal(a(H, 2), attacks.get("gaussian", seed=4)(H, 2))
    a.reset()
    assert torch.equal(a(H, 2), attacks.get("gaussian", seed=3)(H, 2))


@pytest.mark.parametrize("name", attacks.available())
def test_every_attack_keeps_dtype_device_and_type(name):
    attack = attacks.get(name)
    rule = ra.get("median", f=3)
    for dtype in (torch.float32, torch.float64):
        H = torch.randn(12, 7, dtype=dtype)
        out = attack(H, 3, aggregator=rule)
        assert out.shape == (3, 7) and out.dtype == dtype and out.device == H.device
        assert attack(H, 0, aggregator=rule).shape == (0, 7)
    out = attack(np.random.default_rng(0).normal(size=(12, 7)).astype(np.float32), 3, aggregator=rule)
    assert isinstance(out, np.ndarray) and out.shape == (3, 7) and out.dtype == np.float32


def test_attack_errors():
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.get("alei")
    with pytest.raises(TypeError, match="no parameter"):
        attacks.get("alie", sigma=1.0)
    with pytest.raises(ValueError, match="aggregator="):
        attacks.get("alie-opt")(torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="2-D"):
        attacks.get("sign-flip")(torch.randn(5), 1)
    with pytest.raises(TypeError, match="floating"):
        attacks.get("sign-flip")(torch.ones(5, 2, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="f must be >= 0"):
        attacks.get("zero")(torch.randn(5, 2), -1)
    with pytest.raises(ValueError, match="high > low"):
        attacks.get("random", low=1.0, high=1.0)
    with pytest.raises(ValueError, match="mimic index=7"):
        attacks.get("mimic", index=7)(torch.randn(5, 2), 1)
    with pytest.raises(ValueError, match="low < high"):
        attacks.get("foe-opt", bounds=(3.0, 1.0))
    with pytest.raises(TypeError, match="one vector"):
        attacks.get("ipm-opt")(torch.randn(9, 4), 2, aggregator=ra.get("nnm", f=2))


def test_line_search_finds_interior_maximum():
    z, best, trace = attacks.line_search(lambda z: -(z - 3.3) ** 2, (0.0, 10.0), grid=9, refine=8, initial=0.4)
    assert len(trace) == 18 and abs(z - 3.3) < 0.05 and best == max(v for _, v in trace)


def damage(rule, H, byz):
    out = rule.aggregate(torch.cat([H, byz]))
    return float(torch.linalg.vector_norm((out - H.mean(0)).double()))


@pytest.mark.parametrize("rule_name", ["trimmed-mean", "median"])
@pytest.mark.parametrize("family", ["alie", "foe", "ipm"])
def test_line_search_at_least_as_harmful_as_fixed_factor(rule_name, family):
    gen = torch.Generator().manual_seed(11)
    improved = 0
    for trial in range(4):
        H = torch.randn(12, 40, generator=gen) + 0.5 * torch.randn(40, generator=gen)
        rule = ra.get(rule_name, f=3)
        fixed = attacks.get(family)(H, 3)
        opt = attacks.get(f"{family}-opt")
        searched = opt(H, 3, aggregator=rule)
        assert opt.last["evaluations"] >= 16
        d_fixed, d_opt = damage(rule, H, fixed), damage(rule, H, searched)
        assert d_opt >= d_fixed - 1e-6 * max(1.0, d_fixed)
        assert opt.last["damage"] == pytest.approx(d_opt, rel=1e-5)
        improved += d_opt > 1.05 * d_fixed
    assert improved >= 2  # the search actually finds stronger factors, not just the default


def test_line_search_leaves_stateful_rule_untouched():
    rule = ra.get("centered-clipping", f=3, tau=1.0)
    H = torch.randn(12, 10)
    attacks.get("alie-opt")(H, 3, aggregator=rule)
    assert rule.center is None
    bucketing = ra.pipeline(ra.get("bucketing", f=3, s=2, seed=1), ra.get("median", f=3))
    X = torch.cat([H, torch.zeros(3, 10)])
    attacks.get("foe-opt")(H, 3, aggregator=bucketing)
    fresh = ra.pipeline(ra.get("bucketing", f=3, s=2, seed=1), ra.get("median", f=3))
    assert torch.equal(bucketing(X), fresh(X))


def test_lazy_access_from_package():
    assert ra.attacks is attacks
    assert set(attacks.available()) >= {
        "sign-flip", "reverse", "ipm", "foe", "alie", "gaussian", "random", "mimic", "zero", "inf", "nan",
        "alie-opt", "foe-opt", "ipm-opt",
    }


def test_attack_matrix_script_smoke():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "attack_matrix.py"
    spec = importlib.util.spec_from_file_location("attack_matrix", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows, rules, values = module.matrix(n=15, f=3, d=20, trials=1)
    assert rows[0] == "none" and set(rows[1:]) == set(attacks.available())
    assert "mean" in rules and "nnm" not in rules and np.isfinite(values).all()
    assert values[rows.index("gaussian"), rules.index("mean")] > 1  # sigma = 200 breaks the mean
    assert values[rows.index("gaussian"), rules.index("median")] < 1
