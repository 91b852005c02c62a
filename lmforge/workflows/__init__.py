"""Workflows: one function per command, readable top to bottom."""
