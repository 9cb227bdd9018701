#!/usr/bin/env bash
# Run the whole test suite (all packages, the server and the end-to-end tests).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k tokenizer`.
source "$(dirname "$0")/env.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python -m pytest "$@"
