#!/usr/bin/env bash
# The Autobahn TestSuite through wsgate, compared with the same suite run directly.
#
#   bash ci/autobahn.sh           # cases 1-13 without 9.*, 12.*, 13.* (about half a minute)
#   bash ci/autobahn.sh --full    # every case of 1-13 (about 40 minutes per run on 2 cores)
#   bash ci/autobahn.sh --cases '7.9.*,9.1.*'   # only these cases (the suite's patterns)
#
# Starts the suite's own testee server (echo + permessage-deflate, ci/autobahn_testee.py)
# and `wsgate run --routes` in front of it, both on loopback ports their processes bind
# themselves (port 0, then each reports the port it got: the testee in a file, wsgate in its
# "wsgate listening" log line), so no port is reserved and released. Then runs
# `wstest -m fuzzingclient` against the testee directly and through wsgate, and compares the
# two reports case by case (ci/autobahn_compare.py): exit 1 if any case is worse through
# wsgate. The reports (HTML and JSON) stay in .ci/cache/autobahn[-full]/{direct,wsgate}.
#
# Environment:
#   WSGATE_BIN       the gateway binary (default target/debug/wsgate; built if missing)
#   WSGATE_CI_CACHE  cache directory (default .ci/cache): the Python 2 virtualenv with the
#                    suite (ci/autobahn-requirements.txt), and the reports under autobahn/
#   PYTHON2          a CPython 2.7 interpreter (default: pyenv's 2.7.x, else python2.7)
set -euo pipefail
cd "$(dirname "$0")/.."

full=false
cases=""
while (($#)); do
  arg=$1
  shift
  case $arg in
    --full) full=true ;;
    --cases)
      cases=${1:?--cases needs a comma-separated list of case patterns}
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "autobahn.sh: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

# Absolute: wstest runs from the report directory.
CACHE=$(realpath -m "${WSGATE_CI_CACHE:-.ci/cache}")
WSGATE_BIN=${WSGATE_BIN:-target/debug/wsgate}
OUT=$CACHE/autobahn
if [[ -n $cases ]]; then
  OUT=$CACHE/autobahn-cases
elif [[ $full == true ]]; then
  OUT=$CACHE/autobahn-full
fi
REQUIREMENTS=ci/autobahn-requirements.txt
# How long a started process gets to report its port.
START_DEADLINE_SECS=30

pids=()
declare -A server_pid
stop_started() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_started EXIT
trap 'exit 130' INT TERM # through the EXIT trap

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

find_python2() {
  local candidate
  if [[ -n ${PYTHON2:-} ]]; then
    echo "$PYTHON2"
    return
  fi
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7 \
    /root/.pyenv/versions/2.7*/bin/python2.7 /opt/pyenv/versions/2.7*/bin/python2.7; do
    if [[ -x $candidate ]]; then
      echo "$candidate"
      return
    fi
  done
  command -v python2.7 || {
    echo "autobahn.sh: no CPython 2.7 found (set PYTHON2)" >&2
    return 1
  }
}

# The suite is Python 2 code; virtualenv 20.21.1 (run by Python 3) still makes 2.7
# environments. Reused while ci/autobahn-requirements.txt is unchanged.
ensure_venv() {
  local venv=$CACHE/autobahn-venv stamp want python2 bootstrap=$CACHE/autobahn-bootstrap
  stamp=$venv/.requirements.sha256
  want=$(sha256_of "$REQUIREMENTS")
  if [[ -x $venv/bin/wstest && -f $stamp && $(<"$stamp") == "$want" ]]; then
    return
  fi
  python2=$(find_python2)
  echo "== Python 2 virtualenv for the Autobahn TestSuite ($python2)"
  rm -rf "$venv"
  if [[ ! -x $bootstrap/bin/virtualenv ]]; then
    python3 -m venv "$bootstrap"
    "$bootstrap/bin/pip" install --quiet --disable-pip-version-check virtualenv==20.21.1
  fi
  "$bootstrap/bin/virtualenv" --quiet -p "$python2" "$venv"
  PYTHONWARNINGS=ignore "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-python-version-warning -r "$REQUIREMENTS"
  PYTHONWARNINGS=ignore "$venv/bin/pip" check --no-python-version-warning
  echo "$want" >"$stamp"
}

# wait_for NAME PID COMMAND...: polls COMMAND (which prints what it found) until it
# succeeds; fails if process PID exits first or after START_DEADLINE_SECS.
wait_for() {
  local name=$1 pid=$2 deadline=$((SECONDS + START_DEADLINE_SECS))
  shift 2
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "autobahn.sh: $name exited while starting; its output:" >&2
      tail -20 "$OUT/$name.log" >&2
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "autobahn.sh: $name did not start within ${START_DEADLINE_SECS}s" >&2
      return 1
    fi
    sleep 0.1
  done
}

testee_port() { [[ -s $OUT/testee.port ]] && cat "$OUT/testee.port"; }

# The address in wsgate's JSON "wsgate listening" line (it binds 127.0.0.1:0 itself).
wsgate_addr() {
  python3 - "$OUT/wsgate.log" <<'EOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if event.get("message") == "wsgate listening":
        print(event["listen"])
        sys.exit(0)
sys.exit(1)
EOF
}

# fuzzingclient AGENT URL: runs the suite against URL; the report lands in $OUT/AGENT.
fuzzingclient() {
  local agent=$1 url=$2 started pid
  python3 - "$OUT/$agent.spec.json" "$agent" "$url" "$OUT/$agent" "$full" "$cases" <<'EOF'
import json, sys
path, agent, url, outdir, full, cases = sys.argv[1:]
spec = {
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": cases.split(",") if cases else ["*"],
    # 9.* (performance), 12.* and 13.* (compression under load) are 270 of the 517 cases
    # and nearly all of the time; the other 247 check every framing and close rule.
    "exclude-cases": [] if full == "true" or cases else ["9.*", "12.*", "13.*"],
    "exclude-agent-cases": {},
}
json.dump(spec, open(path, "w"), indent=2)
EOF
  echo "== fuzzingclient: $agent ($url)"
  started=$SECONDS
  (cd "$OUT" && PYTHONWARNINGS=ignore exec "$CACHE/autobahn-venv/bin/wstest" \
    -m fuzzingclient -s "$agent.spec.json") >"$OUT/wstest-$agent.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  if ! wait "$pid"; then
    echo "autobahn.sh: wstest ($agent) failed; its output:" >&2
    tail -20 "$OUT/wstest-$agent.log" >&2
    return 1
  fi
  unset 'pids[-1]' # reaped: never signal a PID that may be reused
  # wstest exits 0 without a report when its server vanished mid-run.
  if [[ ! -s $OUT/$agent/index.json ]]; then
    echo "autobahn.sh: wstest ($agent) wrote no report; its output:" >&2
    tail -5 "$OUT/wstest-$agent.log" >&2
    return 1
  fi
  local name
  for name in testee wsgate; do
    if ! kill -0 "${server_pid[$name]}" 2>/dev/null; then
      echo "autobahn.sh: $name died during the $agent run; its output:" >&2
      tail -5 "$OUT/$name.log" >&2
      return 1
    fi
  done
  echo "   $((SECONDS - started)) s"
}

ensure_venv
if [[ ! -x $WSGATE_BIN ]]; then
  echo "== build $WSGATE_BIN"
  cargo build --locked --quiet
fi

rm -rf "$OUT"
mkdir -p "$OUT"

echo "== testee server (the suite's own, echo + permessage-deflate)"
PYTHONWARNINGS=ignore "$CACHE/autobahn-venv/bin/python" ci/autobahn_testee.py "$OUT/testee.port" \
  >"$OUT/testee.log" 2>&1 &
pids+=("$!")
server_pid[testee]=$!
wait_for testee "$!" testee_port >/dev/null
testee=127.0.0.1:$(testee_port)
echo "   $testee"

echo "== wsgate in front of it ($WSGATE_BIN)"
cat >"$OUT/routes.yaml" <<EOF
apiVersion: wsgate.io/v1alpha1
kind: WsRoute
metadata:
  name: autobahn-testee
spec:
  upstreamPathTemplate: /{everything}
  downstreamPathTemplate: /{everything}
  downstreamHostAndPorts:
    - {host: 127.0.0.1, port: ${testee#*:}}
EOF
"$WSGATE_BIN" --log-format json run --routes "$OUT/routes.yaml" \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$OUT/wsgate.log" 2>&1 &
pids+=("$!")
server_pid[wsgate]=$!
wait_for wsgate "$!" wsgate_addr >/dev/null
gateway=$(wsgate_addr)
echo "   $gateway"

started=$SECONDS
fuzzingclient direct "ws://$testee"
fuzzingclient wsgate "ws://$gateway"
echo "== compare (reports: $OUT/direct/index.html, $OUT/wsgate/index.html; both runs $((SECONDS - started)) s)"
python3 ci/autobahn_compare.py "$OUT/direct" "$OUT/wsgate"
