"""Bad input gets a clear error; up to f non-finite rows are dropped, more raise."""

from __future__ import annotations

import re
import warnings

import bruteforce as bf
import numpy as np
import pytest
import torch
from cases import build, gaussian, pipelines

import robustagg as ra


def test_ragged_rows_name_the_offending_index():
    with pytest.raises(ValueError, match=r"update 2 has shape \(4,\)"):
        ra.get("mean")([torch.zeros(3), torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match="update 1"):
        ra.get("median")([np.zeros(3), np.zeros((3, 1))])
    with pytest.raises(ValueError, match="update 1"):
        ra.get("median")([[1.0, 2.0], [1.0]])
    sds = [{"w": torch.zeros(2, 2)}, {"w": torch.zeros(2, 2)}, {"w": torch.zeros(2, 3)}]
    with pytest.raises(ValueError, match=r"update 2\['w'\] has shape \(2, 3\)"):
        ra.get("mean")(sds)
    with pytest.raises(ValueError, match=r"update 1 has different keys.*missing: \['b'\]"):
        ra.get("mean")([{"w": torch.zeros(1), "b": torch.zeros(1)}, {"w": torch.zeros(1)}])


@pytest.mark.parametrize(
    "updates",
    [[], torch.zeros(0, 5), np.zeros((0, 3)), torch.zeros(4, 0), [torch.zeros(0), torch.zeros(0)]],
    ids=["empty-list", "no-rows-tensor", "no-rows-array", "zero-length-rows", "zero-length-list"],
)
@pytest.mark.parametrize("name", ["mean", "krum", "nnm"])
def test_empty_input(name, updates):
    with pytest.raises(ValueError, match=r"no updates|zero length"):
        ra.get(name)(updates)


def test_wrong_shapes_and_types():
    with pytest.raises(ValueError, match=r"\(n, d\) matrix"):
        ra.get("mean")(torch.zeros(5))
    with pytest.raises(TypeError, match="one state dict"):
        ra.get("mean")({"w": torch.zeros(2)})
    with pytest.raises(TypeError, match="complex"):
        ra.get("mean")(np.zeros((2, 2), dtype=complex))
    with pytest.raises(TypeError, match="unsupported type"):
        ra.get("mean")("abc")


@pytest.mark.parametrize("name", ra.available())
@pytest.mark.parametrize("f", [1, 2])
def test_f_outside_the_bound_names_it(name, f):
    rule = build(name, f)
    bound = rule.bound  # the one declaration (docstrings and docs/index.md are generated from it)
    n = rule.min_inputs()
    X = gaussian(n, 3, 0)
    rule(X)  # the smallest n is accepted
    with pytest.raises(ValueError, match="^" + re.escape(f"{name} needs {bound} (got n={n - 1}, f={f})")):
        build(name, f)(X[:-1])


def test_f_parameter_checks():
    with pytest.raises(ValueError, match="f must be >= 0"):
        ra.get("krum", f=-1)
    with pytest.raises(TypeError, match="f must be an integer"):
        ra.get("krum", f=1.5)
    with pytest.raises(ValueError, match="tau must be > 0"):
        ra.get("centered-clipping", tau=0.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        ra.get("geometric-median", solver="newton")


def test_unknown_names_list_the_available_ones():
    with pytest.raises(ValueError) as err:
        ra.get("krumm")
    message = str(err.value)
    assert "unknown aggregator 'krumm'" in message and "Did you mean 'krum'" in message
    for name in ra.available():
        assert name in message


def test_unknown_parameters_list_the_accepted_ones():
    with pytest.raises(TypeError, match=r"has no parameter 'tua'. Did you mean 'tau'\?.*f, tau, iters"):
        ra.get("centered-clipping", tua=1.0)
    with pytest.raises(TypeError, match="has no parameter 'q'"):
        ra.get("mean", q=1)


def test_pipeline_construction_errors():
    with pytest.raises(ValueError, match="at least one stage"):
        ra.pipeline()
    with pytest.raises(TypeError, match="only the last stage"):
        ra.pipeline(ra.get("median"), ra.get("mean"))
    with pytest.raises(TypeError, match="not a robustagg rule"):
        ra.pipeline(ra.get("nnm"), lambda x: x)


# -- non-finite rows -------------------------------------------------------------------------

ALL = ra.available()


def _poison(X, rows, kinds=("nan", "inf", "-inf", "mixed")):
    X = X.copy()
    for i, row in enumerate(rows):
        kind = kinds[i % len(kinds)]
        if kind == "nan":
            X[row, 1] = np.nan
        elif kind == "inf":
            X[row, :] = np.inf
        elif kind == "-inf":
            X[row, 0] = -np.inf
        else:
            X[row, 0], X[row, 2] = np.inf, -np.inf
    return X


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [1, 2])
def test_up_to_f_nonfinite_rows_are_dropped_and_warned_once(name, bad):
    f = 2
    rule = build(name, f)
    n = rule.min_inputs()  # the tightest case: the bound with f, not with f - bad
    X = gaussian(n, 4, 3)
    rows = [1, n - 1][:bad]
    Y = _poison(X, rows)
    with pytest.warns(ra.NonFiniteUpdateWarning, match="dropped"):
        out = rule(Y)
    assert np.all(np.isfinite(out))
    with warnings.catch_warnings():  # once per rule object
        warnings.simplefilter("error", ra.NonFiniteUpdateWarning)
        rule(Y)
    # the same as the rule on the finite rows with the f that is left
    clean = np.delete(X, rows, axis=0)
    if name != "bucketing":  # random; its shape still follows the rows kept
        want = build(name, f - bad)(clean)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    else:
        assert out.shape == build(name, f - bad)(clean).shape


@pytest.mark.parametrize("name", ["krum", "multi-krum", "bulyan"])
def test_selected_indices_refer_to_the_callers_rows(name):
    X = gaussian(11, 3, 4)
    Y = _poison(X, [0])
    rule = build(name, 2)
    with pytest.warns(ra.NonFiniteUpdateWarning):
        rule(Y)
    want = {"krum": lambda: [bf.krum_index(X[1:], 1)], "multi-krum": lambda: bf.multi_krum_indices(X[1:], 1),
            "bulyan": lambda: bf.bulyan_selection(X[1:], 1)}[name]()
    assert rule.last["selected"] == [i + 1 for i in want]


@pytest.mark.parametrize("name", ALL)
def test_more_than_f_nonfinite_rows_raise(name):
    X = _poison(gaussian(11, 4, 5), [0, 4, 7])
    with pytest.raises(ValueError, match=r"3 updates are non-finite.*f=2"):
        build(name, 2)(X)
    with pytest.raises(ValueError, match=r"non-finite.*f=0"):
        build(name, 0)(_poison(gaussian(11, 4, 5), [3]))


@pytest.mark.parametrize("name", ["krum", "multi-krum", "bulyan", "geometric-median", "nnm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_rows_too_large_for_distances_count_as_faulty(name, dtype):
    """Two equal rows with |x|^2 near the largest float: |x|^2 + |y|^2 - 2 x.y is inf - inf."""
    X = gaussian(11, 5, 6).astype(dtype)
    huge = np.sqrt(np.finfo(dtype).max / 5 / 1.1)  # |x|^2 = max / 1.1: finite, the sums are not
    X[3] = X[8] = huge
    rule = build(name, 2)
    with pytest.warns(ra.NonFiniteUpdateWarning):
        out = rule(X)
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 10
    want = build(name, 0)(np.delete(X, [3, 8], axis=0))
    np.testing.assert_allclose(out, want, rtol=1e-6)


@pytest.mark.parametrize("pipe", sorted(pipelines(2)))
def test_pipelines_drop_nonfinite_rows_at_the_smallest_n(pipe):
    rule = pipelines(2)[pipe]
    n = rule.min_inputs()
    X = _poison(gaussian(n, 4, 7), [2])
    with pytest.warns(ra.NonFiniteUpdateWarning):
        out = rule(X)
    assert np.all(np.isfinite(out))
    if "bucketing" not in pipe:
        first, last = pipe.split(">")
        clean = np.delete(X, [2], axis=0)
        kwargs = {"c": 1.5} if first == "clipping" else {}
        want = ra.pipeline(ra.get(first, f=1, **kwargs), ra.get(last, f=1))(clean)
        np.testing.assert_allclose(out, want, rtol=1e-12)


def test_pipeline_stage_with_too_small_f_for_the_dropped_rows():
    X = _poison(gaussian(9, 3, 8), [0, 1])
    rule = ra.pipeline(ra.get("nnm", f=2), ra.get("median", f=1))
    with pytest.raises(ValueError, match="2 non-finite updates were dropped but stage median declares f=1"):
        with pytest.warns(ra.NonFiniteUpdateWarning):
            rule(X)


def test_torch_inputs_with_nonfinite_rows():
    X = torch.tensor(_poison(gaussian(7, 3, 9), [5]), dtype=torch.float32)
    with pytest.warns(ra.NonFiniteUpdateWarning, match=r"rows \[5\]"):
        out = ra.get("median", f=1)(X)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
