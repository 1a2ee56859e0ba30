#!/usr/bin/env bash
# Create .venv with fedfleet installed for development.
#
# torch is ~5 GB with its CUDA libraries, so it is installed once per machine into a cache keyed by its
# version and the Python version, and every virtual env (each clone, each CI run) links it in through a
# .pth file instead of installing it again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.15.0
CACHE=${FEDFLEET_CACHE:-$HOME/.cache/fedfleet}
PYV=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
TORCH_DIR="$CACHE/torch/$TORCH_VERSION-py$PYV"
PIP_FLAGS=(--quiet --disable-pip-version-check --no-input)

if [ ! -d "$TORCH_DIR/torch" ]; then
  echo "installing torch $TORCH_VERSION once for this machine into $TORCH_DIR"
  rm -rf "$TORCH_DIR.part"
  "$PYTHON" -m pip install "${PIP_FLAGS[@]}" --target "$TORCH_DIR.part" "torch==$TORCH_VERSION"
  mv "$TORCH_DIR.part" "$TORCH_DIR"   # only a complete install ever gets the final name
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$TORCH_DIR" > "$SITE/fedfleet-torch.pth"

stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install "${PIP_FLAGS[@]}" --upgrade pip
  .venv/bin/python -m pip install "${PIP_FLAGS[@]}" -e ".[all,dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/python -c 'import torch, fedfleet; print(f"venv ready: torch {torch.__version__}, fedfleet {fedfleet.__version__}")'
