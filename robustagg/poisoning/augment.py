"""The Flag Aggregator paper's "augmented-data" workers: nonlinear augmentations plus noise."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

from robustagg._validation import check_float, check_int
from robustagg.poisoning._arrays import as_images, cast_into, check_labels, choose, count, index_like, to_numpy

_CHUNK = 256


def augmented(X: Any, y: Any, *, fraction: float = 1.0, noise_std: float = 0.1,
              gamma_range: Tuple[float, float] = (0.5, 2.0), elastic_alpha: float = 2.0,
              elastic_sigma: float = 3.0, image_shape: Sequence[int] = None,
              seed: int = 0) -> Tuple[Any, Any, Any]:
    r"""Augmented-data worker: distort a share of the images nonlinearly and add noise.

    For each of the :math:`k = \lfloor \mathrm{fraction} \cdot N \rfloor` samples ``S`` drawn
    uniformly (``numpy.random.default_rng(seed)``), with :math:`m, M` the sample's min and max
    and :math:`u = (x - m) / (M - m) \in [0, 1]`:

    1. **gamma (intensity) distortion**, nonlinear in the pixel values:
       :math:`u \leftarrow u^{\gamma}`, :math:`\log\gamma \sim \mathcal U[\log\gamma_{lo}, \log\gamma_{hi}]`
       (``gamma_range``);
    2. **elastic deformation**, nonlinear in the geometry (Simard et al. 2003): a random
       displacement field, i.i.d. :math:`\mathcal U[-1, 1]` per pixel, smoothed by a Gaussian of
       width ``elastic_sigma`` pixels and scaled to an RMS of ``elastic_alpha`` pixels, resamples
       every channel bilinearly (edges replicated);
    3. **additive noise**: :math:`x \leftarrow m + (M - m)\,u + \varepsilon`,
       :math:`\varepsilon \sim \mathcal N(0, (\mathrm{noise\_std}\,(M - m))^2)` per pixel.

    Labels are kept. Why these: the paper's augmented workers compute gradients on
    nonlinearly transformed (partly synthetic, diffusion-generated) images plus random noise,
    so their updates are biased but not adversarial. Generative models are out of scope for a
    framework-free injector; gamma and elastic distortions are the standard cheap *nonlinear*
    transforms (one photometric, one geometric) that keep digits/objects recognisable, need
    only numpy/scipy, and compose with any image size; the noise is the paper's additive noise.
    Setting ``gamma_range=(1, 1)``, ``elastic_alpha=0`` or ``noise_std=0`` turns a step off.

    Parameters
    ----------
    X : numpy array or torch tensor
        ``(N, H, W)``, ``(N, C, H, W)``, or flat ``(N, D)`` with ``image_shape``. Integer
        images are rounded and clipped to their dtype.
    y : numpy array or torch tensor, shape (N,)

    Returns
    -------
    X_augmented, y (copy), augmented_indices
        In the input's type; the inputs are not modified.

    References
    ----------
    Almasi, Mishra, Vamanan, Ravi, "Flag Aggregator: Scalable Distributed Training under
    Failures and Augmented Losses using Convex Optimization", ICLR 2024.
    Simard, Steinkraus, Platt, "Best Practices for Convolutional Neural Networks Applied to
    Visual Document Analysis", ICDAR 2003.
    """
    noise_std = check_float(noise_std, "noise_std", minimum=0.0)
    elastic_alpha = check_float(elastic_alpha, "elastic_alpha", minimum=0.0)
    elastic_sigma = check_float(elastic_sigma, "elastic_sigma", minimum=0.0, strict_min=True)
    if not isinstance(gamma_range, (tuple, list)) or len(gamma_range) != 2:
        raise TypeError(f"gamma_range must be a (low, high) pair, got {gamma_range!r}")
    g_lo = check_float(gamma_range[0], "gamma_range[0]", minimum=0.0, strict_min=True)
    g_hi = check_float(gamma_range[1], "gamma_range[1]", minimum=g_lo)
    seed = check_int(seed, "seed", minimum=0)

    arr, back = to_numpy(X, "X")
    yc, back_y = to_numpy(y, "y")
    yc = check_labels(yc, arr.shape[0])
    images, _ = as_images(arr, image_shape)
    idx = choose(np.arange(arr.shape[0]), count(fraction, arr.shape[0]), seed)
    if idx.size:
        rng = np.random.default_rng([seed, 1])
        for start in range(0, idx.size, _CHUNK):  # bounded memory for the warp's coordinate grids
            rows = idx[start:start + _CHUNK]
            batch = _distort(images[rows].astype(np.float64), rng, noise_std, (g_lo, g_hi),
                             elastic_alpha, elastic_sigma)
            images[rows] = cast_into(batch, images.dtype)
    return back(arr), back_y(yc), index_like(idx, y)


def _distort(batch: np.ndarray, rng: np.random.Generator, noise_std: float, gamma_range: Tuple[float, float],
             alpha: float, sigma: float) -> np.ndarray:
    """Gamma, elastic warp and noise on a float64 ``(k, C, H, W)`` batch (vectorised over it)."""
    from scipy import ndimage

    k, channels, height, width = batch.shape
    lo = batch.min(axis=(1, 2, 3), keepdims=True)
    span = batch.max(axis=(1, 2, 3), keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    u = (batch - lo) / safe
    gamma = np.exp(rng.uniform(np.log(gamma_range[0]), np.log(gamma_range[1]), size=(k, 1, 1, 1)))
    u = u ** gamma
    if alpha > 0:
        field = rng.uniform(-1.0, 1.0, size=(2, k, 1, height, width))
        field = ndimage.gaussian_filter(field, sigma=(0, 0, 0, sigma, sigma), mode="constant")
        rms = np.sqrt(np.mean(field ** 2, axis=(0, 2, 3, 4), keepdims=True))
        field = field * (alpha / np.where(rms > 0, rms, 1.0))
        grid = np.meshgrid(np.arange(k), np.arange(channels), np.arange(height), np.arange(width),
                           indexing="ij")
        coords = [grid[0], grid[1], grid[2] + field[0], grid[3] + field[1]]
        u = ndimage.map_coordinates(u, coords, order=1, mode="nearest")
    out = lo + span * u
    if noise_std > 0:
        out = out + rng.normal(0.0, 1.0, size=out.shape) * (noise_std * span)
    return out
