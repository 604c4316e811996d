#!/usr/bin/env bash
# Sets up and runs a single-node colony grid with its embedded block store:
# installs what it needs, builds colony, registers you (by your SSH key, made
# if you have none), imports a small busybox demo root, and serves the SSH
# front door on port 16999. Run as root: spawning mounts file systems.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "grid-up: run as root (spawn mounts FUSE file systems): sudo $0" >&2
  exit 1
fi

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
# Environments have private networks with user-mode networking.
command -v slirp4netns >/dev/null || need+=(slirp4netns)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi

# sudo resets PATH: find the invoking user's rustup toolchain if cargo is not on it.
if ! command -v cargo >/dev/null; then
  PATH="$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin:$PATH"
fi
cargo build --release --locked -p colony
colony=$PWD/target/release/colony
state=${COLONY_STATE:-/var/lib/colony}
port=${COLONY_PORT:-16999}

# You are the user who ran sudo (or root), known by your SSH key.
user=${SUDO_USER:-$(id -un)}
home=$(getent passwd "$user" | cut -d: -f6)
key="$home/.ssh/id_ed25519"
if [ ! -f "$key.pub" ]; then
  echo "grid-up: making an SSH key for $user at $key"
  install -d -m 700 -o "$user" "$home/.ssh"
  runuser -u "$user" -- ssh-keygen -q -t ed25519 -N '' -f "$key"
fi
if ! "$colony" user list --state "$state" | cut -f1 | grep -qx "$user"; then
  "$colony" user add "$user" --key "$key.pub" --state "$state"
fi

# A tiny demo root: busybox and its applets.
if ! "$colony" ndb query -f "$state/scorenames" scorename busybox >/dev/null 2>&1; then
  demo=$(mktemp -d)
  trap 'rm -rf "$demo"' EXIT
  mkdir -p "$demo"/{bin,etc,root,tmp,home}
  chmod 1777 "$demo/tmp"
  cp /bin/busybox "$demo/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$demo/bin/$applet"
  done
  echo "root:x:0:0:root:/root:/bin/sh" > "$demo/etc/passwd"
  echo "root:x:0:" > "$demo/etc/group"
  echo "welcome to a colony environment" > "$demo/etc/motd"
  "$colony" import busybox "$demo" --user "$user" --state "$state"
fi

cat <<TXT
colony grid on port $port, state in $state. As $user:
  ssh -p $port $user@localhost scores
  ssh -p $port $user@localhost spawn busybox       (replies with the environment's own login:)
  ssh -p 20001 $user@localhost                     (a shell inside it)
  ssh -p $port $user@localhost status
  ssh -p $port $user@localhost save busybox mybox
  ssh -p $port $user@localhost boom busybox
  ssh -p $port $user@localhost            (an interactive prompt)
Ctrl-C stops the node.
TXT
exec "$colony" serve --state "$state" --listen "0.0.0.0:$port" --public-host localhost
