"""Small models for the experiments: logistic regression, MLP, the seed papers' CNNs, ResNet-18.

Every model is built from an input shape and a number of outputs, so the same name works
on digits (``(1, 8, 8)``), MNIST (``(1, 28, 28)``) and CIFAR-10 (``(3, 32, 32)``). Models
return logits (use ``nn.CrossEntropyLoss``; the reference codes' ``log_softmax`` + NLL is
the same loss).

>>> from robustagg import models
>>> net = models.build("monna-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
>>> models.num_parameters(net)
431080
>>> make = models.model_fn("mlp", input_shape=(64,), num_classes=10, hidden=(32,))
>>> net = make()          # ``make`` is a functools.partial: picklable, fine for process pools
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from robustagg._registry import Registry, check_params, normalize_name
from robustagg._validation import check_choice, check_float, check_int

MODELS = Registry("model")


def _shape(input_shape: Any) -> Tuple[int, ...]:
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}")
    return shape


def _image_shape(input_shape: Any, model: str) -> Tuple[int, int, int]:
    shape = _shape(input_shape)
    if len(shape) == 2:  # (H, W): one channel
        shape = (1,) + shape
    if len(shape) != 3:
        raise ValueError(f"{model} needs image inputs (C, H, W), got input_shape={shape}; use 'logistic' or 'mlp'")
    return shape  # type: ignore[return-value]


def _auto_padding(padding: Any, hw: Tuple[int, int], kernel: int, model: str) -> int:
    """``"auto"``: no padding (the papers' layers) when two valid k x k conv + 2x2 pool stages fit."""
    if padding == "auto":
        side = min(hw)
        for _ in range(2):
            side = (side - kernel + 1) // 2
        return 0 if side >= 1 else kernel // 2
    return check_int(padding, f"{model} padding", minimum=0)


def _two_conv_out(hw: Tuple[int, int], kernel: int, pad: int, model: str) -> int:
    h, w = hw
    for _ in range(2):
        h, w = (h + 2 * pad - kernel + 1) // 2, (w + 2 * pad - kernel + 1) // 2
    if h < 1 or w < 1:
        raise ValueError(f"{model}: input {hw} is too small for two {kernel}x{kernel} conv + pool stages with padding {pad}")
    return h * w


@MODELS.register("logistic", "logreg", "linear")
class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``Flatten -> Linear(prod(input_shape), num_classes)``.

    With ``num_classes=1`` and ``nn.MSELoss`` it is linear regression.
    """

    def __init__(self, input_shape: Any = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        d = math.prod(_shape(input_shape))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, check_int(num_classes, "num_classes", minimum=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("mlp")
class MLP(nn.Module):
    """Fully connected network: ``Flatten -> [Linear -> act] * len(hidden) -> Linear``.

    The default ``hidden=(100,)`` with ReLU is the MNIST "full" model of the MoNNA reference
    code (784 -> 100 -> 10).

    Parameters
    ----------
    hidden : sequence of int
        Widths of the hidden layers (may be empty: logistic regression).
    activation : {"relu", "tanh", "gelu"}
    dropout : float
        Dropout after each hidden activation (default 0).
    """

    def __init__(self, input_shape: Any = (1, 28, 28), num_classes: int = 10, hidden: Sequence[int] = (100,),
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[check_choice(activation, "activation", ("relu", "tanh", "gelu"))]
        dropout = check_float(dropout, "dropout", minimum=0.0, maximum=1.0, strict_max=True)
        widths = [math.prod(_shape(input_shape))] + [check_int(h, "hidden size", minimum=1) for h in hidden]
        layers: List[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        layers.append(nn.Linear(widths[-1], check_int(num_classes, "num_classes", minimum=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("monna-cnn", "monna-mnist-cnn")
class MoNNACNN(nn.Module):
    """The MoNNA MNIST CNN (conv 20 -> conv 50 -> fc 500), as in the LPD-EPFL reference code.

    Layers, for input ``(C, H, W)``::

        Conv2d(C, 20, 5) -> ReLU -> MaxPool2d(2)
        Conv2d(20, 50, 5) -> ReLU -> MaxPool2d(2)
        Flatten -> Linear(50 * h * w, 500) -> ReLU -> Linear(500, num_classes)

    On MNIST (28x28) the feature map is 4x4, so fc1 is ``Linear(800, 500)`` and the model
    has 431,080 parameters, exactly the reference's ``conv`` model
    (``experiments/models/simples.py``; it ends with ``log_softmax``, this one returns
    logits). ``padding="auto"`` keeps padding 0 whenever the input allows two valid 5x5 conv
    + pool stages (H, W >= 16) and otherwise pads by 2 ("same"), so digits' 8x8 images give
    a 2x2 map (fc1 ``Linear(200, 500)``).

    References
    ----------
    Farhadkhani, S., Guerraoui, R., Gupta, N., Hoang, L.-N., Pinot, R. and Stephan, J.
    "Robust Collaborative Learning with Linear Gradient Overhead", ICML 2023.
    """

    def __init__(self, input_shape: Any = (1, 28, 28), num_classes: int = 10, padding: Any = "auto") -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "monna-cnn")
        pad = _auto_padding(padding, (h, w), 5, "monna-cnn")
        flat = 50 * _two_conv_out((h, w), 5, pad, "monna-cnn")
        self.features = nn.Sequential(
            nn.Conv2d(c, 20, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(),
                                        nn.Linear(500, check_int(num_classes, "num_classes", minimum=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("fa-cnn", "flag-cnn", "fa-mnist-cnn")
class FlagCNN(nn.Module):
    """The Flag Aggregator MNIST CNN (2 conv + 2 fc): the classic PyTorch MNIST example net.

    Layers, for input ``(C, H, W)``::

        Conv2d(C, 10, 5) -> MaxPool2d(2) -> ReLU
        Conv2d(10, 20, 5) -> Dropout2d(0.5) -> MaxPool2d(2) -> ReLU
        Flatten -> Linear(20 * h * w, 50) -> ReLU -> Dropout(0.5) -> Linear(50, num_classes)

    On MNIST fc1 is ``Linear(320, 50)``: 21,840 parameters, the reference's ``convnet``
    (``garfieldpp/models/nets.py``, class ``Net``; it ends with ``log_softmax``, this one
    returns logits). ``dropout=0`` removes both dropouts. ``padding="auto"`` as in
    :class:`MoNNACNN` (8x8 digits: padding 2, fc1 ``Linear(80, 50)``).

    References
    ----------
    Almasi, H., Mishra, H., Vamanan, B. and Ravi, S. N. "Flag Aggregator: Scalable
    Distributed Training under Failures and Augmented Losses using Convex Optimization",
    ICLR 2024.
    """

    def __init__(self, input_shape: Any = (1, 28, 28), num_classes: int = 10, padding: Any = "auto",
                 dropout: float = 0.5) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "fa-cnn")
        pad = _auto_padding(padding, (h, w), 5, "fa-cnn")
        flat = 20 * _two_conv_out((h, w), 5, pad, "fa-cnn")
        p = check_float(dropout, "dropout", minimum=0.0, maximum=1.0, strict_max=True)
        self.features = nn.Sequential(
            nn.Conv2d(c, 10, 5, padding=pad), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5, padding=pad), nn.Dropout2d(p), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 50), nn.ReLU(), nn.Dropout(p),
                                        nn.Linear(50, check_int(num_classes, "num_classes", minimum=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("cifar-cnn", "cifarnet")
class CifarCNN(nn.Module):
    """A small CIFAR-10 CNN: the PyTorch CIFAR-10 tutorial net (LeNet-5 style).

    Layers, for input ``(C, H, W)``::

        Conv2d(C, 6, 5) -> ReLU -> MaxPool2d(2)
        Conv2d(6, 16, 5) -> ReLU -> MaxPool2d(2)
        Flatten -> Linear(16 * h * w, 120) -> ReLU -> Linear(120, 84) -> ReLU -> Linear(84, num_classes)

    On CIFAR-10 (32x32) fc1 is ``Linear(400, 120)``: 62,006 parameters; this is the
    ``cifarnet`` of the Flag Aggregator reference code (``garfieldpp/models/nets.py``).
    ``padding="auto"`` as in :class:`MoNNACNN`.

    References
    ----------
    LeCun, Y. et al. 1998 (LeNet-5); Krizhevsky, A. 2009 (CIFAR-10).
    """

    def __init__(self, input_shape: Any = (3, 32, 32), num_classes: int = 10, padding: Any = "auto") -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "cifar-cnn")
        pad = _auto_padding(padding, (h, w), 5, "cifar-cnn")
        flat = 16 * _two_conv_out((h, w), 5, pad, "cifar-cnn")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, check_int(num_classes, "num_classes", minimum=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # 32 groups, or fewer for narrow layers
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with normalisation, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=bias), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@MODELS.register("resnet18", "resnet-18")
class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stem without max-pooling, four stages of two basic blocks.

    Layers (``w = width``, default 64)::

        Conv2d(C, w, 3, padding=1) -> Norm -> ReLU                       # stem (CIFAR)
        2 x BasicBlock(w), 2 x BasicBlock(2w, first stride 2),
        2 x BasicBlock(4w, first stride 2), 2 x BasicBlock(8w, first stride 2)
        AdaptiveAvgPool2d(1) -> Flatten -> Linear(8w, num_classes)

    11,173,962 parameters on CIFAR-10. ``stem="imagenet"`` uses the original 7x7 stride-2
    conv + 3x3 stride-2 max-pool (torchvision's layout, which the Flag Aggregator reference
    code trains on CIFAR-10). ``norm`` is ``"batch"`` (default; running statistics are
    buffers, not parameters), ``"group"`` (32 groups, common in federated learning) or
    ``"none"``. Adaptive pooling makes any input of at least 8x8 work.

    References
    ----------
    He, K., Zhang, X., Ren, S. and Sun, J. "Deep Residual Learning for Image Recognition",
    CVPR 2016.
    """

    def __init__(self, input_shape: Any = (3, 32, 32), num_classes: int = 10, width: int = 64,
                 norm: str = "batch", stem: str = "cifar") -> None:
        super().__init__()
        c, _, _ = _image_shape(input_shape, "resnet18")
        w = check_int(width, "width", minimum=1)
        check_choice(norm, "norm", ("batch", "group", "none"))
        check_choice(stem, "stem", ("cifar", "imagenet"))
        bias = norm == "none"
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(c, w, 3, padding=1, bias=bias), _norm(norm, w), nn.ReLU())
        else:
            self.stem = nn.Sequential(nn.Conv2d(c, w, 7, stride=2, padding=3, bias=bias), _norm(norm, w), nn.ReLU(),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        blocks: List[nn.Module] = []
        cin = w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            for j in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8 * w, check_int(num_classes, "num_classes", minimum=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def build(name: str, seed: Optional[int] = None, **params: Any) -> nn.Module:
    """Build the model registered as ``name``: ``build("mlp", input_shape=(1, 8, 8), num_classes=10)``.

    Every model takes ``input_shape`` and ``num_classes`` (number of outputs); other
    ``params`` are model specific (see each class). With ``seed`` the initial weights are
    drawn from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``, so the same seed
    gives the same weights and the global RNG is left untouched.
    """
    if seed is None:
        return MODELS.get(name, **params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_int(seed, "seed"))
        return MODELS.get(name, **params)


def model_fn(name: str, **params: Any) -> Callable[[], nn.Module]:
    """A picklable zero-argument factory, ``functools.partial(build, name, **params)``.

    The name and parameters are checked now, so a typo fails here rather than inside a
    worker process.
    """
    factory = MODELS.resolve(name)
    check_params(factory, {k: v for k, v in params.items() if k != "seed"}, f"model {normalize_name(name)!r}")
    return functools.partial(build, name, **params)


def available() -> List[str]:
    """Names of every registered model."""
    return MODELS.available()


def num_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; buffers such as BatchNorm statistics are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["MODELS", "build", "model_fn", "available", "num_parameters", "LogisticRegression", "MLP",
           "MoNNACNN", "FlagCNN", "CifarCNN", "ResNet18", "BasicBlock"]
