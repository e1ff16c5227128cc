"""Recovery: the jobs of a worker that died go back to their queues within a minute."""
