#!/bin/sh
# Container entry point: the first argument names what to run, the rest are its flags.
#   queue | orchestrator | workspace | persistence   -> python -m agentgate.<service>
#   healthcheck                                      -> python -m agentgate.common.healthcheck
#   agentgate                                        -> the CLI
set -eu
what="${1:-}"
[ "$#" -gt 0 ] && shift
case "$what" in
  queue|orchestrator|workspace|persistence) exec python -m "agentgate.$what" "$@" ;;
  healthcheck) exec python -m agentgate.common.healthcheck "$@" ;;
  agentgate) exec agentgate "$@" ;;
  *)
    echo "usage: <queue|orchestrator|workspace|persistence|healthcheck|agentgate> [flags]" >&2
    exit 2
    ;;
esac
