"""Jobs that can wait: deferred to providers' batch APIs at batch prices (deferral),
gathered, sent, polled and answered by one batcher at a time (the batcher), its state
in Postgres (the store). docs/batches.md tells the whole path."""

from workers.batching.batcher import Batcher, Finish, Send, chat_request
from workers.batching.deferral import Deferral
from workers.batching.store import BatchStore, WaitingJob

__all__ = ["BatchStore", "Batcher", "Deferral", "Finish", "Send", "WaitingJob", "chat_request"]
