#!/usr/bin/env bash
# A real Flower deployment on this machine: one SuperLink and N SuperNodes as separate
# processes on 127.0.0.1 (free ports, TLS off, dependency installation disabled: the apps run
# in the Python environment of $PYTHON), `flwr run` of the app, then every process stopped
# (also on failure, timeout or Ctrl-C). Exits non-zero when the run fails, which `flwr run`
# alone does not.
#
#   experiments/flower_app/deploy_local.sh [APP_DIR] [N] [extra `robustagg flower --app` options]
#   experiments/flower_app/deploy_local.sh experiments/flower_app 6 --run-config num-server-rounds=2
#   experiments/flower_app/deploy_local.sh path/to/quickstart 3 --rule trimmed-mean --f 1
#
# APP_DIR defaults to this directory, N to 3; PYTHON to the interpreter on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
app="${1:-$here}"
n="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
root="$(cd "$here/../.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m robustagg.cli flower --app "$app" --deploy --num-supernodes "$n" "$@"
