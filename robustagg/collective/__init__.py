"""Robust aggregation as a :mod:`torch.distributed` collective (no parameter server).

* :func:`robust_all_reduce`: every rank passes its update(s), every rank gets the robust
  aggregate, at about the cost of a ring all-reduce;
* :func:`robust_hook` / :class:`RobustHookState`: a ``DistributedDataParallel`` comm hook;
* :func:`robust_step`: the same after ``backward()`` in loops without DDP.

See docs/collective.md.
"""

from robustagg.collective.allreduce import CollectiveError, ShardComm, robust_all_reduce, shard_bounds
from robustagg.collective.hooks import RobustHookState, robust_hook, robust_step

__all__ = ["CollectiveError", "RobustHookState", "ShardComm", "robust_all_reduce", "robust_hook",
           "robust_step", "shard_bounds"]
