r"""Learning-rate schedules (pure functions of the step) and the server's SGD step on a flat vector.

Schedules (``optimizer.schedule``; :math:`\eta` is ``optimizer.lr``, ``t`` the step from 0,
``T`` the run's total steps):

=============  =====================================================  =========================
name           :math:`\eta_t`                                         parameters (defaults)
=============  =====================================================  =========================
``constant``   :math:`\eta`
``inverse``    :math:`\eta / (1 + t / \mathrm{decay})`                ``decay`` (50), as MoNNA
``step``       :math:`\eta \, \gamma^{\lfloor t / \mathrm{size} \rfloor}`  ``step_size`` (required), ``gamma`` (0.1)
``multistep``  :math:`\eta \, \gamma^{|\{m \in \mathrm{milestones} : m \le t\}|}`  ``milestones`` (required), ``gamma`` (0.1)
``cosine``     :math:`\eta_{\min} + (\eta - \eta_{\min}) (1 + \cos(\pi t / T_{\max})) / 2`  ``t_max`` (T), ``min_lr`` (0)
=============  =====================================================  =========================

``auto`` is ``constant`` for the parameter server and ``inverse`` (decay 50, the MoNNA
paper's :math:`\gamma_t = \gamma_0 / (1 + t/50)`) for the peer-to-peer trainer. A schedule
depends only on ``t``, so nothing about it needs checkpointing.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from robustagg._validation import check_float, check_int

SCHEDULES: Dict[str, Dict[str, Any]] = {
    "constant": {},
    "inverse": {"decay": 50.0},
    "step": {"step_size": None, "gamma": 0.1},
    "multistep": {"milestones": None, "gamma": 0.1},
    "cosine": {"t_max": None, "min_lr": 0.0},
}


def resolve_schedule(name: str, params: Dict[str, Any], *, p2p: bool) -> Dict[str, Any]:
    """Validate a schedule and return ``{"name": ..., **params with defaults}``."""
    if name == "auto":
        name = "inverse" if p2p else "constant"
    if name not in SCHEDULES:
        import difflib

        close = difflib.get_close_matches(name, list(SCHEDULES) + ["auto"], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown optimizer.schedule {name!r}.{hint} Available: auto, {', '.join(SCHEDULES)}")
    defaults = SCHEDULES[name]
    for key in params:
        if key not in defaults:
            raise TypeError(f"optimizer.schedule_params: schedule {name!r} has no parameter {key!r}; "
                            f"it takes: {', '.join(defaults) or 'nothing'}")
    out = {"name": name, **defaults, **params}
    if name == "inverse":
        out["decay"] = check_float(out["decay"], "optimizer.schedule_params.decay", minimum=0.0, strict_min=True)
    elif name == "step":
        if out["step_size"] is None:
            raise ValueError("optimizer.schedule 'step' needs schedule_params.step_size")
        out["step_size"] = check_int(out["step_size"], "optimizer.schedule_params.step_size", minimum=1)
        out["gamma"] = check_float(out["gamma"], "optimizer.schedule_params.gamma", minimum=0.0)
    elif name == "multistep":
        if not isinstance(out["milestones"], list):
            raise TypeError("optimizer.schedule 'multistep' needs schedule_params.milestones = [steps, ...]")
        out["milestones"] = sorted(check_int(m, "milestone", minimum=0) for m in out["milestones"])
        out["gamma"] = check_float(out["gamma"], "optimizer.schedule_params.gamma", minimum=0.0)
    elif name == "cosine":
        if out["t_max"] is not None:
            out["t_max"] = check_int(out["t_max"], "optimizer.schedule_params.t_max", minimum=1)
        out["min_lr"] = check_float(out["min_lr"], "optimizer.schedule_params.min_lr", minimum=0.0)
    return out


def learning_rate(lr: float, schedule: Dict[str, Any], t: int, total: int) -> float:
    """:math:`\\eta_t` for a schedule returned by :func:`resolve_schedule`."""
    name = schedule["name"]
    if name == "constant":
        return lr
    if name == "inverse":
        return lr / (1.0 + t / schedule["decay"])
    if name == "step":
        return lr * schedule["gamma"] ** (t // schedule["step_size"])
    if name == "multistep":
        return lr * schedule["gamma"] ** sum(1 for m in schedule["milestones"] if m <= t)
    t_max = schedule["t_max"] or max(total, 1)
    low = schedule["min_lr"]
    return low + (lr - low) * (1 + math.cos(math.pi * min(t, t_max) / t_max)) / 2


class ServerSGD:
    r"""SGD on a flat parameter vector, with weight decay and heavy-ball momentum.

    .. math:: d_t = u_t + \lambda x_t, \qquad b_t = \mu b_{t-1} + d_t \ (b_0 = d_0),
              \qquad x_{t+1} = x_t - \eta_t b_t

    (PyTorch's ``torch.optim.SGD`` convention, no dampening), where :math:`u_t` is the
    aggregate. With ``momentum = 0`` no buffer is kept. The buffer is the only state
    (:meth:`state_dict`).
    """

    def __init__(self, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.momentum = check_float(momentum, "momentum", minimum=0.0, maximum=1.0, strict_max=True)
        self.weight_decay = check_float(weight_decay, "weight_decay", minimum=0.0)
        self.buffer: Optional[torch.Tensor] = None

    def step(self, x: torch.Tensor, u: torch.Tensor, lr: float) -> None:
        """Update ``x`` in place."""
        d = u.to(dtype=x.dtype)
        if self.weight_decay:
            d = d + self.weight_decay * x
        if self.momentum:
            if self.buffer is None:
                self.buffer = d.clone()
            else:
                self.buffer.mul_(self.momentum).add_(d)
            d = self.buffer
        x.add_(d, alpha=-lr)

    def state_dict(self) -> Dict[str, Any]:
        return {"buffer": self.buffer}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.buffer = None if state["buffer"] is None else state["buffer"].clone()
