#!/usr/bin/env bash
# Open MPI remote-shell agent for the multihost test (tests/multihost/run.sh):
# instead of ssh'ing to a host, it runs the command inside the host's network
# namespace. mpirun calls it as
#   ns-agent.sh [options] HOST COMMAND...
# (through --mca plm_rsh_agent), exactly as it would call ssh. The map from
# host (the address given to --host) to namespace comes from the environment:
#   GRADACC_MH_HOSTS="10.231.7.2=gradacc-mh-123-a 10.231.7.3=gradacc-mh-123-b"
# Each launch is logged to $GRADACC_MH_AGENT_LOG when set. Needs root
# (ip netns exec, unshare --uts).
set -euo pipefail
# ssh-style options (none are expected from Open MPI for a non-ssh agent).
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
if [[ $# -lt 2 ]]; then
  echo "ns-agent: usage: ns-agent.sh HOST COMMAND..." >&2
  exit 255
fi
host="$1"
shift
ns=""
for pair in ${GRADACC_MH_HOSTS:-}; do
  if [[ "${pair%%=*}" == "$host" ]]; then ns="${pair#*=}"; fi
done
if [[ -z "$ns" ]]; then
  echo "ns-agent: unknown host '$host' (GRADACC_MH_HOSTS='${GRADACC_MH_HOSTS:-}')" >&2
  exit 255
fi
if [[ -n "${GRADACC_MH_AGENT_LOG:-}" ]]; then
  echo "host $host -> netns $ns: $*" >>"$GRADACC_MH_AGENT_LOG"
fi
# Like sshd, hand the command line to a shell on the "remote" host. The host
# also gets its own hostname (a UTS namespace named like the netns): Open MPI
# names its session folders (/tmp/ompi.HOSTNAME.UID) and shared-memory
# segments after the hostname, and hosts that share /tmp and /dev/shm under
# one name would collide.
# shellcheck disable=SC2016  # $0 and $1 are the inner shell's
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$ns" "$*"
