#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, linters included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
    echo 'test.sh: pytest collected no tests; that is a failure here' >&2
    exit 1
fi
exit $rc
