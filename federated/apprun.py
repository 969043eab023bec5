r"""Run an existing Flower app directory unchanged, with ``RobustStrategy`` swapped in for ``FedAvg``.

An app directory is what ``flwr new`` creates and ``flwr run`` runs: a ``pyproject.toml``
with ``[tool.flwr.app.components]`` (``serverapp = "pkg.server_app:app"``,
``clientapp = "pkg.client_app:app"``) and ``[tool.flwr.app.config]`` (the run config).
:func:`run_app` loads both apps as ``flwr run`` would, gives every node and the server the
app's run config (with ``run_config`` overrides, checked against the app's keys), and, when
``aggregator`` is given, makes every ``FedAvg(...)`` the ``ServerApp`` builds a
:class:`~federated.RobustStrategy` with that rule and the app's own FedAvg arguments::

    from federated import run_app
    result = run_app("path/to/quickstart-pytorch", "trimmed-mean", f=1, num_supernodes=5)
    result.arrays          # the final model (never empty), as the app's own strategy.start returned it

The swap replaces the name ``FedAvg`` in ``flwr.serverapp.strategy`` while the app's modules
are imported (``from flwr.serverapp.strategy import FedAvg``), so nothing in the app changes;
an app that builds another strategy (``FedProx``, ...) is refused, since nothing would be
swapped. ``backend="inline"`` runs in this process (:class:`~federated.InlineGrid`),
``"ray"`` on Flower's Ray simulation engine, and :func:`federated.deploy.deploy_app` on a
real local SuperLink and SuperNodes.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, Result

from federated._rules import build_rule

_FLWR_FEDAVG = FedAvg


def read_app(app_dir: Any, run_config: Optional[Dict[str, Any]] = None) -> Tuple[str, str, Dict[str, Any]]:
    """``(serverapp ref, clientapp ref, run config)`` of the app in ``app_dir``.

    The run config is the flattened ``[tool.flwr.app.config]`` with ``run_config`` on top;
    an override naming a key the app does not have raises ``ValueError`` (as ``flwr run``).
    """
    from flwr.common.config import flatten_dict
    import tomllib

    path = Path(app_dir) / "pyproject.toml"
    if not path.is_file():
        raise ValueError(f"app directory {str(app_dir)!r} has no pyproject.toml (a Flower app: `flwr new`)")
    with open(path, "rb") as fh:
        project = tomllib.load(fh)
    app = project.get("tool", {}).get("flwr", {}).get("app", {})
    components = app.get("components", {})
    if not {"serverapp", "clientapp"} <= set(components):
        raise ValueError(f"{path}: [tool.flwr.app.components] needs serverapp and clientapp")
    config = flatten_dict(app.get("config", {}))
    for key, value in (run_config or {}).items():
        if key not in config:
            raise ValueError(f"run config key {key!r} is not in {path} [tool.flwr.app.config] "
                             f"(keys: {', '.join(sorted(config))})")
        config[key] = value
    return components["serverapp"], components["clientapp"], config


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def app_modules(app_dir: Any) -> Iterator[None]:
    """``app_dir`` first on ``sys.path`` and ``PYTHONPATH`` (Ray workers import the app from it);
    the app's modules are imported afresh and forgotten afterwards."""
    app_dir = str(Path(app_dir).resolve())
    tops = {p.stem for p in Path(app_dir).iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}

    def forget_app_modules() -> None:
        # the same package name imported from another copy of the app (or an earlier run)
        # must not be reused: its modules bound the FedAvg of their own import
        for name in [m for m in sys.modules if m.split(".")[0] in tops]:
            del sys.modules[name]

    forget_app_modules()
    before = set(sys.modules)
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    sys.path.insert(0, app_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (app_dir, saved_env) if p)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env
        for name in set(sys.modules) - before:
            mod = sys.modules.get(name)
            if str(getattr(mod, "__file__", "") or "").startswith(app_dir):
                del sys.modules[name]
        forget_app_modules()


class Swap:
    """What replaces ``FedAvg`` while an app is loaded: ``RobustStrategy`` with a rule, or
    (``aggregator=None``) FedAvg itself; either way the strategies built and the ``Result``
    of each ``start`` are recorded in :attr:`strategies` and :attr:`results`."""

    def __init__(self, aggregator: Any = None, **robust_kwargs: Any) -> None:
        self.aggregator, self.robust_kwargs = aggregator, robust_kwargs
        if aggregator is not None:  # fail now on a bad rule, not inside the ServerApp
            build_rule(aggregator, robust_kwargs.get("pre"), int(robust_kwargs.get("f", 0)))
        self.strategies: List[Any] = []
        self.results: List[Result] = []

    def cls(self) -> type:
        from federated.strategy import RobustStrategy

        swap = self
        base = _FLWR_FEDAVG if self.aggregator is None else RobustStrategy

        class Swapped(base):  # type: ignore[valid-type, misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                if swap.aggregator is None:
                    base.__init__(self, *args, **kwargs)
                else:  # a fresh copy of the rule per strategy (stateful rules)
                    base.__init__(self, copy.deepcopy(swap.aggregator), *args, **{**swap.robust_kwargs, **kwargs})
                swap.strategies.append(self)

            def start(self, *args: Any, **kwargs: Any) -> Result:
                result = base.start(self, *args, **kwargs)
                swap.results.append(result)
                return result

        Swapped.__name__ = Swapped.__qualname__ = base.__name__
        return Swapped

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """``flwr.serverapp.strategy.FedAvg`` is the swapped class inside the block."""
        import flwr.serverapp.strategy as strategies

        strategies.FedAvg = self.cls()
        try:
            yield
        finally:
            strategies.FedAvg = _FLWR_FEDAVG


class WithRunConfig(ClientApp):
    """A ``ClientApp`` that hands ``inner`` a context with the app's run config (the simulation
    engine gives nodes an empty one; ``flwr run`` gives them the app's)."""

    def __init__(self, inner: ClientApp, run_config: Dict[str, Any]) -> None:
        super().__init__()
        self.inner, self.run_config = inner, dict(run_config)

    def __call__(self, message: Any, context: Context) -> Any:
        inner = _with_run_config(context, self.run_config)  # the engine refuses a changed run_config
        reply = self.inner(message, inner)
        context.state = inner.state
        return reply


def _with_run_config(context: Context, run_config: Dict[str, Any]) -> Context:
    """``context`` (same node config and state object) with ``run_config`` under its own entries."""
    return Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                   state=context.state, run_config={**run_config, **dict(context.run_config or {})})


def run_app(app_dir: Any, aggregator: Any = None, *, num_supernodes: int = 5, backend: str = "inline",
            run_config: Optional[Dict[str, Any]] = None, node_config: Optional[Dict[int, Dict[str, Any]]] = None,
            num_cpus: int = 2, verbose: bool = False, **robust_kwargs: Any) -> Result:
    """Run the Flower app in ``app_dir`` in simulation, ``FedAvg`` swapped for ``RobustStrategy``.

    Parameters
    ----------
    app_dir : str or path
        A Flower app (``pyproject.toml`` with ``[tool.flwr.app]``), used unchanged.
    aggregator : str, robustagg.Aggregator or None
        The rule every ``FedAvg`` of the app becomes a ``RobustStrategy`` of; ``None`` runs
        the app's ``FedAvg`` as it is (the baseline).
    num_supernodes : int
        Virtual nodes; node ``p`` has ``partition-id = p``, ``num-partitions = num_supernodes``.
    backend : {"inline", "ray"}
    run_config : dict, optional
        Overrides of the app's run config (keys must exist in the app).
    node_config : dict, optional
        ``{partition: {key: value}}`` added to a node's config (inline backend only), e.g.
        ``{0: {"byzantine": "reverse"}}`` for a node that reads it.
    num_cpus : int
        CPUs Ray may use (ray backend).
    verbose : bool
        Flower's INFO log (off: warnings and errors only).
    **robust_kwargs
        ``f``, ``pre``, ``server_lr``, ... of :class:`~federated.RobustStrategy`.

    Returns
    -------
    flwr.serverapp.strategy.Result
        The ``Result`` of the app's (last) ``strategy.start``; ``.strategy`` is the strategy.
    """
    from federated.app import quiet_flower, shutdown_ray
    from federated.inline import run_inline

    if backend not in ("inline", "ray"):
        raise ValueError(f"backend must be 'inline' or 'ray', got {backend!r}")
    if node_config and backend != "inline":
        raise ValueError("node_config applies to the inline backend only (Ray's virtual nodes share one config)")
    server_ref, client_ref, config = read_app(app_dir, run_config)
    swap = Swap(aggregator, **robust_kwargs)
    with app_modules(app_dir), swap.installed(), quiet_flower(not verbose):
        server, client = _load(server_ref), _load(client_ref)
        if backend == "inline":
            run_inline(server, client, num_supernodes, run_config=config, node_config=node_config)
        else:
            try:
                _ray(server, WithRunConfig(client, config), config, num_supernodes, num_cpus, verbose)
            finally:
                shutdown_ray()
    if not swap.strategies:
        raise ValueError(f"the ServerApp {server_ref} built no FedAvg: nothing to swap (it must call "
                         "flwr.serverapp.strategy.FedAvg(...))")
    if not swap.results:
        raise RuntimeError("the app's strategy never finished start() (see Flower's log above)")
    result = swap.results[-1]
    result.strategy = swap.strategies[-1]  # type: ignore[attr-defined]
    return result


def _ray(server: Any, client: ClientApp, config: Dict[str, Any], n: int, num_cpus: int, verbose: bool) -> None:
    """The ServerApp on Ray with the run config in its context (the engine's is empty)."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    wrapped = ServerApp()

    @wrapped.main()
    def main(grid: Any, context: Context) -> None:
        server(grid, _with_run_config(context, config))

    backend = {"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
               "init_args": {"num_cpus": int(num_cpus), "num_gpus": 0, "include_dashboard": False}}
    run_simulation(server_app=wrapped, client_app=client, num_supernodes=n, backend_config=backend,
                   verbose_logging=verbose)
