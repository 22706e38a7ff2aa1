#!/usr/bin/env bash
# The whole test suite, from a bare Debian 12 machine (as root): install what the tests
# need (Debian packages, the project venv), then run every test. This is the README's
# test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-test-deps.sh
export PATH="/usr/sbin:/usr/bin:$PATH"
.venv/bin/python -m ruff check listgate tests setup.py
.venv/bin/python -m mypy --strict listgate
# The unit tests on the sources too (LISTGATE_PURE=1): where no compiler was available at
# install, listgate runs them uncompiled (docs/architecture.md, "The compiled core").
LISTGATE_PURE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit
exec .venv/bin/python -m pytest -q "$@"
