#!/bin/sh
# Runs the test command N times in a row on the current tree while a CPU burner (one busy loop
# per core) competes with it, and prints each run's result and duration: the check that the
# suite synchronises on events, not on timers that a busy machine makes late.
#
#   sh scripts/stress-suite.sh [-n N] [-j LOOPS] [-- COMMAND ARGS...]
#
#   -n N      runs (default 5)
#   -j LOOPS  busy loops (default: one per core, `nproc`)
#   COMMAND   what to run (default: npm test); e.g. -- node --test dist/test/unit/preload.test.js
#
# The burner is bounded twice: every loop runs under `timeout` (STRESS_BURN_MAX_S, default 2 h)
# and is killed by a trap when this script exits, however it exits. Each run's output goes to a
# log file (the path is printed); the exit status is 0 only if every run passed.
set -u
cd "$(dirname "$0")/.."

runs=5
loops=$(nproc 2>/dev/null || echo 2)
while [ $# -gt 0 ]; do
  case $1 in
    -n) runs=${2:?-n needs a number}; shift 2 ;;
    -j) loops=${2:?-j needs a number}; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "stress-suite: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
case $runs in ''|*[!0-9]*|0) echo "stress-suite: -n wants a positive number, not '$runs'" >&2; exit 64 ;; esac
case $loops in ''|*[!0-9]*) echo "stress-suite: -j wants a number, not '$loops'" >&2; exit 64 ;; esac
[ $# -gt 0 ] || set -- npm test

logdir=$(mktemp -d "${TMPDIR:-/tmp}/stress-suite.XXXXXX")
burners=""
stop_burners() {
  for pid in $burners; do kill "$pid" 2>/dev/null; done
  for pid in $burners; do wait "$pid" 2>/dev/null; done
  burners=""
}
trap 'stop_burners' EXIT
trap 'stop_burners; exit 130' INT
trap 'stop_burners; exit 143' TERM

i=0
while [ "$i" -lt "$loops" ]; do
  timeout "${STRESS_BURN_MAX_S:-7200}" sh -c 'while :; do :; done' &
  burners="$burners $!"
  i=$((i + 1))
done
echo "stress-suite: $loops busy loop(s) running (pids$burners); $runs run(s) of: $*; logs in $logdir"

now() { date +%s.%N; }
passed=0
failed=0
n=1
while [ "$n" -le "$runs" ]; do
  log="$logdir/run-$n.log"
  t0=$(now)
  "$@" >"$log" 2>&1
  rc=$?
  secs=$(echo "$(now) $t0" | awk '{ printf "%.1f", $1 - $2 }')
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "run $n/$runs: pass in ${secs} s"
  else
    failed=$((failed + 1))
    echo "run $n/$runs: FAIL (exit $rc) in ${secs} s; log: $log"
    # The failing tests' names, as node's test runner prints them.
    grep -E '^[[:space:]]*(not ok |✖ )' "$log" | head -20 | sed 's/^/    /'
  fi
  n=$((n + 1))
done
stop_burners
echo "stress-suite: $passed of $runs run(s) passed under load; logs in $logdir"
[ "$failed" -eq 0 ]
