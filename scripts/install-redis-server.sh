#!/usr/bin/env bash
# Install Debian's redis-server for the networked KV store's tests and benchmarks (make install).
# Idempotent and best effort: it never fails the build. Without apt-get, root or a package
# mirror it prints why, and the Redis tests skip with a message saying so. The package's own
# service is not started (policy-rc.d for the duration of the install): tests and benchmarks
# start their own servers on free ports.
set -u
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "note: redis-server is not installed and apt-get as root is not available;" \
       "the Redis KV store tests will skip (install it with: apt-get install redis-server)"
  exit 0
fi
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1; then
  apt-get update -q >/dev/null 2>&1
  apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 \
    || echo "warning: apt-get could not install redis-server; the Redis KV store tests will skip"
fi
if [ "$made_policy" = 1 ]; then
  rm -f "$policy"
fi
exit 0
