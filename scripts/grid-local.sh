#!/usr/bin/env bash
# A grid on one machine, as the original's paired storage and cpu nodes:
# two storage nodes that replicate to each other and two cpu nodes linked to
# both, each in a network namespace of its own on a bridge, with
# certificates from a fresh grid CA, a busybox demo root and you registered
# (by your SSH key, made if you have none). Prints how to spawn through
# either storage node, then runs until Ctrl-C, which stops every node and
# removes the namespaces.
#
#   sudo scripts/grid-local.sh [DIR]     state, certificates and logs in DIR
#                                        [default: /var/tmp/colony-grid]
#
# The nodes are at 10.77.0.1 (s1), 10.77.0.2 (s2), 10.77.0.3 (c1) and
# 10.77.0.4 (c2); this machine joins the bridge as 10.77.0.254.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "grid-local: run as root (namespaces, FUSE mounts): sudo $0" >&2
  exit 1
fi
dir=${1:-/var/tmp/colony-grid}
net=10.77.0

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v slirp4netns >/dev/null || need+=(slirp4netns)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
if [ -z "${COLONY:-}" ]; then
  if ! command -v cargo >/dev/null; then
    PATH="$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin:$PATH"
  fi
  cargo build --release --locked -p colony
  COLONY=$PWD/target/release/colony
fi

nodes=(s1 s2 c1 c2)
declare -A addr=([s1]=$net.1 [s2]=$net.2 [c1]=$net.3 [c2]=$net.4)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in "${nodes[@]}"; do ip netns del "cg-$n" 2>/dev/null || true; done
  ip link del cg-host 2>/dev/null || true
  ip netns del cg-hub 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The network: a bridge in a hub namespace, a veth per node and one for us.
cleanup
ip netns add cg-hub
ip -n cg-hub link add br0 type bridge
ip -n cg-hub link set br0 up
for n in "${nodes[@]}"; do
  ip netns add "cg-$n"
  ip link add eth0 netns "cg-$n" type veth peer name "p-$n" netns cg-hub
  ip -n cg-hub link set "p-$n" master br0 up
  ip -n "cg-$n" addr add "${addr[$n]}/24" dev eth0
  ip -n "cg-$n" link set eth0 up
  ip -n "cg-$n" link set lo up
done
ip link add cg-host type veth peer name p-host netns cg-hub
ip -n cg-hub link set p-host master br0 up
ip addr add "$net.254/24" dev cg-host
ip link set cg-host up

# A fresh grid CA and a certificate per node.
rm -rf "$dir"
mkdir -p "$dir"
"$COLONY" grid ca init --grid local --ca "$dir/ca" >/dev/null
for n in s1 s2; do "$COLONY" grid ca issue "$n" --role storage --ca "$dir/ca" --out "$dir/$n.tls" >/dev/null; done
for n in c1 c2; do "$COLONY" grid ca issue "$n" --role cpu --ca "$dir/ca" --out "$dir/$n.tls" >/dev/null; done
"$COLONY" grid ca issue admin --role client --ca "$dir/ca" --out "$dir/admin.tls" >/dev/null

# You, by your SSH key; and a demo root, both on s1 (replication takes
# them to s2).
user=${SUDO_USER:-$(id -un)}
home=$(getent passwd "$user" | cut -d: -f6)
key="$home/.ssh/id_ed25519"
if [ ! -f "$key.pub" ]; then
  echo "grid-local: making an SSH key for $user at $key"
  install -d -m 700 -o "$user" "$home/.ssh"
  runuser -u "$user" -- ssh-keygen -q -t ed25519 -N '' -f "$key"
fi
mkdir -p "$dir/s1.state" "$dir/s2.state"
"$COLONY" user add "$user" --key "$key.pub" --state "$dir/s1.state" >/dev/null
demo="$dir/demo-root"
mkdir -p "$demo"/{bin,etc,root,tmp,home}
chmod 1777 "$demo/tmp"
cp /bin/busybox "$demo/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$demo/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$demo/etc/passwd"
echo "root:x:0:" > "$demo/etc/group"
echo "welcome to a colony grid environment" > "$demo/etc/motd"
"$COLONY" import busybox "$demo" --user "$user" --state "$dir/s1.state" >/dev/null

# Starts node $1 with the rest as arguments, logging to DIR/NODE.log, and
# waits for the line it prints when ready.
start() {
  local n=$1
  shift
  # nsenter, not `ip netns exec`: that mounts a sysfs of its own, without
  # the cgroup file systems the environments need.
  nsenter --net="/run/netns/cg-$n" -- "$COLONY" serve --tls "$dir/$n.tls" --state "$dir/$n.state" \
    --public-host "${addr[$n]}" "$@" > "$dir/$n.out" 2> "$dir/$n.log" &
  pids+=($!)
  for _ in $(seq 100); do
    [ -s "$dir/$n.out" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "grid-local: $n did not start; its log:" >&2
  cat "$dir/$n.log" >&2
  exit 1
}
for n in s1 s2; do
  a=${addr[$n]}
  other=$([ "$n" = s1 ] && echo s2 || echo s1)
  start "$n" --role storage --listen "$a:16999" --venti-listen "tls!$a!17034" \
    --cpu-listen "tls!$a!17036" --replica-listen "tls!$a!17035" \
    --peer "$other=tls!${addr[$other]}!17035"
done
for n in c1 c2; do
  start "$n" --role cpu --storage "s1=tls!${addr[s1]}!17036" --storage "s2=tls!${addr[s2]}!17036"
done
# Ready once both storage nodes have both cpu nodes and s2 has the demo root.
for _ in $(seq 200); do
  links=$(cat "$dir/s1.log" "$dir/s2.log" | grep -c "cpu node linked" || true)
  if [ "$links" -ge 4 ] && "$COLONY" ndb query -f "$dir/s2.state/scorenames" scorename busybox >/dev/null 2>&1; then
    break
  fi
  sleep 0.1
done

cat <<TXT
A colony grid on this machine: storage nodes s1 ($net.1) and s2 ($net.2),
replicating; cpu nodes c1 ($net.3) and c2 ($net.4), serving both.
As $user:
  ssh -p 16999 $user@$net.1 scores
  ssh -p 16999 $user@$net.1 spawn busybox        (placed on c1 or c2; replies with its login)
  ssh -p 16999 $user@$net.2 spawn busybox node=c2   (through s2, on the cpu node you name)
  ssh -p 16999 $user@$net.1 status
  ssh -p 16999 $user@$net.1 save busybox mybox   (bound on s1, replicated to s2)
The grid's state:
  $COLONY grid status tls!$net.1!17035 --cert $dir/admin.tls
Logs in $dir/*.log. Ctrl-C stops the grid.
TXT
wait
