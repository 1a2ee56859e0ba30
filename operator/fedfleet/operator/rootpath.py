"""Absolute in-container paths, resolved under $FEDFLEET_ROOT when it is set.

The local node agent runs pods as processes and places every mountPath under the pod's directory, which it
passes as FEDFLEET_ROOT; in a real container FEDFLEET_ROOT is unset and paths are used as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ROOT_ENV = "FEDFLEET_ROOT"


def under_root(path: str | Path, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    root = env.get(ROOT_ENV)
    p = Path(path)
    if root and p.is_absolute():
        return Path(root) / p.relative_to("/")
    return p
