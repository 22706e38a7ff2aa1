#!/usr/bin/env bash
# Install everything listgate's test suite needs on a fresh Debian machine (as root):
# Postfix (private instances are started by the tests), OpenDKIM's miltertest, swaks,
# systemd-analyze and m4 (to check the deploy/ files), mandoc (to lint the man pages),
# redis-server (the suite starts its own instances; the package's service is not used),
# and listgate itself with its test extras (into ./.venv). Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/postfix ] || need_apt+=(postfix)
[ -x /usr/bin/miltertest ] || need_apt+=(miltertest)
[ -x /usr/bin/swaks ] || need_apt+=(swaks)
[ -x /usr/bin/script ] || need_apt+=(bsdutils)
[ -x /usr/bin/systemd-analyze ] || need_apt+=(systemd)  # tests/e2e/test_deploy.py
[ -x /usr/bin/m4 ] || need_apt+=(m4)                    # deploy/sendmail/listgate.mc
[ -x /usr/bin/mandoc ] || need_apt+=(mandoc)            # man/*: mandoc -T lint
# require_authenticated tests: an authoritative DNS server the suite starts on a free
# loopback port with its own config (tests/dns_server.py), OpenDKIM as an upstream milter
# (tests/e2e/test_postfix_auth.py), openssl for dkimpy's key generation. Their Debian
# services are never used (in a container policy-rc.d keeps them from starting; they
# would listen on port 53 / a unix socket, never on the suite's ports).
[ -x /usr/sbin/nsd ] || need_apt+=(nsd)
[ -x /usr/sbin/opendkim ] || need_apt+=(opendkim)
[ -x /usr/bin/openssl ] || need_apt+=(openssl)
[ -x /usr/bin/redis-server ] || need_apt+=(redis-server)  # tests/redis_harness.py
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# `pip install .` compiles listgate's core with mypyc (setup.py): a C compiler and
# Python's headers (without them it would install pure Python, and a test fails).
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
python3 -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks debconf questions on install; answer "No configuration": the tests
  # write their own main.cf for each private instance.
  printf '%s\n' \
    'postfix postfix/main_mailer_type select No configuration' \
    'postfix postfix/mailname string localhost' | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  # The suite runs its own nsd and opendkim: stop the Debian services if the install
  # started them (where no policy-rc.d forbade it).
  for svc in nsd opendkim; do
    if printf '%s\n' "${need_apt[@]}" | grep -qx "$svc"; then
      invoke-rc.d "$svc" stop >/dev/null 2>&1 || true
    fi
  done
fi

# listgate and its test tools go into a project venv (.venv), never the system Python.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# Coverage-guided fuzzing (fuzz/*.py; tests/reliability/test_fuzz_smoke.py runs each harness
# briefly): atheris ships manylinux wheels for CPython 3.11, so no clang is needed. Only if
# pip cannot find a wheel does it build from source, which needs Debian's clang.
if ! .venv/bin/python -c 'import atheris' 2>/dev/null; then
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check --only-binary=:all: \
      'atheris>=2.3,<4'; then
    if ! command -v clang >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q
      apt-get install -y -q --no-install-recommends clang libclang-rt-dev 2>/dev/null \
        || apt-get install -y -q --no-install-recommends clang
    fi
    CLANG_BIN="$(command -v clang)" .venv/bin/python -m pip install -q \
      --disable-pip-version-check 'atheris>=2.3,<4'
  fi
fi

# GNU Mailman 3 core for tests/mailman: a separate venv (default .venv-mailman, override with
# LISTGATE_MAILMAN_VENV, relative to the repo root), so Mailman's pinned dependency set never
# mixes with listgate's. Rebuilt from scratch only when missing, broken, or when
# .ci/requirements-mailman.txt or python3 changed (a hash of both is stored in the venv after
# a successful install); otherwise this costs a few milliseconds.
mm_venv="${LISTGATE_MAILMAN_VENV:-.venv-mailman}"
mm_req=.ci/requirements-mailman.txt
mm_hash="$( { cat "$mm_req"; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
mm_stamp="$mm_venv/.listgate-requirements.sha256"
if [ ! -x "$mm_venv/bin/runner" ] || [ "$(cat "$mm_stamp" 2>/dev/null)" != "$mm_hash" ] \
   || ! "$mm_venv/bin/python" -c '' 2>/dev/null; then
  rm -f "$mm_stamp"
  python3 -m venv --clear "$mm_venv"
  "$mm_venv/bin/python" -m pip install -q --disable-pip-version-check -r "$mm_req"
  printf '*\n' > "$mm_venv/.gitignore"
  printf '%s\n' "$mm_hash" > "$mm_stamp"
fi

# Benchmark dependencies (tests/test_benchmarks_smoke.py runs benchmarks/milter_load.py
# --smoke): libmilter-dev (the C compiler is there already) to build pymilter, then listgate's [bench]
# extra (pymilter, uvloop, py-spy) into the project venv. Skipped when already there.
if ! .venv/bin/python -c 'import milter, uvloop' 2>/dev/null; then
  bench_apt=()
  [ -e /usr/include/libmilter/mfapi.h ] || bench_apt+=(libmilter-dev)
  if [ ${#bench_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${bench_apt[@]}"
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
fi

# ---- Exim and Sendmail (tests/e2e/test_exim_*.py, test_sendmail_*.py) ----
# Debian's exim4-daemon-light and sendmail-bin conflict with the postfix package, so they
# are never installed: their .debs, plus the libraries they link that this machine lacks
# (libidn12, libwrap0 on a Postfix host), are unpacked with dpkg -x into .cache/mta/root
# (gitignored). The tests run private instances from there in their own mount+UTS
# namespaces (unshare, util-linux) and watch them with strace. Done again only when the
# prefix is incomplete (rm -rf .cache/mta to fetch newer versions).
[ -x /usr/bin/strace ] || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends strace
}
mta_prefix=.cache/mta
if [ ! -f "$mta_prefix/.complete" ] || [ ! -x "$mta_prefix/root/usr/sbin/exim4" ] \
   || [ ! -x "$mta_prefix/root/usr/libexec/sendmail/sendmail" ] \
   || [ ! -f "$mta_prefix/root/usr/share/sendmail/cf/m4/cf.m4" ]; then
  rm -rf "$mta_prefix"
  mkdir -p "$mta_prefix/debs" "$mta_prefix/root"
  mta_pkgs=(exim4-daemon-light sendmail-bin sendmail-base sendmail-cf)
  apt-cache show "${mta_pkgs[@]}" >/dev/null 2>&1 || apt-get update -q
  mta_libs=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances exim4-daemon-light sendmail-bin \
    | awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}' | sort -u)
  for lib in $mta_libs; do
    dpkg-query -W -f='${Status}\n' "$lib" 2>/dev/null | grep -q 'ok installed' \
      || mta_pkgs+=("$lib")
  done
  # apt's _apt user cannot write into the repo: download in a dir it may use.
  mta_dl=$(mktemp -d)
  chmod 755 "$mta_dl"
  chown _apt "$mta_dl" 2>/dev/null || true
  (cd "$mta_dl" && apt-get download -q "${mta_pkgs[@]}")
  mv "$mta_dl"/*.deb "$mta_prefix/debs/"
  rmdir "$mta_dl"
  for deb in "$mta_prefix"/debs/*.deb; do dpkg -x "$deb" "$mta_prefix/root"; done
  (cd "$mta_prefix/debs" && ls) > "$mta_prefix/.complete"
fi
