"""An in-process backend: the real ``ServerApp`` and ``ClientApp`` objects, no Ray.

:class:`InlineGrid` plays Flower's ``Grid``: it delivers each message to the ``ClientApp`` of
its node, in this process, one node after the other, with one ``Context`` per node that
persists across rounds (as the simulation's node state does). :func:`run_inline` is the
``backend = "inline"`` of :func:`federated.simulate`: useful for tests, debugging and
machines without Ray; results equal a Ray run's for the same seeds (every node's work is a
function of the messages it gets and its own seeded state). As on Ray, an exception inside a
``ClientApp`` becomes an error reply (``ErrorCode.CLIENT_APP_RAISED_EXCEPTION``, logged with
its traceback), not an exception of the server.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from typing import Any, Dict, Iterable, List, Optional

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 1000


class InlineGrid:
    """A ``Grid`` whose ``num_nodes`` nodes (ids ``1000 + partition``) run ``client_app`` in-process.

    ``node_config[p]`` adds entries to node ``p``'s node config (``partition-id`` and
    ``num-partitions`` are always set); ``run_config`` is every node's run config (what
    ``flwr run`` takes from the app's ``pyproject.toml``). ``log`` keeps every reply;
    ``partition_ids`` maps node ids to partitions (``RobustStrategy`` names partitions in its
    history with it).
    """

    def __init__(self, client_app: Any, num_nodes: int, node_config: Optional[Dict[int, Dict[str, Any]]] = None,
                 run_config: Optional[Dict[str, Any]] = None) -> None:
        self.app = client_app
        self.contexts = {
            FIRST_NODE_ID + p: Context(run_id=1, node_id=FIRST_NODE_ID + p,
                                       node_config={"partition-id": p, "num-partitions": num_nodes,
                                                    **(node_config or {}).get(p, {})},
                                       state=RecordDict(), run_config=dict(run_config or {}))
            for p in range(num_nodes)}
        self.log: List[Message] = []
        self.partition_ids = {node: node - FIRST_NODE_ID for node in self.contexts}

    def get_node_ids(self) -> List[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> List[Message]:
        replies = [self._deliver(m) for m in messages]
        self.log.extend(replies)
        return replies

    def _deliver(self, message: Message) -> Message:
        try:
            return self.app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as exc:  # noqa: BLE001 - what Flower's simulation engine does with it
            logging.getLogger("flwr").error("ClientApp of node %d raised:\n%s", message.metadata.dst_node_id,
                                            traceback.format_exc())
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                 reason=f"{type(exc)}:<'{exc}'>"), reply_to=message)


@contextlib.contextmanager
def task_identity(run_id: int = 1, task_id: int = 1, node_id: int = 0):
    """Set Flower's process-wide task identity (``Message`` needs it outside a Flower run), then
    restore the previous one."""
    saved = {k: TaskIdentity.__dict__.get(k) for k in ("_run_id", "_task_id", "_node_id")}
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, task_id, node_id
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(TaskIdentity, key, value)


def run_inline(server_app: Any, client_app: Any, num_supernodes: int, run_config: Optional[Dict[str, Any]] = None,
               node_config: Optional[Dict[int, Dict[str, Any]]] = None) -> InlineGrid:
    """Run ``server_app`` against ``num_supernodes`` in-process nodes; returns the grid."""
    grid = InlineGrid(client_app, num_supernodes, node_config=node_config, run_config=run_config)
    with task_identity():
        server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                 run_config=dict(run_config or {})))
    return grid
