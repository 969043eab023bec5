r"""The ``allreduce`` topology of the distributed trainer: no server, every rank keeps the model.

Launch::

    torchrun --nproc-per-node 4 -m robustagg.train.distributed CONFIG.toml --topology allreduce

The same configuration file as the parameter server (``docs/training.md``). The ``n`` workers
that compute are split over the ranks as in the parameter-server mode
(:func:`~robustagg.train.distributed.assign_workers`); the Byzantine workers of an
``[attack]`` live on the last rank. One step ``t`` on every rank::

    plan(t); compute the own workers' updates        (as the parameter server)
    all_reduce [loss sum, loss count, honest count, honest sum (d, mean attacks only)]
    (ALIE only) all_reduce of the honest squared deviations (d)
    (mimic, *-opt) robust_all_reduce(own honest rows, ShardedAttack): the Byzantine rows
    last rank: the Byzantine rows from the honest mean (and standard deviation)
    faults on the own workers' rows
    all_reduce [rows, non-finite rows]
    u = robust_all_reduce(own rows, rule)            (no rank holds the (n, d) stack)
    the same optimizer step on every rank

**Attacks.** An omniscient attack sees every honest row; here no rank holds them. The attacks
that depend on the honest rows only through their mean (``sign-flip``, ``reverse`` without
``per_worker``, ``ipm``, ``foe``, ``gaussian``) or not at all (``random``, ``zero``, ``inf``,
``nan``) are the attack itself called on the one-row matrix ``[mean]``; ``alie`` also needs the
per-coordinate standard deviation, from a second all-reduce. ``mimic`` and the ``*-opt`` line
searches run on coordinate shards of the honest rows (:class:`ShardedAttack`): one
``all_to_all`` gives each rank every honest row on its shard, the statistics that span all
coordinates (mimic's centred Gram matrix, each candidate's damage norm and the rule's own
statistics) are all-reduced, so every rank takes the in-process decision, and one
``all_gather`` assembles the Byzantine rows. ``reverse`` with ``per_worker`` and attack
objects of other types are refused with a one-line error. Data poisoning (``[poisoning]``)
needs nothing: the poisoned workers compute their own updates.

**Failures.** Every collective waits at most ``timeout`` seconds; a rank that died or hangs
makes the others raise :class:`~robustagg.collective.CollectiveError`, which the launcher
prints as one line naming the timeout and the checkpoint ``--resume`` continues from.

**Summation order.** The honest mean is a float64 sum over ranks instead of ``H.mean(0)``
in one process, the honest loss likewise, and the rule's Gram matrix or norms are sums of
per-shard partial sums (:func:`robustagg.collective.robust_all_reduce`): the model equals the
parameter server's up to float rounding (tested), not bit for bit.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.attacks import classic, optimized
from robustagg.attacks.base import repeat_rows
from robustagg.collective import ShardComm, robust_all_reduce
from robustagg.collective.allreduce import guard_collective
from robustagg.train.base import StepResult
from robustagg.train.components import derive_seed
from robustagg.train.results import History
from robustagg.train.server import ParameterServer
from robustagg.train.worker import assign_workers

#: attacks computed from the honest mean alone: ``attack([mean], f)`` is ``attack(H, f)``
MEAN_ONLY = (classic.SignFlip, classic.IPM, classic.FOE, classic.Gaussian, classic.Random,
             classic.Zero, classic.Inf, classic.NaN, classic.Reverse)
#: attacks built on coordinate shards of the honest rows (:class:`ShardedAttack`)
SHARDED = (classic.Mimic, optimized.ALIEOpt, optimized.FOEOpt, optimized.IPMOpt)
SUPPORTED = ("sign-flip", "reverse", "ipm", "foe", "alie", "gaussian", "random", "zero", "inf", "nan",
             "mimic", "alie-opt", "foe-opt", "ipm-opt")


def check_topology(attack: Any, mode: str) -> None:
    """One-line ``ValueError`` when ``attack`` or the server ``mode`` cannot run in the
    ``allreduce`` topology (see the module docstring)."""
    if mode == "afa-cs":
        raise ValueError("--topology allreduce: server.mode 'afa-cs' keeps every worker's latest update "
                         "(an n x d store); use --topology ps")
    if attack is None:
        return
    name = getattr(attack, "name", "") or type(attack).__name__
    ok = type(attack) in MEAN_ONLY + (classic.ALIE,) + SHARDED and not getattr(attack, "per_worker", False)
    if not ok:
        raise ValueError(f"--topology allreduce: attack {name!r} needs every honest update in one place; "
                         f"supported: {', '.join(SUPPORTED)} (or use --topology ps)")


def byzantine_rows(attack: Any, mean: torch.Tensor, std: Optional[torch.Tensor], h: int, f: int,
                   aggregator: Any, generator: Optional[torch.Generator]) -> torch.Tensor:
    """The ``(f, d)`` rows a supported ``attack`` builds from ``h`` honest rows of mean ``mean``
    and per-coordinate (Bessel-corrected) standard deviation ``std`` (ALIE only)."""
    if isinstance(attack, classic.ALIE):
        z = classic.alie_z(h + f, f) if attack.z is None else attack.z
        attack.last = {"z": z}
        row = mean + z * std if h > 1 else mean.clone()
        return row.unsqueeze(0).repeat(f, 1)
    return attack(mean.unsqueeze(0), f, aggregator=aggregator, generator=generator)


class ShardedAttack(Aggregator):
    r"""A :data:`SHARDED` attack as a "rule" for :func:`robust_all_reduce` over the honest rows:
    every rank passes its honest rows and gets the ``(f, d)`` Byzantine rows.

    On coordinate shard :math:`S` it sees every honest row's values :math:`H_{:,S}`. ``mimic``
    chooses :math:`i^*` from the centred Gram matrix :math:`K = \sum_S C_{:,S} C_{:,S}^\top`
    (one all-reduce of ``h x h`` values) and returns :math:`H_{i^*,S}`; the ``*-opt`` attacks
    evaluate ``rule`` on :math:`[H_{:,S}; b_S(\lambda)]` for each candidate factor (the rule's own
    statistics summed over shards) and the damage
    :math:`\|A - ar x\| = (\sum_S \|A_S - ar x_S\|^2)^{1/2}` (one all-reduce of one value).
    """

    def __init__(self, attack: Any, f: int, rule: Aggregator) -> None:
        super().__init__(f)
        self.attack, self.rule = attack, rule

    def aggregate(self, X: torch.Tensor, *, spent: int = 0) -> torch.Tensor:
        comm = self._shards
        total = None if comm is None else comm.sum
        if isinstance(self.attack, classic.Mimic):
            return repeat_rows(X[self.attack.choose(X, total)], self.f)
        return self.attack.search(X, self.f, lambda Y: optimized.evaluate_rule(self.rule, Y, comm), total)


class AllReduceTrainer(ParameterServer):
    """:class:`~robustagg.train.ParameterServer` without a server: every rank steps the model.

    Build it on every rank after :func:`torch.distributed.init_process_group` and call
    :meth:`run` on every rank; rank 0 writes the result files and checkpoints (the ranks must
    share the run directory to resume).

    Parameters
    ----------
    config : TrainConfig, dict or path
        A parameter-server configuration; every rank reads the same one.
    timeout : float, optional
        Seconds each collective of the robust all-reduce waits for the other ranks.
    **kwargs
        ``dataset``, ``aggregator``, ``attack`` as for :class:`~robustagg.train.ParameterServer`.

    Notes
    -----
    The state of stateful faults (``straggler``) lives with the rank hosting each worker;
    checkpoints keep rank 0's only, so a resumed run with such a fault is not exact.
    """

    def __init__(self, config: Any, *, timeout: Optional[float] = None, **kwargs: Any) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first "
                               "(or launch with torchrun -m robustagg.train.distributed --topology allreduce)")
        super().__init__(config, **kwargs)
        check_topology(self.attack, self.mode)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.writes_run_dir = self.rank == 0  # another rank must not delete rank 0's temporary files
        computing = [w for w in range(self.n) if self.loaders[w] is not None]
        self.blocks = assign_workers(computing, self.world)
        self.mine = self.blocks[self.rank]
        self.hosted = sorted(self.mine + (self.attackers if self.rank == self.world - 1 else []))
        self.timeout = None if timeout is None else datetime.timedelta(seconds=timeout)
        nccl = dist.get_backend() == "nccl"
        self.comm_device = self.device if nccl else torch.device("cpu")
        self._comm = ShardComm(None, 0, self.flat.dim, self.comm_device, self.timeout)
        # this rank's rows only (the parameter server's buffer U holds all n)
        d = self.flat.dim
        self.U = {w: torch.empty(d, dtype=self.x.dtype, device=self.device) for w in self.hosted}
        if self.worker_momentum is not None:  # likewise the momenta: this rank's workers only
            self.worker_momentum = {w: torch.zeros(d, device=self.device) for w in self.mine}
        self._mean: Optional[torch.Tensor] = None
        self._h = 0
        self._rows = 0

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        """The float64 sum over ranks (a rank that does not answer within the timeout raises
        :class:`~robustagg.collective.CollectiveError`)."""
        return self._comm.sum(values.to(self.device, torch.float64))

    # ------------------------------------------------------------------ one step
    def step(self) -> StepResult:
        """One step on every rank (see the module docstring)."""
        t = self.t
        tic = self._clock()
        updates: Dict[int, torch.Tensor] = {}
        losses: List[torch.Tensor] = []
        for a in self.plan(t):
            if a.worker in self.mine:
                got, loss = self.compute(t, [a], workers=[a.worker])
                updates.update(got)
                if a.worker < self.h and a.worker in got:
                    losses.append(torch.as_tensor(loss, dtype=torch.float64))
        honest = [updates[w] for w in sorted(updates) if w < self.h]
        head = torch.tensor([float(sum(losses)) if losses else 0.0, len(losses), len(honest)], dtype=torch.float64)
        need = self.attack is not None and bool(self.attackers) and not isinstance(self.attack, SHARDED)
        if need:
            d = self.flat.dim
            partial = torch.zeros(d, dtype=torch.float64, device=self.device)
            for row in honest:
                partial += row
            head = torch.cat([head.to(self.device), partial])
        total = self._sum(head)
        count, self._h = int(total[1]), int(total[2])
        loss = float(total[0]) / count if count else math.nan
        self._mean = total[3:] / self._h if need and self._h else None
        return self.finish_step(t, updates, loss, self._clock() - tic)

    def _buffer_rows(self, updates: Dict[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
        for w, u in updates.items():
            if u.data_ptr() != self.U[w].data_ptr():
                self.U[w].copy_(u)
        return {w: self.U[w] for w in updates}

    def _attack(self, t: int, rows: Dict[int, torch.Tensor]) -> None:
        """The Byzantine rows (on the last rank) from the honest mean and, for ALIE, std, or
        for a :data:`SHARDED` attack through :class:`ShardedAttack`."""
        if self.attack is None or not self.attackers or self._h == 0:
            return
        if isinstance(self.attack, SHARDED):
            honest = [rows[w] for w in sorted(rows) if w < self.h]
            H = torch.stack(honest) if honest else self.x.new_empty((0, self.flat.dim))
            B = robust_all_reduce(H, ShardedAttack(self.attack, len(self.attackers), self.rule), timeout=self.timeout)
            self._place(rows, B)
            return
        std = None
        if isinstance(self.attack, classic.ALIE) and self._h > 1:
            partial = torch.zeros_like(self._mean)
            for w, row in rows.items():
                if w < self.h:
                    partial += (row.to(torch.float64) - self._mean) ** 2
            std = (self._sum(partial) / (self._h - 1)).sqrt()
        dtype = self.x.dtype
        mean = self._mean.to(dtype)
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, "attack", t))
        B = byzantine_rows(self.attack, mean, None if std is None else std.to(dtype), self._h,
                           len(self.attackers), self.rule, gen)  # on every rank: attack.last agrees
        self._place(rows, B)

    def _place(self, rows: Dict[int, torch.Tensor], B: torch.Tensor) -> None:
        """The Byzantine rows ``B`` into the last rank's buffers (and ``rows``)."""
        if self.rank != self.world - 1:
            return
        for j, b in enumerate(self.attackers):
            self.U[b].copy_(B[j])
            rows[b] = self.U[b]

    def _deliver(self, t: int, rows: Dict[int, torch.Tensor]) -> torch.Tensor:
        """This rank's rows after the faults, as a ``(k, d)`` matrix in worker order."""
        sent = rows
        if self.faults is not None:
            sent = {}
            for w in self.hosted:
                out = self.faults(t, w, rows.get(w))
                if out is not None:
                    sent[w] = out
        ids = sorted(sent)
        if not ids:
            return self.x.new_empty((0, self.flat.dim))
        return torch.stack([sent[w] for w in ids])

    def _aggregate(self, X: torch.Tensor) -> Tuple[Optional[torch.Tensor], bool]:
        """The rule over every rank's rows through :func:`robust_all_reduce`; ``None`` as in
        :meth:`ParameterServer._aggregate` (too few rows, or more than ``f`` non-finite)."""
        local = torch.tensor([X.shape[0], ops.nonfinite_rows(X).numel() if X.shape[0] else 0], dtype=torch.float64)
        rows, nonfinite = (int(v) for v in self._sum(local))
        self._rows = rows
        if rows == 0 or rows < self.rule.min_inputs():
            return None, False
        try:
            return robust_all_reduce(X, self.rule, timeout=self.timeout), False
        except ValueError:
            if nonfinite <= int(getattr(self.rule, "f", 0) or 0):
                raise
            return None, True

    def server_step(self, t: int, updates: Dict[int, torch.Tensor]) -> StepResult:
        result = super().server_step(t, updates)
        result.rows = self._rows  # every rank's rows, not this rank's
        return result

    def _warn_skipped(self, t: int, rows: int, nonfinite: bool) -> None:
        super()._warn_skipped(t, self._rows, nonfinite)  # every rank's rows, not this rank's

    # ------------------------------------------------------------------ run, evaluation, checkpoints
    def _evaluate(self) -> Dict[str, float]:
        if self.rank != 0:  # every rank has the same model; only rank 0 reports
            return {"test_loss": math.nan, "accuracy": math.nan}
        return super()._evaluate()

    def run(self, steps: Optional[int] = None, *, write: bool = True, **kwargs: Any) -> History:
        """Every rank trains; only rank 0 writes the result files and checkpoints."""
        return super().run(steps, write=write and self.rank == 0, **kwargs)

    def save_checkpoint(self, path: Optional[Any] = None) -> Any:
        """Collective: every rank sends its workers' loader positions and momenta to rank 0,
        which writes the checkpoint (the parameter server's format: the momenta as one ``(n, d)``
        tensor, assembled on rank 0 while it writes)."""
        mine = {"loaders": {w: self.loaders[w].state_dict() for w in self.mine},
                "momentum": {} if self.worker_momentum is None else
                {w: self.worker_momentum[w].cpu() for w in self.mine}}
        everything: List[Any] = [None] * self.world
        # a plain collective: it waits for the process group's timeout (the launcher's --timeout)
        with guard_collective(f"collection of the checkpoint of step {self.t}", who="allreduce trainer"):
            dist.all_gather_object(everything, mine)
        if self.rank != 0:
            self.checkpoint_step = self.t
            return path if path is not None else self.checkpoint_path
        self._momenta = {}
        for state in everything:
            for w, sub in state["loaders"].items():
                self.loaders[w].load_state_dict(sub)
            self._momenta.update(state["momentum"])
        try:
            return super().save_checkpoint(path)
        finally:
            self._momenta = {}

    def _state(self) -> Dict[str, Any]:
        state = super()._state()
        if self.worker_momentum is not None:
            full = torch.zeros(self.n, self.flat.dim)
            for w, row in getattr(self, "_momenta", {}).items():
                full[w].copy_(row)
            state["worker_momentum"] = full
        return state

    def _load_state(self, state: Dict[str, Any]) -> None:
        momentum = self.worker_momentum
        super()._load_state(state)
        if momentum is not None:
            full = state["worker_momentum"]
            self.worker_momentum = {w: full[w].to(self.device).clone() for w in self.mine}
