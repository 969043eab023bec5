r"""The parameter server across processes and machines with :mod:`torch.distributed`.

Launch (one process per core, or per GPU)::

    torchrun --nproc-per-node 4 -m robustagg.train.distributed CONFIG.toml [--set k=v ...] [--resume]

Rank 0 is the server: it plans each step, broadcasts the model, computes the updates of the
workers assigned to it, gathers the other ranks' rows, builds the Byzantine updates, applies
the faults, aggregates, steps the optimizer, evaluates, checkpoints and writes the results.
Every other rank computes the honest (and data-poisoning) updates of its own workers with
:func:`robustagg.train.local_update`. The ``n`` workers that compute are split into contiguous
blocks, one per rank (:func:`assign_workers`); attacking workers compute nothing: their
rows are built on rank 0 from every honest row, as in-process (omniscient attack).

One step ``t``, with ``d`` the model size and ``B`` the largest block::

    rank 0                                    rank r > 0
    broadcast (STEP, t)  --------------------> receive the command
    broadcast x_t        --------------------> x_t (past models are mirrored locally)
    plan(t); compute own block                 plan(t); compute own block
    gather (B, d + 2) rows  <----------------- [update | loss | arrived] per own worker
    attack, faults, rule, optimizer            wait for the next command

Rows of workers that did not arrive (participation) carry ``arrived = 0`` and are left out,
exactly as the in-process trainer leaves them out. Every random draw derives from
``(run.seed, purpose, step, worker)`` and each worker's batches come from its own loader, so
the distributed run computes the same numbers as :class:`~robustagg.train.ParameterServer`:
on CPU with the same thread settings the final model is bitwise identical (tested).

Checkpoints go through rank 0: before writing, it collects every rank's loader positions and
worker momenta (``STATE``); after loading one (``--resume``), it sends them back (``SYNC``).

A rank that died or hangs makes the others raise :class:`~robustagg.collective.CollectiveError`
within ``timeout``: the launcher prints one line naming it and the checkpoint to ``--resume``
from. See ``docs/distributed.md`` for multi-machine launches, NCCL and failure behaviour.

``--topology allreduce`` trains the same configuration with no server at all: every rank
keeps the model and the rule runs as :func:`robustagg.collective.robust_all_reduce`
(:mod:`robustagg.train.allreduce`).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from robustagg.collective import CollectiveError
from robustagg.collective.allreduce import guard_collective, wait_collective
from robustagg.train.base import StepResult
from robustagg.train.results import History
from robustagg.train.server import ParameterServer
from robustagg.train.validation import check_device
from robustagg.train.worker import assign_workers  # noqa: F401  (its home before the allreduce topology)

STEP, SYNC, STATE, STOP = 0, 1, 2, 3


class DistributedParameterServer(ParameterServer):
    """:class:`~robustagg.train.ParameterServer` whose workers live on ``torch.distributed`` ranks.

    Build it on every rank after :func:`torch.distributed.init_process_group`, then call
    :meth:`run` on every rank: rank 0 trains and returns the history (and writes the results),
    the other ranks serve until rank 0 is done and return an empty history.

    Parameters
    ----------
    config : TrainConfig, dict or path
        A parameter-server configuration (``docs/training.md``); every rank must read the same one.
    server_computes : bool
        Whether rank 0 also computes a block of workers (default; turn it off when the server
        should only aggregate, e.g. one GPU per worker rank).
    timeout : float, optional
        Seconds a collective waits for the other ranks before raising
        :class:`~robustagg.collective.CollectiveError` (default, and for object collectives: the group's).
    **kwargs
        ``dataset``, ``aggregator``, ``attack`` as for :class:`~robustagg.train.ParameterServer`.

    Notes
    -----
    Models with BatchNorm running statistics are not reproduced exactly: in one process the
    workers share one module's buffers, here each rank has its own (the trained parameters
    follow the same rule; only the evaluation statistics differ).
    """

    def __init__(self, config: Any, *, server_computes: bool = True, timeout: Optional[float] = None,
                 **kwargs: Any) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first "
                               "(or launch with torchrun -m robustagg.train.distributed)")
        super().__init__(config, **kwargs)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        computing = [w for w in range(self.n) if self.loaders[w] is not None]
        self.blocks = assign_workers(computing, self.world, server_computes=server_computes)
        self.mine = self.blocks[self.rank]
        self.width = max(1, max(len(b) for b in self.blocks))
        nccl = dist.get_backend() == "nccl"
        self.comm_device = self.device if nccl else torch.device("cpu")
        d = self.flat.dim
        dtype = self.x.dtype
        self.sendbuf = torch.zeros(self.width, d + 2, dtype=dtype, device=self.comm_device)
        self.recvbufs = [torch.empty_like(self.sendbuf) for _ in range(self.world)] if self.rank == 0 else None
        self.xbuf = torch.empty(d, dtype=dtype, device=self.comm_device)
        self._command_buf = torch.zeros(2, dtype=torch.int64, device=self.comm_device)
        self._synced = False  # the other ranks have not received this rank-0 state yet
        self._have_x = False
        self.timeout = None if timeout is None else datetime.timedelta(seconds=timeout)
        self._announced: Optional[int] = None  # ranks > 0: the step of the checkpoint rank 0 is writing

    # ------------------------------------------------------------------ messages
    def _wait(self, work: Any, what: str) -> None:
        wait_collective(work, what, self.timeout, who="parameter server")

    def _command(self, cmd: int, t: int = 0) -> Tuple[int, int]:
        if self.rank == 0:
            self._command_buf[0], self._command_buf[1] = cmd, t
        self._wait(dist.broadcast(self._command_buf, 0, async_op=True), "broadcast of rank 0's command")
        return int(self._command_buf[0]), int(self._command_buf[1])

    def _broadcast_model(self) -> None:
        if self.rank == 0:
            self.xbuf.copy_(self.x)
        self._wait(dist.broadcast(self.xbuf, 0, async_op=True), "broadcast of the model")
        if self.rank != 0:
            if self.max_delay > 0 and self._have_x:  # the server pushed x_{t-1} in its last server_step
                self.past.appendleft(self.x.clone())
            self.x.copy_(self.xbuf)
            self._have_x = True

    def _sync(self) -> None:
        """Rank 0 -> all: loader positions, worker momenta and past models (after a resume)."""
        payload: List[Any] = [None]
        if self.rank == 0:
            payload[0] = {
                "past": [p.cpu() for p in self.past],
                "loaders": {w: self.loaders[w].state_dict() for w in range(self.n) if self.loaders[w] is not None},
                "momentum": None if self.worker_momentum is None else self.worker_momentum.cpu(),
                "checkpoint_step": self.checkpoint_step,
            }
        with guard_collective("broadcast of the resumed loaders and momenta", who="parameter server"):
            dist.broadcast_object_list(payload, src=0, device=self._object_device())
        if self.rank != 0:
            state = payload[0]
            self.checkpoint_step = state["checkpoint_step"]
            self.past.clear()
            self.past.extend(p.to(self.device) for p in state["past"])
            for w in self.mine:
                self.loaders[w].load_state_dict(state["loaders"][w])
            if self.worker_momentum is not None:
                self.worker_momentum.copy_(state["momentum"])
            self._have_x = False  # the next STEP brings the current model; past is already complete
        self._synced = True

    def _collect(self) -> None:
        """All -> rank 0: every rank's loader positions and worker momenta (before a checkpoint)."""
        mine = {"loaders": {w: self.loaders[w].state_dict() for w in self.mine},
                "momentum": {} if self.worker_momentum is None else
                {w: self.worker_momentum[w].cpu() for w in self.mine}}
        everything: List[Any] = [None] * self.world
        with guard_collective(f"collection of the checkpoint of step {self.t}", who="parameter server"):
            dist.all_gather_object(everything, mine, group=None)
        if self.rank == 0:
            for rank, state in enumerate(everything):
                if rank == 0:
                    continue
                for w, sub in state["loaders"].items():
                    self.loaders[w].load_state_dict(sub)
                for w, row in state["momentum"].items():
                    self.worker_momentum[w].copy_(row)

    def _object_device(self) -> Optional[torch.device]:
        return self.comm_device if self.comm_device.type == "cuda" else None

    # ------------------------------------------------------------------ one step
    def _compute_block(self, t: int) -> Tuple[Dict[int, torch.Tensor], Dict[int, torch.Tensor]]:
        """This rank's updates and honest losses for step ``t``."""
        arrivals = self.plan(t)
        updates: Dict[int, torch.Tensor] = {}
        losses: Dict[int, torch.Tensor] = {}
        for a in arrivals:
            if a.worker not in self.mine:
                continue
            got, loss = self.compute(t, [a], workers=[a.worker])
            updates.update(got)
            if a.worker < self.h and a.worker in got:
                losses[a.worker] = torch.tensor(loss, dtype=self.x.dtype)
        return updates, losses

    def _pack(self, updates: Dict[int, torch.Tensor], losses: Dict[int, torch.Tensor]) -> None:
        d = self.flat.dim
        self.sendbuf[:, d + 1].zero_()
        for j, w in enumerate(self.mine):
            if w in updates:
                self.sendbuf[j, :d].copy_(updates[w])
                self.sendbuf[j, d] = losses[w] if w in losses else math.nan
                self.sendbuf[j, d + 1] = 1.0

    def _gather(self) -> None:
        if self.rank == 0:
            work = dist.gather(self.sendbuf, gather_list=self.recvbufs, dst=0, async_op=True)
        else:
            work = dist.gather(self.sendbuf, dst=0, async_op=True)
        self._wait(work, "gather of the workers' updates")

    def step(self) -> StepResult:
        """Rank 0: one distributed step (see the module docstring)."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 drives the steps; the other ranks call run() (which serves)")
        t = self.t
        if not self._synced and self.world > 1:
            self._command(SYNC, t)
            self._sync()
        tic = self._clock()
        if self.world > 1:
            self._command(STEP, t)
            self._broadcast_model()
        updates, losses = self._compute_block(t)
        if self.world > 1:
            self._gather()
            d = self.flat.dim
            for rank in range(1, self.world):
                rows = self.recvbufs[rank]
                for j, w in enumerate(self.blocks[rank]):
                    if rows[j, d + 1] > 0:
                        updates[w] = rows[j, :d].to(self.device)
                        if w < self.h:
                            losses[w] = rows[j, d].cpu()
        values = [losses[w] for w in sorted(losses)]
        loss = float(torch.stack(values).mean()) if values else math.nan
        return self.finish_step(t, updates, loss, self._clock() - tic)

    def serve(self) -> None:
        """Ranks > 0: follow rank 0's commands until it sends ``STOP``. ``self.t`` follows the
        steps and :attr:`checkpoint_step` the checkpoints, for :func:`lost_contact`."""
        while True:
            cmd, t = self._command(STOP)
            if self._announced is not None:  # rank 0 sends nothing more before the file is written
                self.checkpoint_step, self._announced = self._announced, None
            if cmd == STOP:
                return
            if cmd == SYNC:
                self._sync()
            elif cmd == STATE:
                self._collect()
                self._announced = t
            elif cmd == STEP:
                self.t = t
                self._broadcast_model()
                self._pack(*self._compute_block(t))
                self._gather()
                self.t = t + 1
            else:
                raise RuntimeError(f"rank {self.rank}: unknown command {cmd} from rank 0")

    # ------------------------------------------------------------------ run, checkpoints
    def run(self, steps: Optional[int] = None, **kwargs: Any) -> History:
        """Rank 0 trains (as :meth:`ParameterServer.run`) and then releases the other ranks;
        the other ranks serve and return an empty :class:`History`. A rank that dies or hangs
        makes the others raise :class:`~robustagg.collective.CollectiveError` within the timeout."""
        if self.rank != 0:
            self.serve()
            return History()
        history = super().run(steps, **kwargs)
        if self.world > 1:
            self._command(STOP)
        return history

    def state_dict(self) -> Dict[str, Any]:
        if self.rank == 0 and self.world > 1:
            self._command(STATE, self.t)
            self._collect()
        return super().state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._synced = False


# ---------------------------------------------------------------------- launcher


def _parser() -> argparse.ArgumentParser:
    from robustagg.train import cli

    parser = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m robustagg.train.distributed",
        description="Train a configuration across torch.distributed ranks: --topology ps (rank 0 "
                    "aggregates) or allreduce (no server: a robust all-reduce over coordinate shards).")
    cli.add_arguments(parser)
    parser.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto",
                        help="auto: nccl when run.device is cuda, gloo otherwise")
    parser.add_argument("--no-server-compute", action="store_true",
                        help="rank 0 only aggregates; the workers are split over ranks 1..N-1")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a collective waits for a missing rank before failing (default 600)")
    parser.add_argument("--topology", choices=["ps", "allreduce"], default="ps",
                        help="ps: rank 0 aggregates (default); allreduce: no server, every rank keeps the model "
                             "and the rule runs as robust_all_reduce (robustagg.train.allreduce)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``torchrun ... -m robustagg.train.distributed``."""
    from robustagg.train import cli

    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:  # every check before any data is loaded or a process group is formed
        cfg = cli.load(args)
        if cfg.is_p2p:
            raise ValueError("robustagg.train.distributed runs the parameter server; "
                             "peer-to-peer configurations train in one process (robustagg train)")
        cuda = cfg.run.device.startswith("cuda")
        backend = args.backend if args.backend != "auto" else ("nccl" if cuda else "gloo")
        check_device(cfg.run.device)
        check_backend(backend, cfg.run.device)
        if args.topology == "allreduce":
            from robustagg.train.allreduce import check_topology

            if args.no_server_compute:
                raise ValueError("--no-server-compute needs --topology ps (allreduce has no server)")
            built = cfg.components()
            check_topology(built.attack, cfg.mode)
    except (ValueError, TypeError, OSError) as exc:
        if rank == 0:
            print(f"robustagg.train.distributed: error: {exc}", file=sys.stderr)
        return 2
    if args.threads:  # before any work (torchrun sets OMP_NUM_THREADS=1 for several processes)
        torch.set_num_threads(args.threads)
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        if cfg.run.device != "cuda":  # one device per rank: cuda:LOCAL_RANK
            cfg = cfg.with_overrides(["run.device=cuda"])
    if "RANK" not in os.environ:  # plain `python -m`: a one-process group
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout))
    trainer = None
    try:
        if args.topology == "allreduce":
            from robustagg.train.allreduce import AllReduceTrainer

            trainer = AllReduceTrainer(cfg, timeout=args.timeout)
        else:
            trainer = DistributedParameterServer(cfg, server_computes=not args.no_server_compute, timeout=args.timeout)
        cli.default_threads(trainer, args)
        if trainer.rank == 0:
            print(f"robustagg.train.distributed: {trainer.world} rank(s), backend {backend}; workers per rank: "
                  + ", ".join(f"{r}:{len(b)}" for r, b in enumerate(trainer.blocks)), file=sys.stderr)
            return cli.train(trainer, args)
        trainer.run(args.steps, resume=args.resume)
        return 0
    except CollectiveError as exc:  # another rank died or hangs: one line, not a traceback
        print(f"robustagg.train.distributed: error: {lost_contact(exc, rank, trainer, args.timeout)}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()


def lost_contact(exc: BaseException, rank: int, trainer: Any, timeout: float) -> str:
    """The one-line message of a rank whose collective failed (``exc``): where it stopped, the
    timeout, and the checkpoint a ``--resume`` continues from."""
    where = "" if trainer is None else f" in step {trainer.t + 1}"
    last = getattr(trainer, "checkpoint_step", None)
    resume = ("no checkpoint was written yet" if last is None else
              f"launch again with --resume to continue from the checkpoint of step {last}")
    return (f"rank {rank} stopped{where}: another rank died or did not answer within --timeout {timeout:g} s; "
            f"{resume} ({exc})")


def check_backend(backend: str, device: str) -> None:
    """One-line ``ValueError`` when ``backend`` cannot work here: NCCL needs a CUDA build of
    torch with NCCL, a visible GPU and ``run.device = "cuda"``."""
    if backend != "nccl":
        return
    if not (dist.is_nccl_available() and torch.cuda.is_available()):
        raise ValueError(f"--backend nccl needs a CUDA build of torch with NCCL and a visible GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --backend gloo")
    if not device.startswith("cuda"):
        raise ValueError(f"--backend nccl needs run.device = 'cuda' (got {device!r}); use --backend gloo on the CPU")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
