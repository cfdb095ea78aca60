#!/usr/bin/env bash
# Runs the offline deployment validation (tests/deploy/validate.mjs) after
# installing its npm packages from the lock file when missing, then checks
# the ConfigMap's job spec with gradacc-server's own parser.
#   tests/deploy/validate.sh PATH/TO/gradacc-server
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
server="$(realpath "$1")"
cd "$here"
if [[ ! -d node_modules/kubernetes-models ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
out="$(node validate.mjs "$here/../../deploy")"
echo "$out" | sed '/^JOB-SPEC-BEGIN$/,/^JOB-SPEC-END$/d'
job="$(mktemp --suffix=.textproto)"
trap 'rm -f "$job"' EXIT
echo "$out" | sed -n '/^JOB-SPEC-BEGIN$/,/^JOB-SPEC-END$/p' | sed '1d;$d' >"$job"
"$server" --job="$job" --check_job

# The validator must also say no: a copy with a wrong field type, a missing
# health check and a root user is rejected.
broken="$(mktemp -d)"
trap 'rm -f "$job"; rm -rf "$broken"' EXIT
cp -r "$here/../../deploy/." "$broken/"
sed -i 's/containerPort: 7070/containerPort: "seven"/' "$broken/k8s/server.yaml"
sed -i '/^HEALTHCHECK/,+1d; s/^USER gradacc/USER root/' "$broken/Dockerfile"
if node validate.mjs "$broken" >"$broken/out.txt" 2>&1; then
  echo "deploy: the validator accepted broken files" >&2
  exit 1
fi
grep -q 'INVALID.*StatefulSet.*schema' "$broken/out.txt"
grep -q 'INVALID Dockerfile: the health check' "$broken/out.txt"
grep -q 'INVALID Dockerfile: must run as a non-root user' "$broken/out.txt"
echo "deploy: broken copies are rejected"
