"""What an agent imports: the fleet client, the agent base class, the retriever, the
task names."""

from tasks.agent import AgentRun, AgentStats, AgentStep, FleetAgent
from tasks.client import FleetClient
from tasks.handles import BatchHandle, JobHandle
from tasks.names import COMPLETE, COMPLETE_BATCH, EMBED, queue_for
from tasks.retriever import ContextRetriever
from tasks.tools import ToolBox, function_tool

__all__ = [
    "COMPLETE",
    "COMPLETE_BATCH",
    "EMBED",
    "AgentRun",
    "AgentStats",
    "AgentStep",
    "BatchHandle",
    "ContextRetriever",
    "FleetAgent",
    "FleetClient",
    "JobHandle",
    "ToolBox",
    "function_tool",
    "queue_for",
]
