#!/usr/bin/env bash
# The one command for a lent GPU machine (one H100 / H200, no network, at most ~8 minutes): random
# full-size LLaDA-8B and Dream-7B in bf16 on the GPU, then one table (sampler throughput against
# the reference loop, one RL round per phase with its peak memory beside the memory plan, scoring
# memory at the real vocabulary), printed and written to bench/results/gpu_check.md (+ .json).
# Parts that do not fit are skipped with the reason. Without a GPU it runs the CPU smoke configuration.
#
#   bash bench/gpu_check.sh              # on the GPU machine
#   bash bench/gpu_check.sh --smoke      # CPU, under a minute (CI runs this)
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --only llada --out /tmp/check.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu_check.py "$@"
