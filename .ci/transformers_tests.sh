#!/usr/bin/env bash
# Unpack the model tests of the transformers installed for PYTHON (default python3), from its source
# distribution on PyPI, where tests/test_transformers_suite.py reads them:
# ${TXKIT_TRANSFORMERS_TESTS:-~/.cache/txkit/transformers-tests}/<version>/. They are transformers' code, so
# they are fetched, not kept in this repository. Does nothing when they are already there.
set -euo pipefail
python=${1:-python3}
version=$("$python" -c 'import transformers; print(transformers.__version__)')
dest=${TXKIT_TRANSFORMERS_TESTS:-$HOME/.cache/txkit/transformers-tests}/$version
[ -f "$dest/test_modeling_common.py" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "transformers==$version"
tar -xzf "$tmp/transformers-$version.tar.gz" -C "$tmp" "transformers-$version/tests"
mkdir -p "$tmp/unpacked" "$(dirname "$dest")"
cp "$tmp/transformers-$version/tests/"*.py "$tmp/unpacked/"
rm -rf "$dest" && mv "$tmp/unpacked" "$dest"  # complete or absent, never half-written
