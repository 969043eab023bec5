"""Run-off election: certified defences against data poisoning (DPA, FA, ROE).

>>> import numpy as np
>>> from robustagg import election
>>> keys = election.pixel_sum_hash(np.random.default_rng(0).integers(0, 256, (100, 8, 8)))
>>> part = election.dpa_partition(keys, k=5)
>>> scores = np.random.default_rng(1).normal(size=(5, 20, 3))
>>> labels = election.run_off(scores)
>>> certs = election.certify(scores, labels, "dpa+roe")
>>> bool((certs >= 0).all())
True

References
----------
Rezaei, Banihashem, Chegini, Feizi, "Run-Off Election: Improved Provable
Defense against Data Poisoning Attacks", ICML 2023.
"""

from robustagg.election.certificates import METHODS, Method, available_methods, certified_accuracy, certify, dp_table
from robustagg.election.config import load_config
from robustagg.election.ensemble import load_scores, train_ensemble
from robustagg.election.partitions import (
    REFERENCE_SHIFT_SEED,
    Partition,
    dpa_partition,
    fa_partition,
    fa_shifts,
    pixel_sum_hash,
    sha256_hash,
)
from robustagg.election.pipeline import ElectionResult, run_election
from robustagg.election.votes import combine_scores, plurality, run_off, vote_counts

__all__ = [
    "METHODS", "ElectionResult", "Method", "available_methods", "Partition", "REFERENCE_SHIFT_SEED", "certified_accuracy", "certify",
    "combine_scores", "dp_table", "dpa_partition", "fa_partition", "fa_shifts", "load_config", "load_scores",
    "pixel_sum_hash", "plurality", "run_election", "run_off", "sha256_hash", "train_ensemble", "vote_counts",
]
