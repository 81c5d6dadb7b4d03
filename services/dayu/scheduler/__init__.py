"""The scheduler: a policy per stream turns feedback into versioned decisions, pushed to watchers."""
