"""Stubs generated from proto/herald/v1/herald.proto (see scripts/gen.sh)."""
