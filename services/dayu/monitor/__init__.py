"""The monitor: measures its node (CPU, memory, GPU, processor queues, links) for the scheduler."""
