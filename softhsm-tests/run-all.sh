#!/usr/bin/env bash
# Runs the whole test suite on real parts: SoftHSM2, swtpm (TPM 2.0), OpenSSL, SQLite, rustls.
# As root it installs missing Debian packages first; otherwise it says which are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# rsyslog + rsyslog-gnutls send syslog in softhsm-tests/syslog.rs; syslog-ng-core conflicts with rsyslog, so only its
# libraries are installed and the package is unpacked into /opt/syslog-ng-core (below).
# chromium, chromium-driver, libnss3-tools (certutil, pk12util): the console tests (softhsm-tests/console.rs); clang:
# ring's C parts in the console's WebAssembly build.
# postgresql: Debian 12's PostgreSQL 15 (initdb, pg_ctl, the `postgres` system user) for softhsm-tests/postgres.rs; the
# kit starts a server of its own per test, the cluster the package creates is not used.
packages=(softhsm2 opensc openssl curl python3 python3-cryptography pkg-config swtpm swtpm-tools tpm2-tools libtss2-dev prometheus
  clang chromium chromium-driver libnss3-tools postgresql
  rsyslog rsyslog-gnutls libivykis0 libnet1 libjson-c5 libpcre3 libwrap0 libcap2 libglib2.0-0 libssl3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "missing packages: ${missing[*]} (run as root to install them, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
if [ ! -x /usr/sbin/syslog-ng ] && [ ! -x "${SYSLOG_NG_ROOT:-/opt/syslog-ng-core}/usr/sbin/syslog-ng" ]; then
  if [ "$(id -u)" = 0 ]; then
    (cd "$(mktemp -d)" && apt-get download -qq syslog-ng-core && dpkg-deb -x syslog-ng-core_*.deb /opt/syslog-ng-core)
  else
    echo "syslog-ng is missing: apt-get download syslog-ng-core && dpkg-deb -x syslog-ng-core_*.deb /opt/syslog-ng-core" >&2
    exit 1
  fi
fi

# Every test makes its own token directory through the kit (softhsm-tests/kit/softhsm.rs); this fresh one is the
# fallback for anything that would load SoftHSM without one, so that nothing here reaches the system's tokens.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
  "$work/tokens" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
# libtss2 prints every failed TPM command to stderr; the TPM tests provoke many on purpose (TPM stopped, empty
# handle, wrong auth) and the backend reports them itself.
export TSS2_LOG="esys+none,tcti+none"

# The auditor's console, which softhsm-tests/console.rs drives in Chromium: built here, never committed
# (console/build.sh). It needs the wasm32 target and the wasm-bindgen-cli of Cargo.lock.
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
wasm_bindgen_version=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p}' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $wasm_bindgen_version"; then
  # Not --locked: the registry mirror lacks one of the tool's locked dependencies (see .ci/run).
  cargo install wasm-bindgen-cli --version "$wasm_bindgen_version"
fi
console/build.sh

# --workspace: the appliance and the pure core (core/), whose unit tests and golden vectors run here too.
if cargo nextest --version >/dev/null 2>&1; then
  # One process per test: C_Initialize is process-global, so this is what lets PKCS#11 tests run in parallel.
  cargo nextest run --no-fail-fast --workspace
else
  # Without nextest, tests share a process. The PKCS#11 token tests (target pkcs11) take kit::softhsm::module_lock
  # themselves; the library's unit tests keep running one at a time, as they always have.
  cargo test --workspace --lib -- --test-threads=1
  cargo test --workspace --bins --tests
fi
cargo test --workspace --doc
