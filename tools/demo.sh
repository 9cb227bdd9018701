#!/usr/bin/env bash
# The end-to-end demo: fetch a bilingual corpus, train a tokenizer, pack, pretrain, fine-tune,
# generate, and leave a model in runs/demo/model for `flask --app apps/server run`.
# Extra arguments go to tools/demo.py, e.g. `bash tools/demo.sh --corpus ~/my-texts`.
source "$(dirname "$0")/env.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python tools/demo.py "$@"
