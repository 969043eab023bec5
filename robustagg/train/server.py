r"""The in-process parameter server: honest workers, Byzantine workers, faults, a robust rule.

One step ``t`` (:meth:`ParameterServer.step`) is three calls, so a distributed runner can
put the first on the workers and the rest on the server:

1. :meth:`~ParameterServer.plan` -- who sends in this step, after how many local steps and on
   how stale a model (the participation model; everyone, fresh, by default);
2. :meth:`~ParameterServer.compute` -- every participating honest (or data-poisoning)
   worker's update, :func:`robustagg.train.worker.local_update`, plus worker momentum;
3. :meth:`~ParameterServer.server_step` -- the attack builds the Byzantine updates from the
   honest ones, faults transform what is sent, the rule aggregates, the optimizer steps.

A distributed runner overrides :meth:`~ParameterServer.compute` (the server broadcasts
:math:`x_t` and the past models a stale worker needs, each process runs ``compute`` for its
own workers, the server gathers the rows) and keeps the rest: the run loop, evaluation,
checkpoints and result files are inherited. Every random draw is derived from
``(run.seed, step, worker)``, so the same configuration gives the same updates in any process.

References
----------
Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022 (AFA-CD, AFA-CS).
Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021
(worker momentum).
"""

from __future__ import annotations

import collections
import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from robustagg.aggregators import ops
from robustagg.aggregators.fltrust import fltrust_stage
from robustagg.participation import Arrival
from robustagg.train import checkpoint as ckpt
from robustagg.train.base import StepResult, Trainer
from robustagg.train.components import derive_seed, root_indices
from robustagg.train.optim import ServerSGD
from robustagg.train.worker import build_loaders, local_update

AFL_MODES = ("fedavg", "afa-cd", "afa-cs")


class ParameterServer(Trainer):
    r"""``n`` workers of which ``f`` are Byzantine, one server applying a robust rule.

    Workers ``0..n-f-1`` are honest; workers ``n-f..n-1`` are Byzantine: they either send
    the attack's vectors (``[attack]``) or train honestly on poisoned data (``[poisoning]``).

    **What an attacker sees.** The attack is omniscient: in every step it receives the
    updates every participating honest worker computed in that step (after worker momentum,
    before faults), and the server's rule (for the aggregator-aware ``*-opt`` attacks, which
    evaluate it on copies). Attacking workers send in every step, whatever the participation
    model (the worst case). Randomised attacks draw from a generator seeded by
    ``(run.seed, step)``.

    **Server modes** (``mode``), with :math:`G_i` the worker's averaged local gradient
    (:func:`~robustagg.train.worker.local_update`) and ``Agg`` the configured rule (``mean``
    reproduces the papers' averages):

    * ``sgd`` (default): :math:`x_{t+1} = x_t - \eta_t \, \mathrm{Agg}(G_i : i \in M_t)`,
      through :class:`~robustagg.train.optim.ServerSGD` (momentum, weight decay);
    * ``afa-cd``: the same aggregate, two-sided step
      :math:`x_{t+1} = x_t - \eta \eta_L \, G_t` (Yang et al., Algorithm 1);
    * ``afa-cs``: the server keeps the latest :math:`G_i` of *every* worker (zero at start),
      overwrites those that arrived, and aggregates all ``n`` stored updates
      (Yang et al., Algorithm 2);
    * ``fedavg``: the naive baseline "average who arrived" with FedAvg's unnormalised
      updates :math:`\sum_k g_k` (the model change divided by :math:`\eta_L`).

    **FLTrust** (the rule, or a pipeline's last stage): the server holds
    ``aggregator.root_samples`` training samples no worker has (:func:`~robustagg.train.components.root_indices`)
    and, at the start of every server step, computes its own update on them from :math:`x_t`
    exactly as an honest worker does (``workers.local_steps`` local steps, the mode's
    reduction, batches of ``workers.batch_size``), then hands it to the rule with
    ``set_reference`` before the attack and the aggregation. A rule object passed as
    ``aggregator=`` with ``root_samples = 0`` keeps its own reference (or its median fallback).

    A run whose model or honest training loss becomes non-finite (NaN/Inf: e.g. the mean
    under a scaled attack) stops with a warning; its last history row has ``diverged = 1``.

    Missing updates (``None`` from a fault) are left out. When fewer rows than the rule
    needs (``rule.min_inputs()``) arrive, the step is skipped (the model does not move) and
    counted in the history's ``skipped`` column. When more than the rule's ``f`` rows are
    non-finite (e.g. ``f`` NaN attackers plus a NaN fault), ``run.on_nonfinite`` decides:
    ``"skip"`` (default) skips the step and counts it in ``skipped`` and ``skipped_nonfinite``;
    ``"stop"`` ends the run (its last history row has ``stopped = 1``).

    Parameters
    ----------
    config : TrainConfig, dict or path
        See ``docs/training.md``.
    dataset : robustagg.data.Dataset, optional
        Use this dataset instead of loading ``data.name``.
    aggregator, attack : optional
        Objects replacing the configured rule / attack (e.g. a custom callable rule with an
        ``aggregate(X)`` method and ``min_inputs()``).

    Examples
    --------
    >>> from robustagg.train import ParameterServer
    >>> ps = ParameterServer({"workers": {"n": 10, "f": 2}, "attack": {"name": "reverse"},
    ...                       "aggregator": {"name": "trimmed-mean"}, "run": {"steps": 20, "out_dir": ""}})
    >>> history = ps.run()
    >>> sorted(history.last())[:4]
    ['accuracy', 'loss', 'lr', 'rows']
    """

    kind = "parameter-server"

    def __init__(self, config: Any, *, dataset: Any = None, aggregator: Any = None, attack: Any = None) -> None:
        super().__init__(config, dataset=dataset)
        cfg = self.config
        self.mode = cfg.mode
        built = cfg.components()  # what reading the configuration built and checked
        self.rule = built.rule if aggregator is None else aggregator
        self.attack = built.attack if attack is None else attack
        self.poisoner = built.poisoner
        self.faults = built.faults
        self.participation = built.participation
        self.loaders = build_loaders(self.dataset, self.parts, cfg.workers.batch_size, self.seed, honest=self.h,
                                     poisoner=self.poisoner, replacement=cfg.data.replacement, device=self.device)
        self.attackers = list(range(self.h, self.n)) if self.attack is not None else []
        d = self.flat.dim
        self.x = self.flat.vector()
        opt = cfg.optimizer
        at_worker = opt.momentum_at == "worker" and opt.momentum > 0
        self.optimizer = ServerSGD(0.0 if at_worker else opt.momentum, opt.weight_decay)
        self.beta = opt.momentum if at_worker else 0.0
        self.worker_momentum = torch.zeros(self.n, d, device=self.device) if at_worker else None
        self.max_delay = 0 if self.participation is None else self.participation.max_delay
        self.past: collections.deque = collections.deque(maxlen=max(self.max_delay, 1))
        self.store = torch.zeros(self.n, d, device=self.device) if self.mode == "afa-cs" else None
        self.U = torch.empty(self.n, d, device=self.device)  # this step's updates, one row per worker
        self._warned_skip = self._warned_nonfinite = False
        self.fltrust = fltrust_stage(self.rule)
        self.root_loader = self._root_loader() if self.fltrust is not None else None
        self._g0 = None if self.root_loader is None else torch.empty_like(self.x)  # the reference buffer

    def _root_loader(self) -> Any:
        """The batches of the server's root data (``None`` without ``aggregator.root_samples``)."""
        root = root_indices(self.config, self.dataset)
        if root is None:
            return None
        from robustagg.data import WorkerLoader

        index = torch.as_tensor(root, dtype=torch.long)
        X, y = self.dataset.X_train[index].to(self.device), self.dataset.y_train[index].to(self.device)
        return WorkerLoader(X, y, range(len(root)), self.config.workers.batch_size,
                            derive_seed(self.seed, "root-loader") % (2 ** 31), replacement=self.config.data.replacement)

    def server_reference(self, t: int) -> Optional[torch.Tensor]:
        """FLTrust's reference at step ``t``: the server's update on its root data from
        :math:`x_t`, computed like an honest worker's; handed to the rule (``set_reference``)
        and returned. ``None`` (nothing done) without FLTrust or root data."""
        if self.root_loader is None:
            return None
        opt = self.config.optimizer
        g0, _ = local_update(self.flat, self.x, self.root_loader.next, self.loss_fn,
                             local_steps=self.config.workers.local_steps, local_lr=opt.local_lr,
                             reduce="sum" if self.mode == "fedavg" else "mean",
                             seed=derive_seed(self.seed, "root", t), out=self._g0)
        self.fltrust.set_reference(g0)
        return g0

    # ------------------------------------------------------------------ the three phases
    def plan(self, t: int) -> List[Arrival]:
        """The arrivals of step ``t``: ``(worker, local_steps, staleness)`` sorted by worker.

        Without a participation model every worker sends a fresh update after
        ``workers.local_steps`` local steps; attacking workers always send.
        """
        K = self.config.workers.local_steps
        if self.participation is None:
            return [Arrival(i, K, 0) for i in range(self.n)]
        arrivals = {a.worker: a for a in self.participation.round(t)}
        for b in self.attackers:
            arrivals.setdefault(b, Arrival(b, K, 0))
        return [arrivals[w] for w in sorted(arrivals)]

    def model_at(self, staleness: int) -> torch.Tensor:
        """:math:`x_{t - \\tau}` (a bounded history of ``max_delay`` past models is kept)."""
        if staleness == 0:
            return self.x
        return self.past[min(staleness, len(self.past)) - 1]

    def compute(self, t: int, arrivals: List[Arrival],
                workers: Optional[List[int]] = None) -> Tuple[Dict[int, torch.Tensor], Optional[float]]:
        """The updates of the arriving workers that compute one (honest and poisoning ones).

        Returns ``({worker: (d,) update}, mean loss of the honest workers)``. Rows are written
        into the step buffer ``self.U``. ``workers`` restricts the computation to a subset
        (a distributed worker computes its own). Worker ``w``'s dropout seed is
        ``derive_seed(run.seed, "worker", t, w)``.
        """
        opt = self.config.optimizer
        reduce = "sum" if self.mode == "fedavg" else "mean"
        updates: Dict[int, torch.Tensor] = {}
        losses = []
        chosen = None if workers is None else set(workers)
        for a in arrivals:
            w = a.worker
            if self.loaders[w] is None or (chosen is not None and w not in chosen):
                continue
            G, loss = local_update(self.flat, self.model_at(a.staleness), self.loaders[w].next, self.loss_fn,
                                   local_steps=a.local_steps, local_lr=opt.local_lr, reduce=reduce,
                                   seed=derive_seed(self.seed, "worker", t, w), out=self.U[w])
            if self.worker_momentum is not None:
                m = self.worker_momentum[w]
                m.mul_(self.beta).add_(G, alpha=1.0 - self.beta)
                G.copy_(m)
            updates[w] = G
            if w < self.h:
                losses.append(loss)
        loss = float(torch.stack(losses).mean()) if losses else math.nan
        return updates, loss

    def server_step(self, t: int, updates: Dict[int, torch.Tensor]) -> StepResult:
        """Step ``t`` at the server, given the computed rows (:meth:`compute`), in five phases::

            rows = buffer_rows(updates)     # every computed row in its buffer row U[w]
            attack(t, rows)                 # the Byzantine rows U[b], from the honest ones
            X = deliver(t, rows)            # faults: what arrives (missing rows left out)
            u = aggregate(X)                # the rule, through its public aggregate()
            optimizer step with u           # unless the step is skipped

        The buffer ``U`` (``n x d``) has one row per worker: rows ``0..h-1`` belong to the
        honest (or data-poisoning) workers, rows ``h..n-1`` to the Byzantine ones; AFA-CS
        aggregates its ``store`` of every worker's latest arrived row instead.
        """
        tic = self._clock()
        self.server_reference(t)  # FLTrust: before the attack, so an aggregator-aware attack sees it
        t_reference = self._clock() - tic

        tic = self._clock()
        rows = self._buffer_rows(updates)
        self._attack(t, rows)
        t_attack = self._clock() - tic

        tic = self._clock()
        X = self._deliver(t, rows)
        u, nonfinite = self._aggregate(X)
        t_aggregate = self._clock() - tic + t_reference
        result = StepResult(lr=self.lr_at(t), rows=int(X.shape[0]), skipped=u is None, skipped_nonfinite=nonfinite,
                            times={"t_attack": t_attack, "t_aggregate": t_aggregate, "t_optimizer": 0.0})
        if nonfinite and self.config.run.on_nonfinite == "stop":
            result.stopped = True
            return result

        tic = self._clock()
        if u is None:
            self._warn_skipped(t, X.shape[0], nonfinite)
        if self.max_delay > 0:
            self.past.appendleft(self.x.clone())
        if u is not None:
            step = result.lr * self.config.optimizer.local_lr if self.mode in AFL_MODES else result.lr
            self.optimizer.step(self.x, u, step)
            result.diverged = not ops.all_finite(self.x)
        result.times["t_optimizer"] = self._clock() - tic
        return result

    def _buffer_rows(self, updates: Dict[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
        """``{worker: U[w]}``: rows computed elsewhere (another process) are copied into the buffer."""
        rows = {}
        for w, u in updates.items():
            if u.data_ptr() != self.U[w].data_ptr():
                self.U[w].copy_(u)
            rows[w] = self.U[w]
        return rows

    def _attack(self, t: int, rows: Dict[int, torch.Tensor]) -> None:
        """The attack's rows into ``U[b]`` for every Byzantine worker ``b`` (added to ``rows``);
        it sees every honest row of step ``t`` and the rule, and draws from ``(seed, "attack", t)``."""
        honest = sorted(w for w in rows if w < self.h)
        if self.attack is None or not honest or not self.attackers:
            return
        contiguous = honest == list(range(len(honest)))
        H = self.U[: len(honest)] if contiguous else torch.stack([rows[w] for w in honest])
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, "attack", t))
        B = self.attack(H, len(self.attackers), aggregator=self.rule, generator=gen)
        for j, b in enumerate(self.attackers):
            self.U[b].copy_(B[j])
            rows[b] = self.U[b]

    def _deliver(self, t: int, rows: Dict[int, torch.Tensor]) -> torch.Tensor:
        """What arrives at the server: the faults applied to each worker's row (``None``: nothing
        arrives), as the matrix the rule aggregates (``U``, its arrived rows, or AFA-CS's store)."""
        sent = rows
        if self.faults is not None:
            sent = {}
            for w in range(self.n):
                out = self.faults(t, w, rows.get(w))
                if out is not None:
                    sent[w] = out
        ids = sorted(sent)
        if self.store is not None:
            for w in ids:
                self.store[w].copy_(sent[w])
            return self.store
        for w in ids:  # rows a fault replaced (stale, bit-flipped, ...) go back into the buffer
            if sent[w] is not rows.get(w):
                self.U[w].copy_(sent[w])
        if len(ids) == self.n:
            return self.U
        # some workers sent nothing: only theirs are left out
        return self.U[torch.tensor(ids, dtype=torch.long, device=self.device)] if ids else self.U[:0]

    def _aggregate(self, X: torch.Tensor) -> Tuple[Optional[torch.Tensor], bool]:
        """``(rule.aggregate(X), False)``; ``(None, False)`` when fewer rows arrived than the rule
        needs; ``(None, True)`` when more than the rule's ``f`` rows are non-finite."""
        if X.shape[0] == 0 or X.shape[0] < self.rule.min_inputs():
            return None, False
        try:
            return self.rule.aggregate(X), False
        except ValueError:
            if not self._too_many_nonfinite(X):
                raise
            return None, True

    def _too_many_nonfinite(self, X: torch.Tensor) -> bool:
        """Whether more rows of ``X`` than the rule's ``f`` hold NaN/Inf (what ``run.on_nonfinite`` handles)."""
        return int(ops.nonfinite_rows(X).numel()) > int(getattr(self.rule, "f", 0) or 0)

    def _warn_skipped(self, t: int, rows: int, nonfinite: bool) -> None:
        if nonfinite and not self._warned_nonfinite:
            warnings.warn(f"step {t}: more than f={getattr(self.rule, 'f', 0)} of the {rows} updates are "
                          "non-finite; the step is skipped (counted in 'skipped_nonfinite'; "
                          "run.on_nonfinite = 'stop' stops the run instead)", RuntimeWarning, stacklevel=3)
            self._warned_nonfinite = True
        elif not nonfinite and not self._warned_skip:
            warnings.warn(f"step {t}: {rows} update(s) arrived but the rule needs {self.rule.min_inputs()}; "
                          "the step is skipped (counted in 'skipped')", RuntimeWarning, stacklevel=3)
            self._warned_skip = True

    def finish_step(self, t: int, updates: Dict[int, torch.Tensor], loss: float, t_compute: float) -> StepResult:
        """The server's part of step ``t`` once the updates and the honest loss are known
        (in-process or gathered from other processes); advances ``self.t``."""
        if math.isinf(loss) or (math.isnan(loss) and any(w < self.h for w in updates)):
            result = StepResult(lr=self.lr_at(t), diverged=True)  # the honest workers' own loss is not finite
        else:
            result = self.server_step(t, updates)
        result.loss = loss
        result.times["t_compute"] = t_compute
        self.t += 1
        return result

    def step(self) -> StepResult:
        """One step: :meth:`plan`, :meth:`compute`, :meth:`server_step`."""
        t = self.t
        tic = self._clock()
        updates, loss = self.compute(t, self.plan(t))
        return self.finish_step(t, updates, loss, self._clock() - tic)

    # ------------------------------------------------------------------ evaluation & state
    def _evaluate(self) -> Dict[str, float]:
        loss, acc = self.flat.evaluate(self.x, self.X_test, self.y_test, self.loss_fn,
                                       self.config.run.eval_batch_size, self.classification)
        return {"test_loss": loss, "accuracy": acc}

    @property
    def model(self) -> torch.nn.Module:
        """The module holding the current server model :math:`x_t`."""
        self.flat.load(self.x)
        return self.flat.module

    def _state(self) -> Dict[str, Any]:
        return {
            "x": self.x.clone(),
            "past": [p.clone() for p in self.past],
            "optimizer": self.optimizer.state_dict(),
            "worker_momentum": self.worker_momentum,
            "store": self.store,
            "rule": ckpt.capture(self.rule),
            "faults": ckpt.capture(self.faults),
            "attack": ckpt.capture(self.attack),
            "root_loader": None if self.root_loader is None else self.root_loader.state_dict(),
        }

    def _load_state(self, state: Dict[str, Any]) -> None:
        self.x = state["x"].to(self.device)
        self.past.clear()
        self.past.extend(p.to(self.device) for p in state["past"])
        opt = state["optimizer"]
        self.optimizer.load_state_dict({"buffer": self._to_device(opt["buffer"])})
        if self.worker_momentum is not None:
            self.worker_momentum = state["worker_momentum"].to(self.device)
        if self.store is not None:
            self.store = state["store"].to(self.device)
        ckpt.restore(self.rule, state["rule"])
        ckpt.restore(self.faults, state["faults"])
        ckpt.restore(self.attack, state["attack"])
        if self.root_loader is not None and state.get("root_loader") is not None:
            self.root_loader.load_state_dict(state["root_loader"])
