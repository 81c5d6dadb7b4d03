"""Generated from proto/dayu/v1 by hack/gen.sh; do not edit."""
