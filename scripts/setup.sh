#!/usr/bin/env bash
# Set up pyhv on a fresh Debian 12 machine: Debian packages, a CPython venv (.venv) and a
# PyPy venv (.venv-pypy, the fast runtime for the software CPU). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  python3-venv pypy3 pypy3-venv           # the two runtimes
  pypy3-dev                                # PyPy's headers: lz4's C extension builds against them
  binutils                                 # as/ld/objcopy build the test guests
  qemu-system-x86 qemu-utils               # peers and oracles in tests and benchmarks
  acpica-tools busybox-static cpio e2fsprogs lz4
  libvirt0                                 # libvirt's RelaxNG schemas (domain XML tests)
  iproute2                                 # network namespaces for the TAP test
  dnsmasq-base nftables passt              # virtual networks (DHCP/DNS, NAT) and user networking
)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test,fast]'
[ -x .venv-pypy/bin/python ] || pypy3 -m venv .venv-pypy
.venv-pypy/bin/pip install -q -e '.[test,fast]'
echo "pyhv is set up: .venv (CPython) and .venv-pypy (PyPy)"
