#!/usr/bin/env bash
# An aarch64 Linux user space in which TVM's runtime runs under qemu-user, so that libraries
# cross-compiled for aarch64 are run and checked on this x86 machine (emulated: right
# answers, not a board's speed). Everything comes from the package registries: qemu-user and
# Debian's arm64 python3.11 with the libraries it links, and the aarch64 wheels of the
# apache-tvm version installed here and of its dependencies.
#
#   .ci/aarch64-sysroot.sh [DEST]     (default: $PRUNEPASS_CACHE or ~/.cache/prunepass,
#                                      then aarch64-sysroot; PYTHON: the venv's python)
# Does nothing when DEST is complete. Needs root for apt (as `make cross-compiler` does).
set -euo pipefail
cache=${PRUNEPASS_CACHE:-$HOME/.cache/prunepass}
dest=${1:-$cache/aarch64-sysroot}
python=${PYTHON:-.venv/bin/python}
[ -f "$dest/.complete" ] && exit 0

command -v qemu-aarch64 >/dev/null || {
  apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null; }
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi

debs="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1
      libstdc++6 libffi8 zlib1g libexpat1 libssl3 libbz2-1.0 liblzma5 libcrypt1 libuuid1
      libsqlite3-0 libtinfo6 libncursesw6 libdb5.3 libreadline8"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$dest.partial"' EXIT
download() { (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root \
                $(for d in $debs; do echo "$d:arm64"; done)); }
download || { apt-get update -qq && download; }  # stale package lists: refresh once

rm -rf "$dest.partial"
mkdir -p "$dest.partial/site"
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dest.partial"; done

# the runtime's wheels, at the versions the host's TVM speaks RPC with
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$python" -m pip download -q --no-deps --only-binary=:all: \
  --platform manylinux_2_28_aarch64 --python-version 3.11 -d "$tmp/wheels" \
  "apache-tvm==$(version apache-tvm)" "apache-tvm-ffi==$(version apache-tvm-ffi)" \
  numpy ml_dtypes typing_extensions psutil tornado cloudpickle
for whl in "$tmp"/wheels/*.whl; do "$python" -m zipfile -e "$whl" "$dest.partial/site"; done

touch "$dest.partial/.complete"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "aarch64 user space for qemu: $dest"
