#!/usr/bin/env bash
# Install everything listgate's test suite needs on a fresh Debian machine (as root):
# Postfix (private instances are started by the tests), OpenDKIM's miltertest, swaks,
# and listgate itself with its test extras. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v postfix >/dev/null 2>&1 || need_apt+=(postfix)
command -v miltertest >/dev/null 2>&1 || need_apt+=(miltertest)
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks debconf questions on install; answer "No configuration": the tests
  # write their own main.cf for each private instance.
  printf '%s\n' \
    'postfix postfix/main_mailer_type select No configuration' \
    'postfix postfix/mailname string localhost' | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
