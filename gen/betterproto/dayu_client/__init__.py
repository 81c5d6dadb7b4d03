"""Dayu's Python dataclass client (betterproto2 + grpclib), generated from proto/dayu/v1 by
hack/gen-betterproto.sh; do not edit. Messages and stubs: dayu_client.dayu.v1."""
