"""ra.aggregate_gradients: workers' gradients -> a rule -> p.grad, from a plain torch loop."""

import pytest
import torch

import robustagg as ra

N, F = 7, 2


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def worker_grad_dicts(model, n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{name: torch.randn(p.shape, generator=g) for name, p in model.named_parameters()} for _ in range(n)]


def manual(model, grads, rule):
    """The path a user writes by hand: flatten each worker, stack, rule, unflatten."""
    names = [name for name, _ in model.named_parameters()]
    X = torch.stack([torch.cat([g[name].reshape(-1) for name in names]) for g in grads])
    out = rule(X)
    pieces, offset = {}, 0
    for name, p in model.named_parameters():
        pieces[name] = out[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    return out, pieces


@pytest.mark.parametrize("rule", [ra.get("median", f=F), ra.get("krum", f=F),
                                  ra.pipeline(ra.get("nnm", f=F), ra.get("trimmed-mean", f=F))],
                         ids=["median", "krum", "nnm+trimmed-mean"])
def test_equals_manual_flatten_rule_unflatten(rule):
    model = make_model()
    grads = worker_grad_dicts(model)
    out = ra.aggregate_gradients(model, grads, rule)
    expected, pieces = manual(model, grads, rule)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, pieces[name], rtol=0, atol=0)
        assert not p.grad.requires_grad


def test_every_input_format_gives_the_same_result():
    model = make_model()
    rule = ra.get("trimmed-mean", f=F)
    dicts = worker_grad_dicts(model)
    names = [name for name, _ in model.named_parameters()]
    reference = ra.aggregate_gradients(model, dicts, rule)
    lists = [[g[name] for name in names] for g in dicts]
    pairs = [iter([(name, g[name]) for name in names]) for g in dicts]  # one pass, like named_parameters()
    flat = [torch.cat([g[name].reshape(-1) for name in names]) for g in dicts]
    for formatted in (lists, pairs, flat, iter(dicts)):
        torch.testing.assert_close(ra.aggregate_gradients(model, formatted, rule), reference, rtol=0, atol=0)
    params = make_model()  # model given as a generator of parameters, gradients as lists
    torch.testing.assert_close(ra.aggregate_gradients(params.parameters(), lists, rule), reference, rtol=0, atol=0)
    assert all(p.grad is not None for p in params.parameters())


def test_worker_models_and_named_parameters_are_detached():
    """What users pass naturally: worker models after backward(), or named_parameters() results
    (tensors that require grad); nothing in the result or in p.grad keeps a graph."""
    model = make_model()
    workers = [make_model(seed=10 + i) for i in range(N)]
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for w in workers:
        torch.nn.functional.cross_entropy(w(x), y).backward()
    rule = ra.get("median", f=F)
    out = ra.aggregate_gradients(model, workers, rule)
    expected, _ = manual(model, [{n: p.grad for n, p in w.named_parameters()} for w in workers], rule)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out = ra.aggregate_gradients(model, [w.named_parameters() for w in workers], rule)
    assert not out.requires_grad and out.grad_fn is None
    assert all(not p.grad.requires_grad for p in model.parameters())
    with torch.no_grad():
        expected, _ = manual(model, [dict(w.named_parameters()) for w in workers], rule)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_optimizer_step_applies_the_aggregate():
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    grads = worker_grad_dicts(model)
    out = ra.aggregate_gradients(model, grads, ra.get("median", f=F))
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(after, torch.cat([b.reshape(-1) for b in before]) - 0.5 * out)


def test_frozen_parameters_are_skipped():
    model = make_model()
    model[0].weight.requires_grad_(False)
    grads = worker_grad_dicts(make_model())  # dicts with every name, frozen one included
    out = ra.aggregate_gradients(model, grads, ra.get("median", f=F))
    assert out.numel() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model[0].weight.grad is None
    for g in grads:
        del g["0.weight"]
    torch.testing.assert_close(ra.aggregate_gradients(model, grads, ra.get("median", f=F)), out)


def test_byzantine_worker_with_nan_is_dropped():
    model = make_model()
    grads = worker_grad_dicts(model)
    grads[0] = {name: torch.full_like(g, float("nan")) for name, g in grads[0].items()}
    with pytest.warns(ra.NonFiniteUpdateWarning):
        ra.aggregate_gradients(model, grads, ra.get("median", f=F))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_dtype_follows_the_model():
    model = make_model().double()
    grads = worker_grad_dicts(make_model())  # float32 gradients
    out = ra.aggregate_gradients(model, grads, ra.get("mean", f=0))
    assert out.dtype == torch.float64 and all(p.grad.dtype == torch.float64 for p in model.parameters())


@pytest.mark.parametrize("mutate, error, match", [
    (lambda g: g[2].pop("2.bias"), ValueError, r"worker_grads\[2\] lacks the gradient of parameter '2.bias'"),
    (lambda g: g[1].update(extra=torch.zeros(1)), ValueError, r"worker_grads\[1\] has key 'extra'"),
    (lambda g: g[3].update({"0.weight": torch.zeros(4, 3)}), ValueError,
     r"worker_grads\[3\]: the gradient of '0.weight' has shape \(4, 3\), the parameter has \(3, 4\)"),
    (lambda g: g.__setitem__(0, list(g[0].values())[:2]), ValueError, r"worker_grads\[0\] has 2 tensors; the model has 4"),
    (lambda g: g.__setitem__(4, torch.zeros(5)), ValueError, r"worker_grads\[4\] is a flat tensor of 5 entries"),
    (lambda g: g.__setitem__(5, "grads"), TypeError, r"worker_grads\[5\] is a str"),
    (lambda g: g[6].update({"2.bias": [0.0, 1.0]}), TypeError, r"worker_grads\[6\]\['2.bias'\] is a list"),
])
def test_mismatched_names_and_shapes_raise_one_clear_error(mutate, error, match):
    model = make_model()
    grads = worker_grad_dicts(model)
    mutate(grads)
    with pytest.raises(error, match=match):
        ra.aggregate_gradients(model, grads, ra.get("median", f=F))
    assert all(p.grad is None for p in model.parameters())  # nothing written on an error


def test_bad_arguments():
    model = make_model()
    grads = worker_grad_dicts(model)
    with pytest.raises(TypeError, match=r"robustagg.get\('median', f=...\)"):
        ra.aggregate_gradients(model, grads, "median")
    with pytest.raises(TypeError, match="one entry per worker"):
        ra.aggregate_gradients(model, grads[0], ra.get("median", f=F))
    with pytest.raises(ValueError, match="got no workers"):
        ra.aggregate_gradients(model, [], ra.get("median", f=F))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ra.aggregate_gradients(3, grads, ra.get("median", f=F))
    with pytest.raises(ValueError, match="n > 2f"):  # the rule's own bound, from 7 workers
        ra.aggregate_gradients(model, grads, ra.get("median", f=4))
    worker = make_model()
    with pytest.raises(ValueError, match=r"worker_grads\[0\]: parameter '0.weight' has no .grad"):
        ra.aggregate_gradients(model, [worker] * N, ra.get("median", f=F))


def test_stack_gradients_layout():
    model = make_model()
    grads = worker_grad_dicts(model)
    X = ra.stack_gradients(model, grads)
    assert X.shape == (N, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(X[3], torch.cat([g.reshape(-1) for g in grads[3].values()]))
