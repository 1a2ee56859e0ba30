"""Crash-safe persistence: atomic file writes, the server's checkpoints, the layout of a run directory, and the
content-addressed store of model artifacts (the fleet gateway's volume).

Floor: the bottom one, with api/, models/ and data/ (the artifact store reads the format in models/artifact.py).
numpy and the standard library only.
"""
