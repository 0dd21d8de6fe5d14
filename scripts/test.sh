#!/usr/bin/env bash
# The test command: the whole suite on CPython, then again on PyPy, in parallel workers.
# Long runs are marked `slow` and excluded here; run them with: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
workers="${PYHV_TEST_WORKERS:-2}"
echo "== CPython: $(.venv/bin/python --version)"
.venv/bin/python -m pytest -n "$workers" -q "$@" tests
echo "== PyPy: $(.venv-pypy/bin/python --version 2>&1 | tail -1)"
.venv-pypy/bin/python -m pytest -n "$workers" -q "$@" tests
