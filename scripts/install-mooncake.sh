#!/usr/bin/env bash
# Install Mooncake's transfer engine (`--transfer mooncake`, `bench transfer --mooncake`) into
# the venv given as $1, plus Debian's libibverbs1 that its wheel links even for TCP.
# Idempotent and best effort: it never fails the build; without it the Mooncake tests skip
# with a message saying so.
set -u
py="${1:-.venv/bin/python}"
if ! ldconfig -p 2>/dev/null | grep -q libibverbs.so.1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends libibverbs1 >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1;
           apt-get install -y -q --no-install-recommends libibverbs1 >/dev/null 2>&1; } \
      || echo "warning: apt-get could not install libibverbs1; the Mooncake tests will skip"
  else
    echo "note: libibverbs1 is missing and apt-get as root is not available;" \
         "the Mooncake tests will skip (apt-get install libibverbs1)"
  fi
fi
"$py" -m pip install --quiet 'mooncake-transfer-engine-non-cuda==0.3.13.post1' >/dev/null 2>&1 \
  || echo "warning: pip could not install mooncake-transfer-engine-non-cuda; the Mooncake tests will skip"
exit 0
