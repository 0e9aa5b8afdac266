"""Fault-injection tests: real coordinator and agent processes under injected failures."""
