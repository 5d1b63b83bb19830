#!/usr/bin/env bash
# Runs the digest workflow end to end on one machine: local stand-in servers (HTTP API,
# OpenAI-compatible LLM, MCP server), `agentbus serve --executors agents.yaml`, then
# `agentbus workflow run digest.yaml --wait`; prints the run and stops everything it started.
#
#   bash deploy/examples/executors/run.sh [TOPIC]
#
# Needs the agentbus command (the repository's venv: `. .venv/bin/activate`). Ports: 9180-9182
# for the stand-ins, 8080 for agentbus (AGENTBUS_PORT to change it); data in a temporary directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
topic="${1:-agents}"
data="$(mktemp -d)"
export AGENTBUS_PORT="${AGENTBUS_PORT:-8080}"
export AGENTBUS_URL="http://127.0.0.1:${AGENTBUS_PORT}"
# The executors' secrets, as references in agents.yaml resolve them (the stand-ins accept any).
export DIGEST_API_TOKEN="example-token" DIGEST_LLM_KEY="example-key"
pids=()
cleanup() {  # agentbus first, then the servers its executors talk to
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT

python -m services.executors.standins --http 9180 --openai 9181 --mcp 9182 &
pids+=($!)
agentbus serve --data-dir "$data" --executors "$here/agents.yaml" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf "$AGENTBUS_URL/v1/agents/tools" >/dev/null 2>&1 && break
  sleep 0.2
done
run="digest-$$"
agentbus workflow run "$here/digest.yaml" --id "$run" --input "topic=$topic" --wait
agentbus workflow show "$run"     # every step: its agent, attempts, result (the LLM's answer, the tool's)
curl -s "$AGENTBUS_URL/v1/costs/summary"; echo   # the LLM call's tokens, priced, recorded by the executor
