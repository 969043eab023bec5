"""Hashes and DPA / Finite Aggregation partitions."""

import hashlib
import random

import numpy as np
import pytest
import torch

from robustagg import election as el


def test_pixel_sum_hash_is_the_integer_pixel_sum_also_from_totensor_floats():
    imgs = np.random.default_rng(0).integers(0, 256, (50, 1, 6, 6)).astype(np.uint8)
    want = imgs.reshape(50, -1).astype(np.int64).sum(1)
    assert np.array_equal(el.pixel_sum_hash(imgs), want)
    floats = torch.as_tensor(imgs).float().div(255)  # what torchvision's ToTensor produces
    assert np.array_equal(el.pixel_sum_hash(floats), want)
    with pytest.raises(TypeError):
        el.pixel_sum_hash(np.array(["a", "b"]))


def test_sha256_hash_reads_the_digest_of_the_sample_bytes():
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    h = el.sha256_hash(x)
    assert h.dtype == object and len(h) == 2
    assert h[0] == int.from_bytes(hashlib.sha256(x[0].tobytes()).digest(), "big")
    assert h[0] != h[1]
    y = x.copy()
    y[0, 0, 0], y[0, 0, 1] = y[0, 0, 1], y[0, 0, 0]  # same pixel sum, different content
    assert el.pixel_sum_hash(y)[0] == el.pixel_sum_hash(x)[0] and el.sha256_hash(y)[0] != h[0]


def test_fa_shifts_are_the_reference_draw_and_leave_the_global_generator_alone():
    state = random.getstate()
    random.seed(999999999 + 208)
    want = random.sample(range(50 * 16), 16)
    random.setstate(state)
    before = random.random()
    random.setstate(state)
    assert el.fa_shifts(50, 16) == tuple(want)
    assert random.random() == before
    assert el.fa_shifts(50, 16, seed=3) == tuple(random.Random(3).sample(range(800), 16))


def test_dpa_partition_puts_sample_x_in_h_mod_k():
    keys = np.random.default_rng(1).integers(0, 10 ** 9, 200)
    p = el.dpa_partition(keys, 7)
    assert (p.k, p.d, p.shifts, p.num_models) == (7, 1, (0,), 7)
    assert np.array_equal(p.buckets, keys % 7)
    seen = np.concatenate(list(p))
    assert np.array_equal(np.sort(seen), np.arange(200))  # disjoint and complete
    for i in range(7):
        assert np.array_equal(p.indices(i), np.flatnonzero(keys % 7 == i))
    assert p.sizes().sum() == 200


def test_fa_partition_feeds_bucket_b_to_models_b_plus_shift():
    keys = el.sha256_hash(np.random.default_rng(2).integers(0, 256, (300, 4, 4)).astype(np.uint8))
    k, d = 5, 3
    p = el.fa_partition(keys, k, d, seed=11)
    kd = k * d
    assert p.num_buckets == kd and p.shifts == el.fa_shifts(k, d, seed=11)
    assert np.array_equal(p.buckets, np.array([int(h) % kd for h in keys]))
    member = np.zeros((kd, 300), bool)
    for i in range(kd):
        member[i, p.indices(i)] = True
        assert np.array_equal(np.sort(p.model_buckets[i]), np.sort([(i - s) % kd for s in p.shifts]))
    for x in range(300):  # every sample trains exactly the d models its bucket feeds
        b = p.buckets[x]
        assert set(np.flatnonzero(member[:, x])) == {(b + s) % kd for s in p.shifts}
    assert np.array_equal(p.sizes(), member.sum(1))
    for b in range(kd):
        for m in p.bucket_models[b]:
            assert b in p.model_buckets[m]


def test_partition_key_errors():
    with pytest.raises(TypeError):
        el.dpa_partition(np.array([0.5, 1.5]), 2)
    with pytest.raises(ValueError):
        el.dpa_partition(np.zeros((2, 2), int), 2)
    with pytest.raises(ValueError):
        el.fa_partition(np.arange(4), 0, 2)
    with pytest.raises(ValueError):
        el.dpa_partition(np.arange(4), 2).indices(2)
    assert el.dpa_partition(np.array([-3, 4], dtype=np.int64), 4).buckets.tolist() == [1, 0]
