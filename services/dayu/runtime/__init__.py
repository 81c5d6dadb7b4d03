"""What every Dayu component shares: errors, configuration, logging, the registry, validation and
the one way to run a component as a gRPC server. Depends on the generated contracts only."""
