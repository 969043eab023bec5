"""Robust aggregation in a plain DistributedDataParallel loop: two added lines.

    torchrun --nproc-per-node 4 experiments/ddp_example.py [--rule geometric-median] [--f 1]
                                                          [--mode ddp|step] [--steps 60]

Each rank trains on its own quarter of scikit-learn's digits; the last rank is Byzantine and
sends -10 times its gradient (a sign-flip attack). With ``--rule mean`` (what DDP does by
default) the model does not learn; with a robust rule it does. ``--mode step`` uses
:func:`robustagg.collective.robust_step` after ``backward()`` instead of the DDP hook.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

import robustagg as ra
from robustagg.collective import RobustHookState, robust_hook, robust_step


def data(rank: int, world: int):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    test = slice(0, 297)
    train_idx = torch.arange(297, len(y))
    mine = train_idx[rank::world]
    return X[mine], y[mine], X[test], y[test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="geometric-median")
    parser.add_argument("--f", type=int, default=1)
    parser.add_argument("--mode", choices=("ddp", "step"), default="ddp")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    Xtr, ytr, Xte, yte = data(rank, world)
    torch.manual_seed(0)  # the same initial model on every rank
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    byzantine = rank == world - 1
    attack = (lambda g: -10.0 * g) if byzantine else None
    rule = ra.get(args.rule, f=args.f)
    if args.mode == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
        net.register_comm_hook(RobustHookState(rule, transform=attack), robust_hook)  # added line 1 of 2
    else:
        net = model
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(rank)
    outcome = ""
    for step in range(args.steps):
        batch = torch.randint(len(ytr), (32,), generator=gen)
        opt.zero_grad()
        try:
            torch.nn.functional.cross_entropy(net(Xtr[batch]), ytr[batch]).backward()
            if args.mode == "step":
                robust_step(model, rule, transform=attack)  # the step-mode line (no DDP)
        except ValueError as exc:  # every rank raises alike (e.g. more non-finite gradients than f)
            outcome = f"diverged at step {step} ({str(exc).splitlines()[0][:80]})"
            break
        opt.step()
    with torch.no_grad():
        accuracy = float((model(Xte).argmax(1) == yte).float().mean())
    if rank == 0:
        print(f"rule={args.rule} f={args.f} mode={args.mode} ranks={world} (rank {world - 1} Byzantine): "
              f"{outcome or 'trained'}; test accuracy {accuracy:.3f} after {step + 1} steps")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
