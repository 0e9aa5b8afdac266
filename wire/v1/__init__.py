"""Generated from proto/fedadamw/v1 by scripts/gen_proto.py: do not edit."""
