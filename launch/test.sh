#!/usr/bin/env bash
# The test command: set up the environment, then run the whole suite. Exit status is pytest's,
# except that "no tests collected" (5) counts as a failure.
set -euo pipefail
source "$(dirname "$0")/env.sh"
set +e
python -m pytest tests -q "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
