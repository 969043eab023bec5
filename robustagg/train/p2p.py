r"""Peer-to-peer collaborative learning: MoNNA and its baselines.

Every honest node ``i`` keeps a model :math:`\theta_i` and a momentum :math:`m_i`
(all start from the same :math:`\theta_0`, :math:`m_i = 0`). Step ``t``:

1. :math:`g_i = \nabla \big(\ell(\theta_i; \xi_i) + l_2 \|\theta_i\|^2\big)` on a local batch;
2. :math:`m_i \leftarrow \beta m_i + (1 - \beta) g_i` (``optimizer.momentum``; 0 gives NNA / D-SGD);
3. half step :math:`\theta_i^{1/2} = \theta_i - \gamma_t m_i`, broadcast to every node
   (:math:`\gamma_t = \gamma_0 / (1 + t/50)` by default);
4. the ``f`` Byzantine nodes send vectors built from the honest half steps (the attack sees
   all of them; ALIE and FOE send one vector to everybody, as in the paper);
5. mixing, every honest node on what it received (its own half step included):

   * ``nna`` (MoNNA): :math:`\theta_i \leftarrow` the average of the ``n - f`` received vectors
     closest to :math:`\theta_i^{1/2}` (L2), its own included (``f`` is the declared
     ``aggregator.f``, by default ``workers.f``);
   * ``dsgd``: the average of everything received;
   * ``cc`` (self-centred clipping):
     :math:`\theta_i \leftarrow \theta_i^{1/2} + \frac{1}{m} \sum_j \mathrm{clip}_\tau(y_j - \theta_i^{1/2})`;
   * any robustagg rule name (``trimmed-mean``, ``geometric-median``, ...): the rule with
     ``f`` applied to the received vectors.

With ``p2p.sample = true`` (the reference simulation) node ``i`` receives its own vector,
``n - 2f - 1`` other honest vectors drawn at random and the ``f`` Byzantine ones, ``n - f`` in
all, and NNA averages the ``n - 2f`` closest.

All pairwise distances come from one Gram matrix of the ``(n, d)`` stack of received vectors
(:func:`robustagg.aggregators.ops.sq_distances`), and the mixing of every node is one
``(k, n) @ (n, d)`` product.

References
----------
Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional

import numpy as np
import torch

from robustagg._registry import normalize_name
from robustagg.aggregators import ops
from robustagg.train import checkpoint as ckpt
from robustagg.train.base import StepResult, Trainer
from robustagg.train.components import derive_seed
from robustagg.train.worker import build_loaders, local_update


class PeerToPeer(Trainer):
    """MoNNA (Farhadkhani et al., ICML 2023) and the D-SGD, clipping and rule-mixing baselines.

    Nodes ``0..n-f-1`` are honest; nodes ``n-f..n-1`` are Byzantine and either send the
    attack's vectors or, with ``[poisoning]``, run the protocol honestly on poisoned data.
    Aggregator-aware attacks (``*-opt``) maximise the damage to honest node 0's mixing
    (without sampling). The history reports honest node 0's test accuracy (``accuracy``), the
    mean and minimum over honest nodes with ``p2p.eval_nodes = "all"``, and the spread of the
    honest models (``spread_max``, ``spread_mean``: max and mean pairwise L2 distance).

    Parameters
    ----------
    config : TrainConfig, dict or path
        ``trainer = "peer-to-peer"``; see ``docs/training.md``.
    dataset : robustagg.data.Dataset, optional
    attack : optional
        An attack object replacing the configured one.
    """

    kind = "peer-to-peer"

    def __init__(self, config: Any, *, dataset: Any = None, attack: Any = None) -> None:
        super().__init__(config, dataset=dataset)
        cfg = self.config
        built = cfg.components()  # what reading the configuration built and checked
        self.attack = built.attack if attack is None else attack
        self.poisoner = built.poisoner
        self.loaders = build_loaders(self.dataset, self.parts, cfg.workers.batch_size, self.seed, honest=self.h,
                                     poisoner=self.poisoner, replacement=cfg.data.replacement, device=self.device)
        self.nodes = [i for i in range(self.n) if self.loaders[i] is not None]  # nodes running the protocol
        self.mixing = normalize_name(cfg.p2p.mixing)
        if self.mixing == "mean":
            self.mixing = "dsgd"
        self.mixing_rule = built.mixing_rule
        self.tau = float(cfg.p2p.mixing_params.get("tau", 1.0)) if self.mixing == "cc" else None
        self.beta = cfg.optimizer.momentum
        self.l2 = cfg.p2p.l2
        k, d = len(self.nodes), self.flat.dim
        self.theta = self.flat.vector().unsqueeze(0).repeat(k, 1)
        self.momentum = torch.zeros(k, d, device=self.device)
        self._Y: Optional[torch.Tensor] = None  # the mixing input, reused every step
        self.G = torch.empty(k, d, device=self.device)

    # ------------------------------------------------------------------ one step
    def step(self) -> StepResult:
        t, gamma = self.t, self.lr_at(self.t)
        tic = self._clock()
        losses = []
        for r, w in enumerate(self.nodes):
            _, loss = local_update(self.flat, self.theta[r], self.loaders[w].next, self.loss_fn, l2=self.l2,
                                   seed=derive_seed(self.seed, "worker", t, w), out=self.G[r])
            if w < self.h:
                losses.append(loss)
        self.momentum.mul_(self.beta).add_(self.G, alpha=1.0 - self.beta)
        k = len(self.nodes)
        if self._Y is None:  # one (k + f, d) buffer: the half steps, then the Byzantine rows
            self._Y = torch.empty(k + self.f, self.theta.shape[1], dtype=self.theta.dtype, device=self.device)
        half = torch.add(self.theta, self.momentum, alpha=-gamma, out=self._Y[:k])
        t_compute = self._clock() - tic

        tic = self._clock()
        Y = half
        if self.attack is not None and self.f > 0:
            gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, "attack", t))
            B = self.attack(half[: self.h], self.f, aggregator=self._node0_target(), generator=gen)
            Y = self._Y[: k + B.shape[0]]
            Y[k:].copy_(B)
        t_attack = self._clock() - tic

        tic = self._clock()
        self.theta = self.mix(Y, k, self._received(t, Y.shape[0]))
        t_mix = self._clock() - tic
        self.t += 1
        loss = float(torch.stack(losses).mean()) if losses else math.nan
        return StepResult(lr=gamma, loss=loss, times={"t_compute": t_compute, "t_attack": t_attack, "t_mix": t_mix},
                          diverged=not ops.all_finite(self.theta[: self.h]))

    def _received(self, t: int, rows: int) -> Optional[torch.Tensor]:
        """``p2p.sample``: a ``(k, rows)`` boolean mask of what each node receives (``None``: all).

        Node ``i`` receives itself, the Byzantine rows ``h..rows-1`` and ``h - f - 1`` other
        honest rows drawn from ``numpy.random.default_rng(derive_seed(seed, "sample", t))``.
        """
        if not self.config.p2p.sample:
            return None
        k, h = len(self.nodes), self.h
        rng = np.random.default_rng(derive_seed(self.seed, "sample", t))
        mask = np.zeros((k, rows), dtype=bool)
        mask[:, h:] = True
        take = max(h - self.f - 1, 0)
        for i in range(k):
            mask[i, i] = True
            others = np.array([j for j in range(h) if j != i])
            if take and len(others):
                mask[i, rng.choice(others, size=min(take, len(others)), replace=False)] = True
        return torch.from_numpy(mask).to(self.device)

    def mix(self, Y: torch.Tensor, k: int, received: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The new models of the first ``k`` rows of ``Y`` (each row ``i < k`` is node ``i``'s own
        half step); ``received`` masks what each node gets (default: everything)."""
        n_rows = Y.shape[0]
        if self.mixing_rule is not None:
            if received is None:
                rule = self.mixing_rule
                return rule.aggregate(Y).unsqueeze(0).repeat(k, 1)
            return torch.stack([self.mixing_rule.aggregate(Y[received[i]]) for i in range(k)])
        if self.mixing == "dsgd":
            if received is None:  # every node averages the same rows: one (n,) @ (n, d) product
                w = torch.full((n_rows,), 1.0 / n_rows, dtype=torch.float64, device=Y.device)
                return ops.combine_rows(w, Y).unsqueeze(0).repeat(k, 1)
            W = received.double()
            return ops.combine_rows(W / W.sum(dim=1, keepdim=True), Y)
        D, _ = ops.sq_distances(Y)
        if received is not None:
            D = D.clone()
            D[:k] = D[:k].masked_fill(~received, math.inf)
        if self.mixing == "nna":
            f = self.config.rule_f  # the declared f (aggregator.f, default workers.f)
            m = (self.n - self.f - f) if received is not None else min(self.n - f, n_rows)
            return ops.combine_rows(ops.nearest_weights(D, m)[:k], Y)
        D = D[:k]
        # cc: theta_i = y_i + (1/m_i) sum_j clip_tau(y_j - y_i)
        dist = D.to(torch.float64).sqrt()
        scale = torch.clamp(self.tau / dist.clamp_min(torch.finfo(torch.float64).tiny), max=1.0)
        if received is not None:
            scale = scale * received
        count = float(n_rows) if received is None else received.sum(dim=1, keepdim=True).double()
        W = scale / count
        W[torch.arange(k), torch.arange(k)] += 1.0 - W.sum(dim=1)
        return ops.combine_rows(W, Y)

    def _node0_target(self):
        """What aggregator-aware attacks optimise against: honest node 0's mixing of
        ``X = [honest half steps; Byzantine rows]`` (a plain function, so the attack's deep
        copies do not copy the trainer)."""
        mix, rule = self.mix, self.mixing_rule

        def target(X: torch.Tensor) -> torch.Tensor:
            if rule is not None:
                return copy.deepcopy(rule).aggregate(X)
            return mix(X, 1)[0]

        return target

    # ------------------------------------------------------------------ evaluation & state
    def _evaluate(self) -> Dict[str, float]:
        run = self.config.run
        loss, acc = self.flat.evaluate(self.theta[0], self.X_test, self.y_test, self.loss_fn,
                                       run.eval_batch_size, self.classification)
        row: Dict[str, float] = {"test_loss": loss, "accuracy": acc}
        if self.config.p2p.eval_nodes == "all":
            accs = [acc] + [self.flat.evaluate(self.theta[i], self.X_test, self.y_test, self.loss_fn,
                                               run.eval_batch_size, self.classification)[1]
                            for i in range(1, self.h)]
            row["accuracy_mean"] = float(np.mean(accs))
            row["accuracy_min"] = float(np.min(accs))
        if self.h > 1:
            D, _ = ops.sq_distances(self.theta[: self.h])
            dist = D.to(torch.float64).clamp_min(0).sqrt()
            iu = torch.triu_indices(self.h, self.h, offset=1)
            pairs = dist[iu[0], iu[1]]
            row["spread_max"] = float(pairs.max())
            row["spread_mean"] = float(pairs.mean())
        else:
            row["spread_max"] = row["spread_mean"] = 0.0
        return row

    def node_model(self, i: int = 0) -> torch.nn.Module:
        """The module holding node ``i``'s current model (honest nodes are ``0..n-f-1``)."""
        self.flat.load(self.theta[i])
        return self.flat.module

    def _state(self) -> Dict[str, Any]:
        return {"theta": self.theta.clone(), "momentum": self.momentum.clone(),
                "rule": ckpt.capture(self.mixing_rule), "attack": ckpt.capture(self.attack)}

    def _load_state(self, state: Dict[str, Any]) -> None:
        self.theta = state["theta"].to(self.device)
        self.momentum = state["momentum"].to(self.device)
        ckpt.restore(self.mixing_rule, state["rule"])
        ckpt.restore(self.attack, state["attack"])
