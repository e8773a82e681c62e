#!/usr/bin/env bash
# Installs what the dashboard's browser test needs (market/tests/devnet.rs runs
# scripts/dashboard-check.py): Debian's Chromium and Python's Playwright (the driver only; it is
# pointed at the system Chromium, so nothing is downloaded by Playwright itself).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no Chromium and no apt-get: install Chromium and set CHROMIUM=/path/to/it" >&2
    exit 1
  fi
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q chromium >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check playwright==1.58.0
echo "install-browser: $(chromium --version 2>/dev/null || chromium-browser --version), playwright $(python3 -c 'import importlib.metadata as m; print(m.version("playwright"))')"
