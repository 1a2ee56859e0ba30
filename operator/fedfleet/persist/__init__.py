"""Crash-safe persistence: atomic file writes and the server's checkpoints.

Floor: the bottom one, beside api/, models/ and data/, which it never imports. numpy and the standard
library only.
"""
