from prunepass.ir import ops
from prunepass.ir.graph import Graph, Node, Value
from prunepass.ir.verifier import verify

__all__ = ["Graph", "Node", "Value", "ops", "verify"]
