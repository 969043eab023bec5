"""Models: shapes, exact layers and parameter counts, seeding, picklable factories, learning."""

import functools
import pickle

import pytest
import torch
from torch import nn

from robustagg import data, models

# name, natural input shape, parameters on it with 10 classes (reference architectures)
REFERENCE = [
    ("logistic", (1, 28, 28), 7_850),
    ("mlp", (1, 28, 28), 79_510),          # 784 -> 100 -> 10 (MoNNA code's "full")
    ("monna-cnn", (1, 28, 28), 431_080),   # conv20-conv50-fc500 (MoNNA code's "conv")
    ("fa-cnn", (1, 28, 28), 21_840),       # PyTorch MNIST example net (FA code's "convnet")
    ("cifar-cnn", (3, 32, 32), 62_006),    # PyTorch CIFAR tutorial net (FA code's "cifarnet")
    ("resnet18", (3, 32, 32), 11_173_962),  # CIFAR ResNet-18
]
SMALL = {"resnet18": {"width": 8}}  # narrow ResNet keeps forward/backward tests fast


def test_registry_names():
    assert models.available() == sorted(name for name, _, _ in REFERENCE)
    with pytest.raises(ValueError, match="Did you mean"):
        models.build("resnet-19")
    with pytest.raises(TypeError, match="hidden"):
        models.build("mlp", hiden=(3,))


@pytest.mark.parametrize("name,shape,count", REFERENCE)
def test_reference_parameter_counts(name, shape, count):
    net = models.build(name, input_shape=shape, num_classes=10, seed=0)
    assert models.num_parameters(net) == count


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)], ids=["digits", "mnist", "cifar"])
@pytest.mark.parametrize("name", [n for n, _, _ in REFERENCE])
def test_forward_backward_on_every_input_shape(name, shape):
    net = models.build(name, input_shape=shape, num_classes=7, seed=1, **SMALL.get(name, {}))
    x = torch.rand(3, *shape)
    out = net(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 3, 6])).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    net.eval()
    with torch.no_grad():
        assert net(x[:1]).shape == (1, 7)


def test_monna_cnn_has_the_reference_layers():
    net = models.build("monna-cnn")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [tuple(c.weight.shape) for c in convs] == [(20, 1, 5, 5), (50, 20, 5, 5)]
    assert [c.padding for c in convs] == [(0, 0), (0, 0)]
    assert [tuple(f.weight.shape) for f in fcs] == [(500, 800), (10, 500)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    digits_net = models.build("monna-cnn", input_shape=(1, 8, 8))
    assert [m.weight.shape[1] for m in digits_net.modules() if isinstance(m, nn.Linear)][0] == 200  # 50 x 2 x 2


def test_flag_cnn_has_the_reference_layers():
    net = models.build("fa-cnn")
    assert [tuple(m.weight.shape) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == [
        (10, 1, 5, 5), (20, 10, 5, 5), (50, 320), (10, 50)]
    assert sum(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in net.modules()) == 2
    net.eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(net(x), net(x))  # dropout off in eval mode
    assert sum(isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.p > 0 for m in models.build("fa-cnn", dropout=0).modules()) == 0


def test_resnet18_variants():
    net = models.build("resnet18", seed=0)
    assert isinstance(net.stem[0], nn.Conv2d) and net.stem[0].kernel_size == (3, 3) and len(net.stem) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 20  # 1 stem + 16 blocks + 3 shortcuts
    imagenet = models.build("resnet18", stem="imagenet", width=8)
    assert imagenet.stem[0].kernel_size == (7, 7) and isinstance(imagenet.stem[-1], nn.MaxPool2d)
    gn = models.build("resnet18", norm="group", width=8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert not list(models.build("resnet18", norm="none", width=8).buffers())
    with pytest.raises(ValueError, match="norm"):
        models.build("resnet18", norm="layer")


def test_shapes_that_do_not_fit_fail_clearly():
    with pytest.raises(ValueError, match="image inputs"):
        models.build("monna-cnn", input_shape=(40,))
    with pytest.raises(ValueError, match="too small"):
        models.build("cifar-cnn", input_shape=(3, 8, 8), padding=0)
    assert models.build("logistic", input_shape=40, num_classes=3)(torch.rand(2, 40)).shape == (2, 3)
    assert models.build("mlp", input_shape=(28, 28), hidden=())(torch.rand(2, 28, 28)).shape == (2, 10)
    assert models.build("fa-cnn", input_shape=(28, 28))(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_seed_fixes_weights_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a = models.build("cifar-cnn", seed=5)
    b = models.build("cifar-cnn", seed=5)
    c = models.build("cifar-cnn", seed=6)
    assert torch.equal(torch.rand(2), expected)
    va, vb, vc = (nn.utils.parameters_to_vector(m.parameters()) for m in (a, b, c))
    assert torch.equal(va, vb) and not torch.equal(va, vc)


def test_model_fn_is_picklable_and_checks_params_early():
    make = models.model_fn("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16,), seed=2)
    assert isinstance(make, functools.partial)
    clone = pickle.loads(pickle.dumps(make))
    v1 = nn.utils.parameters_to_vector(make().parameters())
    v2 = nn.utils.parameters_to_vector(clone().parameters())
    assert torch.equal(v1, v2) and v1.numel() == 64 * 16 + 16 + 16 * 10 + 10
    with pytest.raises(TypeError, match="hidden"):
        models.model_fn("mlp", hiden=(16,))
    with pytest.raises(ValueError, match="unknown model"):
        models.model_fn("transformer")


@pytest.mark.parametrize("name,kwargs,lr", [("logistic", {}, 0.5), ("mlp", {"hidden": (64,)}, 0.1)])
def test_small_models_learn_digits(name, kwargs, lr, one_thread):
    ds = data.load("digits")
    net = models.build(name, input_shape=ds.input_shape, num_classes=ds.num_outputs, seed=0, **kwargs)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loader = data.WorkerLoader(ds.X_train, ds.y_train, range(ds.train_size), batch_size=64, seed=0)
    for _ in range(200):
        x, y = loader.next()
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (net(ds.X_test).argmax(1) == ds.y_test).float().mean().item()
    assert acc > 0.9, f"{name} reached only {acc:.3f} test accuracy on digits"


def test_linear_model_fits_synthetic_regression(one_thread):
    ds = data.load("synthetic", task="regression", n=1000, d=10, noise=0.01, seed=0)
    net = models.build("linear", input_shape=ds.input_shape, num_classes=ds.num_outputs, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.mse_loss(net(ds.X_train), ds.y_train).backward()
        opt.step()
    with torch.no_grad():
        assert nn.functional.mse_loss(net(ds.X_test), ds.y_test).item() < 0.01
