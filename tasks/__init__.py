"""What an agent imports: the fleet client, the agent base class, the retriever, the
task names."""

from tasks.agent import AgentStats, FleetAgent
from tasks.client import BatchHandle, FleetClient, JobHandle
from tasks.names import COMPLETE, COMPLETE_BATCH, EMBED, queue_for
from tasks.retriever import ContextRetriever

__all__ = [
    "COMPLETE",
    "COMPLETE_BATCH",
    "EMBED",
    "AgentStats",
    "BatchHandle",
    "ContextRetriever",
    "FleetAgent",
    "FleetClient",
    "JobHandle",
    "queue_for",
]
