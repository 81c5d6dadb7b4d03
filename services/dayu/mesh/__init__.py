"""One description of a mesh (nodes, the components each runs, links, resources) and what every
mode derives from it: the embedded mesh, the cluster of namespaces, the Kubernetes manifests."""
