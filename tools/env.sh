# Create or refresh the workspace virtual environment in .venv, then activate it.
# Sourced by tools/demo.sh and tools/test.sh. The environment is rebuilt only when
# requirements-dev.txt or a package's pyproject.toml changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ASTRAI_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

stamp_inputs() {
    cat "$ROOT/requirements-dev.txt" "$ROOT"/packages/*/pyproject.toml "$ROOT"/apps/*/pyproject.toml
}

wanted="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.astrai-stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "Setting up the Python environment in $VENV (first run takes about a minute)..." >&2
    "$PYTHON" -m venv "$VENV"
    (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt)
    echo "$wanted" > "$VENV/.astrai-stamp"
fi

# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$ROOT"
