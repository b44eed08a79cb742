"""Wire types of server-side custom losses: a traced loss as plain data.

The official SDK can trace a torch loss into a graph of nodes and upload it
(``create_custom_loss``) so the server runs it. tinkex_jax runs custom losses on the client
(`tinkex_jax.TrainingClient.forward_backward_custom`) and does not upload graphs; these
types exist so that code and data written for that flow still load and encode.

Example:
    >>> graph = CustomLossGraph(nodes=[
    ...     CustomLossNode(op="placeholder", name="logprobs", target="logprobs"),
    ...     CustomLossNode(op="call_method", name="loss", target="sum", args=[{"ref": "logprobs"}]),
    ...     CustomLossNode(op="output", name="output", target="output", args=[{"ref": "loss"}])])
    >>> [n.op for n in graph.nodes], graph.format
    (['placeholder', 'call_method', 'output'], 1)
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ..errors import invalid
from ._base import WireStruct

__all__ = [
    "CreateCustomLossRequest",
    "CustomLossGraph",
    "CustomLossInput",
    "CustomLossInputRank",
    "CustomLossNode",
    "CustomLossNodeOp",
]

CustomLossNodeOp = Literal["placeholder", "get_attr", "call_function", "call_method",
                           "call_module", "output"]
CustomLossInputRank = Literal[0, 1, 2]
_OPS = frozenset(CustomLossNodeOp.__args__)  # type: ignore[attr-defined]


class CustomLossNode(WireStruct, frozen=True, kw_only=True):
    """One step of a traced loss, in execution order.

    ``target`` is the input's name (``placeholder``), the qualified function name
    (``call_function``, e.g. ``torch.exp``), the method or attribute name, or ``output``.
    ``args`` / ``kwargs`` hold JSON values; a reference to an earlier node is
    ``{"ref": name}`` and other non-JSON values are one-key objects (``{"tuple": [...]}``,
    ``{"slice": [start, stop, step]}``, ``{"float": "inf"}``, ``{"dtype": "float32"}``, ...).
    """

    op: CustomLossNodeOp
    name: str
    target: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise invalid("CustomLossNode.op", f"one of {sorted(_OPS)}", self.op)
        if not self.name:
            raise invalid("CustomLossNode.name", "a non-empty node name", self.name)


class CustomLossGraph(WireStruct, frozen=True, kw_only=True):
    """A traced loss: its nodes in execution order (data only; the server decides what it
    is willing to run)."""

    nodes: list[CustomLossNode]
    format: Literal[1] = 1

    def __post_init__(self) -> None:
        if self.format != 1:
            raise invalid("CustomLossGraph.format", "1 (the only graph format)", self.format)
        if not self.nodes or self.nodes[-1].op != "output":
            raise invalid("CustomLossGraph.nodes", "nodes ending with an 'output' node",
                          f"<{len(self.nodes)} nodes>")


class CustomLossInput(WireStruct, frozen=True, kw_only=True):
    """An input of a custom loss: ``logprobs`` or a ``loss_fn_inputs`` key, with its rank
    (0 scalar, 1 per position, 2 per position and column)."""

    name: str
    rank: CustomLossInputRank

    def __post_init__(self) -> None:
        if not self.name:
            raise invalid("CustomLossInput.name", "a loss_fn_inputs key", self.name)
        if isinstance(self.rank, bool) or self.rank not in (0, 1, 2):
            raise invalid("CustomLossInput.rank", "0, 1 or 2", self.rank)


class CreateCustomLossRequest(WireStruct, frozen=True, kw_only=True):
    """Body of ``create_custom_loss``: upload a traced loss to a session."""

    session_id: str
    custom_loss_seq_id: int
    name: str
    inputs: list[CustomLossInput]
    graph: CustomLossGraph
    type: Literal["create_custom_loss"] = "create_custom_loss"

    def __post_init__(self) -> None:
        seq = self.custom_loss_seq_id
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise invalid("CreateCustomLossRequest.custom_loss_seq_id", "a non-negative int",
                          seq)
        if not self.name:
            raise invalid("CreateCustomLossRequest.name", "a non-empty loss name", self.name)
