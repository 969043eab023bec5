"""The contract: output type, dtype, device and structure follow the input; the registry."""

from __future__ import annotations

from collections import OrderedDict

import bruteforce as bf
import numpy as np
import pytest
import torch
from cases import build, gaussian

import robustagg as ra

F = 2
N = 11  # enough for every rule with f = 2 (bulyan needs 4f + 3)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _expected_shape(rule, n, d):
    if isinstance(rule, ra.PreAggregator):
        return (rule.output_rows(n) if hasattr(rule, "output_rows") else n, d)
    return (d,)


@pytest.mark.parametrize("name", ra.available())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_in_numpy_out(name, dtype):
    X = gaussian(N, 6, 0).astype(dtype)
    before = X.copy()
    rule = build(name, F)
    out = rule(X)
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    assert out.shape == _expected_shape(rule, N, 6)
    np.testing.assert_array_equal(X, before)  # the input is left alone
    out[...] = 0  # and the output does not alias it
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize("name", ra.available())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_tensor_in_tensor_out_same_dtype(name, dtype):
    X64 = gaussian(N, 6, 1)
    X = torch.tensor(X64, dtype=dtype)
    rule = build(name, F)
    out = rule(X.clone())
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.device == X.device
    assert tuple(out.shape) == _expected_shape(rule, N, 6)
    if dtype in (torch.float16, torch.bfloat16) and name != "bucketing":
        # same rule in float64 on the rounded inputs: agreement to the 16-bit precision
        want = build(name, F)(X.to(torch.float64))
        tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
        np.testing.assert_allclose(out.to(torch.float64), want, rtol=tol, atol=tol * 3)


@pytest.mark.parametrize("name", ["krum", "geometric-median", "nnm", "centered-clipping", "bulyan"])
def test_float16_with_norms_past_its_squares_range(name):
    """float16 squares overflow past 256: distances must not (rows of norm ~1e3 here)."""
    X = torch.tensor(gaussian(N, 8, 2, offset=400.0), dtype=torch.float16)
    out = build(name, F, **({"tau": 1e4} if name == "centered-clipping" else {}))(X)
    want = build(name, F, **({"tau": 1e4} if name == "centered-clipping" else {}))(X.double())
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.double(), want, rtol=3e-3)


def test_integer_inputs_become_float():
    X = np.arange(12).reshape(4, 3)
    out = ra.get("mean")(X)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [4.5, 5.5, 6.5])
    t = ra.get("median")(torch.arange(12).reshape(4, 3))
    assert t.dtype == torch.get_default_dtype()


@pytest.mark.parametrize("kind", ["tensors", "arrays", "lists"])
def test_sequence_of_rows(kind):
    X = gaussian(7, 5, 3)
    rows = {
        "tensors": [torch.tensor(x) for x in X],
        "arrays": [x.copy() for x in X],
        "lists": [list(x) for x in X],
    }[kind]
    out = ra.get("trimmed-mean", f=2)(rows)
    np.testing.assert_allclose(np.asarray(out), bf.trimmed_mean(X, 2))
    assert isinstance(out, torch.Tensor if kind == "tensors" else np.ndarray)


def test_sequence_of_matrices_keeps_their_shape():
    W = [torch.tensor(gaussian(3, 4, s), dtype=torch.float32) for s in range(5)]
    out = ra.get("median", f=1)(W)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.median(np.stack([w.numpy() for w in W]), axis=0), rtol=1e-6)
    nnm = ra.get("nnm", f=1)(W)  # a pre-aggregator returns one (3, 4) update per input
    assert nnm.shape == (5, 3, 4)


def _state_dict(seed):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        [
            ("conv.weight", torch.randn(2, 1, 3, 3, generator=g)),
            ("conv.bias", torch.randn(2, generator=g).to(torch.float64)),
            ("bn.running_mean", torch.randn(2, generator=g).to(torch.float16)),
            ("bn.num_batches_tracked", torch.tensor(10 + seed)),  # int64, 0-dim
            ("mask", torch.tensor([True, seed % 2 == 0])),
        ]
    )


@pytest.mark.parametrize("name", ["mean", "median", "krum", "geometric-median", "nnm"])
def test_state_dicts_in_state_dict_out(name):
    sds = [_state_dict(s) for s in range(5)]
    rule = ra.get(name, f=1)
    out = rule(sds)
    expected = sds[0]
    if isinstance(rule, ra.PreAggregator):
        assert isinstance(out, list) and len(out) == 5
        out = out[0]
    assert list(out.keys()) == list(expected.keys())
    for key, value in expected.items():
        assert out[key].shape == value.shape, key
        assert out[key].dtype == value.dtype, key
    if name == "mean":
        np.testing.assert_allclose(out["conv.weight"], torch.stack([s["conv.weight"] for s in sds]).mean(0), rtol=1e-6)
        assert int(out["bn.num_batches_tracked"]) == 12  # mean of 10..14, rounded
    if name == "median":
        assert int(out["bn.num_batches_tracked"]) == 12


def test_numpy_state_dicts():
    sds = [{"w": np.full((2, 2), float(s), dtype=np.float32), "steps": np.array(s, dtype=np.int32)} for s in range(4)]
    out = ra.get("mean")(sds)
    assert out["w"].dtype == np.float32 and out["w"].shape == (2, 2)
    assert out["steps"].dtype == np.int32
    np.testing.assert_array_equal(out["w"], np.full((2, 2), 1.5))
    assert int(out["steps"]) == 2  # 1.5 rounds to even


def test_flatten_unflatten_round_trip():
    sd = _state_dict(3)
    vec = ra.flatten(sd)
    assert vec.dim() == 1 and vec.numel() == 18 + 2 + 2 + 1 + 2
    back = ra.unflatten(vec, like=sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        assert torch.equal(back[key], value), key
    X = ra.flatten([sd, _state_dict(4)])
    assert X.shape == (2, vec.numel())
    assert torch.equal(X[0], vec)
    like = [torch.zeros(2, 3), np.zeros(4, dtype=np.float32)]
    parts = ra.unflatten(torch.arange(10.0), like)
    assert parts[0].shape == (2, 3) and isinstance(parts[1], np.ndarray) and parts[1].dtype == np.float32
    np.testing.assert_array_equal(parts[1], [6, 7, 8, 9])
    with pytest.raises(ValueError, match="entries"):
        ra.unflatten(torch.arange(9.0), like)


def test_gradients_flow_through_every_rule():
    X = torch.tensor(gaussian(N, 4, 5), requires_grad=True)
    for name in ra.available():
        out = build(name, F)(X)
        out.sum().backward()
        assert X.grad is not None and torch.isfinite(X.grad).all(), name
        X.grad = None
    # the coordinate median's gradient picks the middle value of each column
    Y = torch.tensor(gaussian(5, 3, 6), requires_grad=True)
    ra.get("median")(Y).sum().backward()
    middle = np.argsort(Y.detach().numpy(), axis=0)[2]
    expected = np.zeros((5, 3))
    expected[middle, np.arange(3)] = 1.0
    np.testing.assert_array_equal(Y.grad.numpy(), expected)


def test_registry_names_and_errors_are_helpful():
    names = ra.available()
    assert names == sorted(names)
    for expected in ["mean", "median", "trimmed-mean", "meamed", "geometric-median", "krum",
                     "multi-krum", "bulyan", "centered-clipping", "nnm", "bucketing", "clipping", "arc"]:
        assert expected in names
    assert type(ra.get("Trimmed_Mean", f=1)) is type(ra.get("trimmed-mean", f=1))
    assert repr(ra.get("multi-krum", f=2, m=3)) == "MultiKrum(f=2, m=3)"
    for name in names:  # every rule accepts f, also those whose formula ignores it
        assert build(name, 1).f == 1


@CUDA
@pytest.mark.parametrize("name", ra.available())
def test_cuda_in_cuda_out(name):
    X = torch.tensor(gaussian(N, 300, 7), dtype=torch.float32)
    rule, ref = build(name, F), build(name, F)
    out = rule(X.cuda())
    assert out.device.type == "cuda" and out.dtype == torch.float32
    if name != "bucketing":
        np.testing.assert_allclose(out.cpu().numpy(), ref(X).numpy(), rtol=1e-4, atol=1e-4)


@CUDA
def test_cuda_state_dicts():
    sds = [{k: v.cuda() for k, v in _state_dict(s).items()} for s in range(5)]
    out = ra.get("median", f=1)(sds)
    assert all(v.device.type == "cuda" for v in out.values())


def test_every_rule_knows_its_registered_name():
    for name in ra.available():
        assert ra.get(name).name == name
    assert ra.pipeline(ra.get("nnm"), ra.get("multi-krum")).name == "nnm -> multi-krum"
