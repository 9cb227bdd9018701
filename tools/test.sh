#!/usr/bin/env bash
# Run the whole test suite (all packages, the server and the end-to-end tests).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k tokenizer`.
source "$(dirname "$0")/env.sh"
# The chat page's browser test drives Debian's chromium. Install it when it is missing and this shell
# may (root with apt-get, as in CI); otherwise that test is skipped with the reason.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser test" >&2
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "could not install chromium; the browser test will be skipped" >&2
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python -m pytest "$@"
