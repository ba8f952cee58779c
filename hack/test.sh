#!/usr/bin/env bash
# `make test`'s pytest step: the suite in two lanes that run at the same time.
#
#   lane 1: tests/unit, then tests/integration, against the shared sim-mode control plane (`hack/local-cluster.sh`);
#   lane 2: tests/e2e, real Ray in process mode, each module on a private control plane of its own.
#
# The Helm e2e module (a private process-mode control plane too) runs at the end of lane 1, which is the shorter.
#
# The lanes share no cluster, namespace or port, and most of their time is spent waiting (for Ray to start, for
# pods, for deadlines), so together they take about as long as the longer one. Lane 1 prints as it goes; lane 2's
# output is kept in a file and printed when both are done, followed by both summaries, so the end of the output
# says what failed. RAYOP_TEST_LANES=1 runs everything in one pytest, one test at a time. Arguments go to pytest.
#
# Helm (for the chart's tests) is built here in the background when its cache is cold (about 6 minutes of Go build,
# which would otherwise run before any test): its users, tests/unit/test_chart.py (run last in lane 2) and the
# Helm e2e module (last in lane 1), call hack/build-helm.sh, which waits on the same lock and then finds the binary.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo"
pytest=.venv/bin/pytest

if [ "${RAYOP_TEST_LANES:-2}" = 1 ]; then
  exec "$pytest" tests "$@"
fi

e2e_log=$(mktemp /tmp/rayop-e2e-lane.XXXXXX)
rest_log=$(mktemp /tmp/rayop-rest-lane.XXXXXX)
helm_log=$(mktemp /tmp/rayop-helm-build.XXXXXX)
trap 'rm -f "$e2e_log" "$rest_log" "$helm_log"' EXIT
start=$(date +%s)
nice -n 10 hack/build-helm.sh >"$helm_log" 2>&1 &
"$pytest" tests/e2e --ignore=tests/e2e/test_helm_process_mode.py tests/unit/test_chart.py "$@" >"$e2e_log" 2>&1 &
e2e_pid=$!
"$pytest" tests/unit tests/integration tests/e2e/test_helm_process_mode.py --ignore=tests/unit/test_chart.py "$@" \
  2>&1 | tee "$rest_log"
rest_rc=${PIPESTATUS[0]}
rest_s=$(( $(date +%s) - start ))
wait "$e2e_pid"
e2e_rc=$?
e2e_s=$(( $(date +%s) - start ))

echo
echo "helm: $(grep -E 'helm built in|^/' "$helm_log" | head -1)"
echo "==================================== lane 2: tests/e2e ===================================="
cat "$e2e_log"
summary() {  # the last line pytest printed: "N passed, M failed in ..."
  grep -E '(passed|failed|error|deselected|no tests ran).* in [0-9.]+s' "$1" | tail -1
}
echo
echo "lane 1 (unit, integration): exit $rest_rc after ${rest_s}s  $(summary "$rest_log")"
echo "lane 2 (e2e):               exit $e2e_rc after ${e2e_s}s  $(summary "$e2e_log")"
if [ "$rest_rc" -ne 0 ] || [ "$e2e_rc" -ne 0 ]; then
  echo "failed tests:"
  grep -hE '^(FAILED|ERROR) ' "$rest_log" "$e2e_log" || true
  exit 1
fi
