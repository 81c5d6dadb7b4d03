"""A cluster of real nodes on one machine: network namespaces joined by a bridge, shaped links, cgroups."""
