"""Crash-safe persistence: atomic file writes, the server's checkpoints, and the layout of a run directory.

Floor: the bottom one, with api/, models/ and data/. numpy and the standard
library only.
"""
