"""Checks shared by the reproduction tests (experiments/{flag,afl,monna}.py)."""

from typing import Any, Callable, Dict


def check_reuse_and_retrain(run: Callable[..., Dict[str, Any]], scale: Dict[str, Any], out, first: Dict[str, Any],
                            key: str) -> Dict[str, Any]:
    """A second ``run`` reuses every finished run (same records, no training); deleting one
    run's ``done.json`` retrains exactly that run. Returns the third call's result."""
    walls = {r["key"]: r["wall"] for r in first["records"]}
    again = run(scale, out=out, processes=1, progress=False)
    assert {r["key"]: r["wall"] for r in again["records"]} == walls
    (out / "runs" / key / "done.json").unlink()
    third = run(scale, out=out, processes=1, progress=False)
    changed = [r["key"] for r in third["records"] if r["wall"] != walls[r["key"]]]
    assert changed == [key]
    return third
