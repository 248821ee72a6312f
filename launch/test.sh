#!/usr/bin/env bash
# The test command: set up the environment, then run the whole suite. Exit status is pytest's,
# except that "no tests collected" (5) counts as a failure.
# Two pytest workers (TIDAL_TEST_WORKERS, 0 = one process): most tests wait on process start-up
# (torch imports, process groups), so two workers fill 2 cores where one leaves them half idle.
# --dist loadfile keeps a file's tests, and its module-scoped reference runs, on one worker.
# --durations=25 lists the slowest tests at the end: what to look at when the suite grows.
set -euo pipefail
source "$(dirname "$0")/env.sh"
# Label Studio for tests/cycle/test_label_studio.py, in its own cached venv (never this one);
# built once, minutes; without network the test is skipped, saying why.
python tests/label_studio_server.py || echo "label-studio venv not built; its test will be skipped" >&2
set +e
python -m pytest tests -q -n "${TIDAL_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
