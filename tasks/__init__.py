"""What an agent imports: the fleet client, the agent base class, the task names."""

from tasks.agent import AgentStats, FleetAgent
from tasks.client import BatchHandle, FleetClient, JobHandle
from tasks.names import COMPLETE, COMPLETE_BATCH, EMBED, queue_for

__all__ = [
    "COMPLETE",
    "COMPLETE_BATCH",
    "EMBED",
    "AgentStats",
    "BatchHandle",
    "FleetAgent",
    "FleetClient",
    "JobHandle",
    "queue_for",
]
