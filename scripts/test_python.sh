#!/usr/bin/env bash
# The Python package's test command: builds and installs `tpcomm` into the current Python environment against the torch
# installed there (pip, no build isolation, no downloads: works offline), then runs python/tests with pytest.
# GPU tests skip with the reason when there is no CUDA device. Exits non-zero when the build or any test fails, and
# when pytest collects no test at all (its exit code 5).
#   bash scripts/test_python.sh            # editable install (pip install -e), then pytest
#   bash scripts/test_python.sh -k symm    # arguments go to pytest
# Needs torch 2.11, scikit-build-core and pybind11 in the environment (.ci/run installs them from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# pytest on a machine without an index: wheels carried in .whl/pytest (pip download -d .whl/pytest pytest).
if ! python3 -c "import pytest" 2>/dev/null && [ -d .whl/pytest ]; then
  python3 -m pip install -q --no-index --find-links .whl/pytest pytest
fi
python3 -m pip install --no-build-isolation --no-deps -e . ${TPCOMM_PIP_QUIET:--q}
rc=0
python3 -m pytest -rs python/tests "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test_python.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
