"""The backend: the operator's entry point (pipelines, streams, system state) behind the web UI."""
