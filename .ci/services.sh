#!/usr/bin/env bash
# Installs and starts what the integration tests need. Idempotent: reuses what answers.
# Writes the addresses to .ci/.env for .ci/run (and a developer) to source.
set -euo pipefail
cd "$(dirname "$0")/.."
: > .ci/.env
echo "ok: nothing else needed yet"
