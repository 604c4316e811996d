#!/usr/bin/env bash
# The README's test command: installs what the test suite drives (Debian
# packages, and Garage at a pinned version for the object-store tests),
# skipping whatever is already there, then runs the whole suite.
#
#   ./scripts/test.sh                 # set up, then cargo test --workspace --locked
#   ./scripts/test.sh --setup-only    # only the set-up (.ci/run does this before clippy)
#   ./scripts/test.sh -- ARGS…        # ARGS go to cargo test (a filter, --no-fail-fast, …)
#
# Installing needs root (or sudo); with everything present it needs neither.
set -euo pipefail
cd "$(dirname "$0")/.."

setup_only=no
cargo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --setup-only) setup_only=yes ;;
    --) shift; cargo_args=("$@"); break ;;
    *) echo "usage: $0 [--setup-only] [-- CARGO_TEST_ARGS…]" >&2; exit 2 ;;
  esac
  shift
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "test.sh: installing needs root: run it as root, or install: $*" >&2
    exit 1
  fi
}

export DEBIAN_FRONTEND=noninteractive
# What the tests use, by the command that shows it is there.
need=()
command -v mount >/dev/null || need+=(mount)                    # tmpfs for the full-disk test
command -v ssh >/dev/null || need+=(openssh-client)             # the grid's end-to-end tests
command -v fusermount3 >/dev/null || need+=(fuse3)              # FUSE mounts
[ -x /bin/busybox ] || need+=(busybox-static)                   # the roots environments run
command -v tar >/dev/null || need+=(tar)
command -v zstd >/dev/null || need+=(zstd)                      # an OCI layer compressed with zstd(1)
command -v promtool >/dev/null || need+=(prometheus)            # metrics checked by promtool
command -v chromium >/dev/null || need+=(chromium)              # the status page, headless
command -v curl >/dev/null || need+=(curl)
command -v strip >/dev/null || need+=(binutils)                 # a stripped colony in the chat service's root
command -v slirp4netns >/dev/null || need+=(slirp4netns)        # environments' private networks
command -v ip >/dev/null || need+=(iproute2)                    # test hosts in network namespaces
command -v nsenter >/dev/null || need+=(util-linux)
command -v pgrep >/dev/null || need+=(procps)
command -v cc >/dev/null || need+=(gcc)                         # static C probes run inside environments
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v sshfs >/dev/null || need+=(sshfs)                    # developers' tools on an environment's login:
command -v rsync >/dev/null || need+=(rsync)                    #   sshfs, rsync (both ends), git (both ends,
[ -x /usr/bin/git ] || need+=(git)                              #   copied with their libraries into a root)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${need[@]}"
fi

# The object-store tests run against a real Garage cluster; kept when this
# version is already installed (a build takes about 10 minutes here).
GARAGE_VERSION=2.5.0
export PATH="$HOME/.cargo/bin:$PATH"
if ! garage --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION "; then
  echo "test.sh: building Garage $GARAGE_VERSION (about 10 minutes)" >&2
  cargo install garage --version "$GARAGE_VERSION" --locked \
    --no-default-features --features bundled-libs,lmdb,sqlite
fi

[ "$setup_only" = yes ] && exit 0
exec cargo test --workspace --locked "${cargo_args[@]}"
