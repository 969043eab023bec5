"""The ``robustagg certify`` and ``robustagg election`` subcommands.

``robustagg certify SCORES --labels LABELS --method dpa+roe [--k K --d D --seed S] [--radii ...]``
    Certify saved base-model scores (``(K, N, C)``: a ``.npy`` file, a ``.npz``
    holding ``scores`` (and optionally ``labels``), or an ensemble directory of
    :func:`~robustagg.election.train_ensemble`) and print the certified accuracy
    per radius; ``--out CERTS.npz`` also writes the certificates. For an
    ensemble (its directory, or the ``scores.npy`` in it) the layout comes from
    its ``manifest.json`` (``k``, ``d``, the FA shifts) and the score files are
    checked against their digests; an option that contradicts the manifest
    (a DPA method on an FA ensemble, another ``--d``, ``--k`` or shift
    ``--seed``) is an error, since its certificates would not hold.

``robustagg election CONFIG.toml [--out DIR] [--jobs N] [--no-progress]``
    Run the whole pipeline a configuration describes
    (:mod:`robustagg.election.config`, :func:`~robustagg.election.pipeline.run_election`)
    with a progress bar over the base models, and print the same table.

Both subcommands live in this one module: :data:`robustagg.cli.SUBCOMMANDS`
names it twice, and :func:`add_arguments` / :func:`run` dispatch on the
subcommand's name (``parser.prog`` and ``args.command``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from robustagg._validation import check_int
from robustagg.election.certificates import available_methods
from robustagg.election.config import DEFAULT_RADII


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``certify`` or ``election`` (chosen by ``parser.prog``)."""
    if parser.prog.split()[-1] == "election":
        parser.add_argument("config", metavar="CONFIG.toml", help="election configuration (see docs/election.md)")
        parser.add_argument("--out", default=None, help="output directory (default: the configuration's `out`)")
        parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: train.jobs)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        return
    parser.add_argument("scores", metavar="SCORES", help="(K, N, C) scores: .npy, .npz (key 'scores') or an ensemble directory")
    parser.add_argument("--labels", default=None,
                        help="(N,) int labels (.npy; default: 'labels' in the .npz or labels.npy next to the scores)")
    parser.add_argument("--method", action="append", default=None, choices=available_methods(),
                        help="certification method; repeat it for several columns (default for an ensemble: "
                             "its partition's method and its run-off)")
    parser.add_argument("--k", type=int, default=None,
                        help="number of partitions (FA: K = k * d; default K / d; an ensemble's manifest decides)")
    parser.add_argument("--d", type=int, default=None, help="FA: models per bucket (an ensemble's manifest decides)")
    parser.add_argument("--seed", type=int, default=None,
                        help="FA shift seed (default: the reference's; an ensemble's manifest decides)")
    parser.add_argument("--radii", type=int, nargs="+", default=DEFAULT_RADII, help="radii to report")
    parser.add_argument("--out", default=None, help="write the certificates (one array per method) to this .npz")


def _load_array(path: Path, key: str) -> Optional[np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            if key in f.files:
                return f[key]
            if key == "scores" and len(f.files) == 1:
                return f[f.files[0]]
            if key == "scores":
                raise ValueError(f"{path} holds {f.files}, none named 'scores'")
            return None
    return np.load(path, allow_pickle=False)


def ensemble_manifest(scores_path: str) -> Optional[dict]:
    """The manifest of the ensemble ``scores_path`` belongs to (its directory, or its ``scores.npy``), else None."""
    from robustagg.election.ensemble import read_manifest

    sp = Path(scores_path)
    if sp.is_dir():
        return read_manifest(sp)
    if sp.name == "scores.npy" and (sp.parent / "manifest.json").exists():
        return read_manifest(sp.parent)
    return None


def load_inputs(scores_path: str, labels_path: Optional[str]):
    """Read the scores (``.npy``, ``.npz`` or ensemble directory) and labels the ``certify`` command takes.

    An ensemble's score files (its per-model files, or its stacked ``scores.npy``) are checked
    against the digests recorded when they were written.
    """
    from robustagg.election._store import load_npy, read_digests, read_verified
    from robustagg.election.ensemble import load_scores

    sp = Path(scores_path)
    if not sp.exists():
        raise FileNotFoundError(f"scores file {scores_path!r} not found")
    if sp.is_dir():
        scores = load_scores(sp)
    elif ensemble_manifest(scores_path) is not None:
        scores = load_npy(sp, read_verified(sp, read_digests(sp.parent)))
    else:
        scores = _load_array(sp, "scores")
    labels = None
    if labels_path is not None:
        lp = Path(labels_path)
        if not lp.exists():
            raise FileNotFoundError(f"labels file {labels_path!r} not found")
        labels = _load_array(lp, "labels")
        if labels is None:
            raise ValueError(f"{lp} holds no array named 'labels'")
    elif sp.suffix == ".npz":
        labels = _load_array(sp, "labels")
    if labels is None:
        guess = (sp if sp.is_dir() else sp.parent) / "labels.npy"
        if not guess.exists():
            raise ValueError("no labels: pass --labels LABELS.npy")
        labels = np.load(guess, allow_pickle=False)
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.dtype.kind not in "fiu":
        raise ValueError(f"scores must be a numeric (K, N, C) array, got shape {scores.shape} dtype {scores.dtype}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape != (scores.shape[1],):
        raise ValueError(f"scores hold {scores.shape[1]} test points, labels have shape {labels.shape}")
    return scores, labels.astype(np.int64)


def format_table(radii: Sequence[int], accuracy: Dict[str, np.ndarray]) -> str:
    """Certified accuracy (in %) per radius, one column per method."""
    width = max(8, *(len(m) + 2 for m in accuracy))
    lines = ["radius" + "".join(f"{m:>{width}}" for m in accuracy)]
    for i, r in enumerate(radii):
        lines.append(f"{r:>6}" + "".join(f"{100 * acc[i]:>{width - 1}.1f}%" for acc in accuracy.values()))
    return "\n".join(lines)


def _is_fa(method: str) -> bool:
    from robustagg.election.certificates import FA, METHODS

    return issubclass(METHODS.resolve(method), FA)


def _manifest_params(method: str, K: int, manifest: dict, k: Optional[int], d: Optional[int],
                     seed: Optional[int]) -> dict:
    """The method's parameters from the ensemble's manifest; an option contradicting it is an error."""
    from robustagg.election.partitions import fa_shifts

    try:
        mk, md, shifts = int(manifest["k"]), int(manifest["d"]), tuple(int(s) for s in manifest["shifts"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("the ensemble's manifest.json records no partition layout (k, d, shifts)") from None
    what = f"the ensemble's manifest.json (k = {mk}, d = {md})"
    if mk * md != K:
        raise ValueError(f"{what} describes {mk * md} base models, the scores hold {K}")
    if k is not None and k != mk:
        raise ValueError(f"--k {k} contradicts {what}")
    if d is not None and d != md:
        raise ValueError(f"--d {d} contradicts {what}")
    if not _is_fa(method):
        if md != 1:
            raise ValueError(f"--method {method} does not hold for this ensemble: {what} is Finite Aggregation, "
                             f"where one poisoned sample changes {md} models; use --method fa or fa+roe")
        if seed is not None:
            raise ValueError(f"--seed applies to the FA methods only (got --method {method})")
        return {"k": mk}
    if seed is not None and tuple(fa_shifts(mk, md, seed)) != shifts:
        raise ValueError(f"--seed {seed} contradicts {what}: the ensemble was trained with shifts {list(shifts)}")
    return {"k": mk, "d": md, "shifts": shifts}


def _fa_params(method: str, K: int, k: Optional[int], d: Optional[int], seed: Optional[int]) -> dict:
    from robustagg.election.partitions import fa_shifts

    if not _is_fa(method):
        if d not in (None, 1) or seed is not None:
            raise ValueError(f"--d and --seed apply to the FA methods only (got --method {method})")
        return {"k": k}
    if d is None:
        raise ValueError(f"--method {method} needs --d (models per bucket)")
    d = check_int(d, "--d", minimum=1)
    if k is None:
        if K % d:
            raise ValueError(f"{K} base models are not a multiple of --d {d}")
        k = K // d
    k = check_int(k, "--k", minimum=1)
    return {"k": k, "d": d, "shifts": fa_shifts(k, d, seed) if seed is not None else None}


def run_certify(args: argparse.Namespace) -> int:
    """``robustagg certify``: print certified accuracy per radius, optionally save the certificates."""
    from robustagg.election.certificates import certified_accuracy, certify

    manifest = ensemble_manifest(args.scores)
    methods = args.method
    if methods is None:
        if manifest is None:
            raise ValueError("--method is required for a scores file that is not an ensemble's")
        methods = ["fa", "fa+roe"] if manifest.get("d", 1) != 1 else ["dpa", "dpa+roe"]
    scores, labels = load_inputs(args.scores, args.labels)
    radii = [check_int(r, "--radii", minimum=0) for r in args.radii]
    K, N, C = scores.shape
    certs = {}
    for m in dict.fromkeys(methods):
        params = (_fa_params(m, K, args.k, args.d, args.seed) if manifest is None
                  else _manifest_params(m, K, manifest, args.k, args.d, args.seed))
        certs[m] = certify(scores, labels, m, **params)
    acc = {m: certified_accuracy(c, radii) for m, c in certs.items()}
    layout = "" if manifest is None else f" (layout from manifest.json: k = {manifest['k']}, d = {manifest['d']})"
    print(f"{N} test points, {K} base models, {C} classes{layout}")
    print(format_table(radii, acc))
    if args.out:
        from robustagg._io import atomic_write

        out = Path(args.out)
        atomic_write(out, lambda fh: np.savez(fh, **certs))
        print(f"certificates written to {out}")
    return 0


def run_election_command(args: argparse.Namespace) -> int:
    """``robustagg election``: train (or resume) the configured ensemble and certify it."""
    from robustagg.election.pipeline import run_election

    res = run_election(args.config, out_dir=args.out, jobs=args.jobs, progress=not args.no_progress)
    part = res.partition
    K, N, C = res.scores.shape
    print(f"{res.config['data']['dataset']}: {part!r}, {N} test points; trained {res.trained} of {K} "
          f"base models in {res.train_seconds:.1f} s, certified in {res.certify_seconds:.1f} s")
    print(format_table(res.radii, res.accuracy))
    print(f"results in {res.config['out']}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of both subcommands (dispatch on ``args.command``)."""
    if args.command == "election":
        return run_election_command(args)
    return run_certify(args)


__all__: List[str] = ["add_arguments", "ensemble_manifest", "format_table", "load_inputs", "run", "run_certify",
                      "run_election_command"]
