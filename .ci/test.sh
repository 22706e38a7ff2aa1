#!/usr/bin/env bash
# The whole test suite, from a bare Debian 12 machine (as root): install what the tests
# need (Debian packages, the project venv), then run every test. This is the README's
# test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-test-deps.sh
export PATH="/usr/sbin:/usr/bin:$PATH"
.venv/bin/python -m ruff check listgate tests
.venv/bin/python -m mypy --strict listgate
exec .venv/bin/python -m pytest -q "$@"
