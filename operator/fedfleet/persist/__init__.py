"""Crash-safe persistence: atomic files and checkpoints."""
