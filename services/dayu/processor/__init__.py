"""The processor: runs one kind of stage on tasks, through a bounded queue and a pool of workers."""
