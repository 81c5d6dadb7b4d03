"""`dayu simulate` and `dayu profile`: the scheduler's real core and policies against modelled nodes,
links and processors, in simulated time (docs/simulator.md)."""
