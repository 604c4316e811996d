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
# Runs may go on side by side, each with a DIR of its own: a run refuses a
# DIR that a running grid uses (and one holding files it did not make), and
# names everything it makes after a run id of its own, removing only that.
# The nodes are at 10.77.N.1 (s1), 10.77.N.2 (s2), 10.77.N.3 (c1) and
# 10.77.N.4 (c2), in namespaces cg-ID-s1 … cg-ID-c2 on a bridge in
# cg-ID-hub; this machine joins the bridge as 10.77.N.254 (veth cg-ID).
# N is the first for which this machine has no 10.77.N.* address or route.
# Each run makes new SSH host keys at those addresses, so the ssh commands
# it prints keep them in DIR/known_hosts (by -F DIR/ssh_config); and each
# node has DIR/restart-NODE.sh, which starts it again after it died.
set -euo pipefail
dir=$(realpath -m -- "${1:-/var/tmp/colony-grid}")
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "grid-local: run as root (namespaces, FUSE mounts): sudo $0" >&2
  exit 1
fi

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

# $1 as a shell word to paste: in single quotes unless it is plain (a tls!
# address is not: bash would take its `!` for history).
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
# Pids of the processes serving a node's state DIR/NODE.state, for DIR and
# the NODEs given: a grid's nodes, however they were started.
node_pids() {
  local d=$1 f x n
  local -a args
  shift
  for f in /proc/[0-9]*/cmdline; do
    { mapfile -d '' args < "$f"; } 2>/dev/null || continue
    for x in "${args[@]}"; do
      for n; do
        if [ "$x" = "$d/$n.state" ]; then
          f=${f#/proc/}
          echo "${f%/cmdline}"
          continue 3
        fi
      done
    done
  done
}
# Whether pid $1 is alive (not just a zombie waiting to be reaped).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
sudo_=${SUDO_USER:+sudo }

nodes=(s1 s2 c1 c2)
pids=()              # the nodes this run started, and its sleeper
declare -A node_of=() # node by pid, for the nodes this run started
made_ns=()           # the namespaces this run made, and its veth to them
made_link=
own_dir=             # set once DIR is this run's
cleanup() {
  local p n others=()
  trap '' INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Nodes started again by DIR/restart-NODE.sh are not children of this
  # run: found by their state in DIR (which is this run's alone).
  if [ -n "$own_dir" ]; then
    for p in $(node_pids "$dir" "${nodes[@]}"); do
      [ -n "${node_of[$p]:-}" ] && continue
      kill -TERM "$p" 2>/dev/null && others+=("$p")
    done
  fi
  for _ in $(seq 300); do
    n=0
    for p in "${pids[@]}" "${others[@]}"; do alive "$p" && n=1 && break; done
    [ "$n" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}" "${others[@]}"; do
    if alive "$p"; then
      echo "grid-local: pid $p did not stop in 30 s of SIGTERM; killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # A node killed with -9 and not started again leaves its environments'
  # FUSE mounts (dead) under its state: detach them, so DIR can be removed.
  if [ -n "$own_dir" ]; then
    findmnt -rn -o TARGET | grep -F "$dir/" | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  if [ -n "$made_link" ]; then ip link del "$made_link" 2>/dev/null || true; fi
  for n in "${made_ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  if [ -n "$own_dir" ]; then rm -f "$dir/grid-local.pid"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One run at a time takes a DIR, a run id and a subnet (for a moment).
exec 9>/run/colony-grid-local.lock
flock 9

# DIR: refused if a grid runs in it (this script, or any node with its
# state there) or if it holds what this script did not make; else afresh.
users=()
if [ -f "$dir/grid-local.pid" ]; then
  p=$(cat "$dir/grid-local.pid")
  if [[ $p =~ ^[0-9]+$ ]] && alive "$p" && tr '\0' ' ' < "/proc/$p/cmdline" | grep -q grid-local; then
    users+=("$p")
  fi
fi
if [ -d "$dir" ]; then
  mapfile -t users_nodes < <(node_pids "$dir" "${nodes[@]}")
else
  users_nodes=()
fi
if [ ${#users[@]} -gt 0 ] || [ ${#users_nodes[@]} -gt 0 ]; then
  other=$dir-2
  for i in $(seq 2 99); do [ -e "$dir-$i" ] || { other=$dir-$i; break; }; done
  all=("${users[@]}" "${users_nodes[@]}")
  echo "grid-local: $dir is in use by a running grid (pid ${all[*]});" \
    "give another DIR, e.g. ${sudo_}$0 $(q "$other")" >&2
  if [ ${#users[@]} -gt 0 ]; then
    echo "(or stop that grid first: Ctrl-C where it runs)" >&2
  else
    # Its grid-local.sh is gone (killed -9, say): its nodes and network stay.
    i=$(cat "$dir/grid-local.id" 2>/dev/null || echo ID)
    echo "(or stop what is left of that grid, whose grid-local.sh is gone:" \
      "kill ${users_nodes[*]}; ip netns del cg-$i-s1; ip netns del cg-$i-s2;" \
      "ip netns del cg-$i-c1; ip netns del cg-$i-c2; ip netns del cg-$i-hub)" >&2
  fi
  exit 1
fi
if [ -e "$dir" ] && ! [ -d "$dir" ]; then
  echo "grid-local: $dir is not a directory; give another DIR" >&2
  exit 1
fi
if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] && ! [ -e "$dir/.grid-local" ] &&
  ! { [ -d "$dir/ca" ] && [ -d "$dir/admin.tls" ]; }; then
  echo "grid-local: $dir holds files this script did not make; give an empty or new DIR" >&2
  exit 1
fi
if ! rm -rf --one-file-system "$dir"; then
  echo "grid-local: could not empty $dir (a mount left by an earlier run?" \
    "see grep $(q "$dir") /proc/mounts); give another DIR" >&2
  exit 1
fi
mkdir -p "$dir"
touch "$dir/.grid-local"
echo $$ > "$dir/grid-local.pid"
own_dir=1

# A run id for names (namespaces cg-ID-…, the veth cg-ID: at most 15) and
# the first 10.77.N.0/24 with no address or route on this machine.
while :; do
  id=$(od -An -N2 -tx2 /dev/urandom | tr -d ' \n')
  if ! compgen -G "/run/netns/cg-$id-*" >/dev/null && ! ip link show "cg-$id" >/dev/null 2>&1; then
    break
  fi
done
taken=$(ip -o -4 addr show; ip -4 route show table all)
net=
for i in $(seq 0 255); do
  if ! grep -Eq "(^|[^0-9])10\.77\.$i\." <<< "$taken"; then
    net=10.77.$i
    break
  fi
done
if [ -z "$net" ]; then
  echo "grid-local: every 10.77.N.0/24 is in use on this machine" >&2
  exit 1
fi
echo "$id" > "$dir/grid-local.id"
declare -A addr=([s1]=$net.1 [s2]=$net.2 [c1]=$net.3 [c2]=$net.4)
hub=cg-$id-hub

# The network: a bridge in a hub namespace, a veth per node and one for us.
ip netns add "$hub"
made_ns+=("$hub")
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
for n in "${nodes[@]}"; do
  ip netns add "cg-$id-$n"
  made_ns=("cg-$id-$n" "${made_ns[@]}")
  ip link add eth0 netns "cg-$id-$n" type veth peer name "p-$n" netns "$hub"
  ip -n "$hub" link set "p-$n" master br0 up
  ip -n "cg-$id-$n" addr add "${addr[$n]}/24" dev eth0
  ip -n "cg-$id-$n" link set eth0 up
  ip -n "cg-$id-$n" link set lo up
done
ip link add "cg-$id" type veth peer name p-host netns "$hub"
made_link=cg-$id
ip -n "$hub" link set p-host master br0 up
ip addr add "$net.254/24" dev "cg-$id"
ip link set "cg-$id" up
flock -u 9
exec 9>&-

# A fresh grid CA and a certificate per node.
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
# This run's host keys, apart from $user's own known_hosts: the addresses
# are the same from run to run, the keys new.
install -m 644 -o "$user" /dev/null "$dir/known_hosts"
cat > "$dir/ssh_config" <<TXT
# grid-local run $id: ssh -F $dir/ssh_config … keeps the grid's host keys
# (new each run, at addresses used again) in this run's known_hosts.
Host *
  UserKnownHostsFile "$dir/known_hosts"
  StrictHostKeyChecking accept-new
TXT
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
# waits for the line it prints when ready; first writes DIR/restart-NODE.sh,
# which starts it so again.
start() {
  local n=$1 w
  shift
  # nsenter, not `ip netns exec`: that mounts a sysfs of its own, without
  # the cgroup file systems the environments need.
  local cmd=(nsenter "--net=/run/netns/cg-$id-$n" -- "$COLONY" serve --tls "$dir/$n.tls"
    --state "$dir/$n.state" --public-host "${addr[$n]}" "$@")
  local line=setsid
  for w in "${cmd[@]}"; do line+=" $(q "$w")"; done
  local r="$dir/restart-$n.sh" out log
  out=$(q "$dir/$n.out")
  log=$(q "$dir/$n.log")
  cat > "$r" <<TXT
#!/usr/bin/env bash
# Starts node $n of the grid in $dir (grid-local run $id) again, after it
# died or was killed, in its namespace cg-$id-$n with the command line
# grid-local.sh started it with: as root, while that grid-local.sh runs.
# Its log goes on in $dir/$n.log.
set -euo pipefail
$(declare -f node_pids)
if [ ! -e $(q "/run/netns/cg-$id-$n") ]; then
  echo "restart-$n: the grid in $(q "$dir") is not running (no namespace cg-$id-$n): start one with scripts/grid-local.sh" >&2
  exit 1
fi
running=\$(node_pids $(q "$dir") $n)
if [ -n "\$running" ]; then
  echo "restart-$n: $n is running (pid \$running); stop it first to start it again" >&2
  exit 1
fi
: > $out
echo "restart-$n: starting $n again at \$(date)" >> $log
# setsid: the node outlives this script and the terminal it ran in.
$line \\
  > $out 2>> $log < /dev/null &
for _ in \$(seq 100); do
  if [ -s $out ]; then
    echo "$n is running again (pid \$!); its log: "$log
    exit 0
  fi
  kill -0 \$! 2>/dev/null || break
  sleep 0.1
done
echo "restart-$n: $n did not start; the end of its log:" >&2
tail -n 20 $log >&2
exit 1
TXT
  chmod 755 "$r"
  "${cmd[@]}" > "$dir/$n.out" 2> "$dir/$n.log" &
  pids+=($!)
  node_of[$!]=$n
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
    --peer "$other=tls!${addr[$other]}!17035" --admin-listen "tls!$a!16990"
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

d=$(q "$dir")
s="ssh -F $d/ssh_config -p 16999"
u=$(q "$user")
cat <<TXT
A colony grid on this machine (run $id, in $d): storage nodes s1 ($net.1)
and s2 ($net.2), replicating; cpu nodes c1 ($net.3) and c2 ($net.4), serving
both; in namespaces cg-$id-s1 … cg-$id-c2, this machine on their bridge as
$net.254 (cg-$id).
Every run makes new host keys at these addresses: -F $d/ssh_config keeps
this run's in $d/known_hosts, accepted when first seen, and leaves your own
known_hosts alone (give the -F to the login spawn replies with, too).
As $u:
  $s $u@$net.1 scores
  $s $u@$net.1 spawn busybox        (placed on c1 or c2; replies with its login)
  $s $u@$net.2 spawn busybox node=c2   (through s2, on the cpu node you name)
  $s $u@$net.1 status
  $s $u@$net.1 save busybox mybox   (bound on s1, replicated to s2)
The grid's state:
  ${sudo_}$(q "$COLONY") grid status $(q "tls!$net.1!17035") --cert $d/admin.tls
s1's status page (grid certificates only: through a tunnel with the admin's):
  ${sudo_}$(q "$COLONY") tunnel --listen $(q "tcp!127.0.0.1!16990") --to $(q "tls!$net.1!16990") --cert $d/admin.tls --peer-roles storage &
  then open http://127.0.0.1:16990/
If a node dies (kill -9, say), start it again, in its namespace and with the
command line it had (both in the file):
  ${sudo_}$d/restart-s1.sh    (or restart-s2.sh, restart-c1.sh, restart-c2.sh)
Logs in $d/*.log. Ctrl-C stops the grid and removes its namespaces.
TXT

# Until Ctrl-C, saying which node dies and how to start it again (the one
# wait reaped is gone from /proc; one that died too is a zombie till its own).
sleep infinity &
pids+=($!)
while :; do
  st=0
  wait -n || st=$?
  for p in "${!node_of[@]}"; do
    if [ ! -e "/proc/$p" ]; then
      n=${node_of[$p]}
      unset "node_of[$p]"
      echo "grid-local: $n exited (status $st); its log: $d/$n.log;" \
        "start it again with: ${sudo_}$d/restart-$n.sh" >&2
    fi
  done
done
