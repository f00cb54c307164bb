#!/bin/bash
# The Debian package and tcpmon.service under a real systemd: run as root inside the
# bookworm guest of `cargo xtask systemd-vm` (xtask/src/service/), from its payload
# disk (/payload: the packages, this script, `versions`). Each check prints one
# `MATRIX-RESULT {"check","ok","detail"}` line, which the host reads off the serial
# port; the host fails on any false or missing check. Traffic stays inside the guest:
# a veth pair to a network namespace (tm0 <-> peer's tm1) and loopback.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
P=/payload
. "$P/versions"
FAILED=0
# CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39): the three and nothing else.
CAPS=000000c000001000
T0=$(cut -d' ' -f1 /proc/uptime)

log() { echo "matrix-guest: [$(cut -d' ' -f1 /proc/uptime)] $*"; }

result() { # NAME true|false DETAIL...
    local name=$1 ok=$2 d
    shift 2
    d=$(printf '%s' "$*" | tr '\n\t' '  ' | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g' | cut -c1-700)
    echo "MATRIX-RESULT {\"check\":\"$name\",\"ok\":$ok,\"detail\":\"$d\"}"
    [ "$ok" = true ] || FAILED=$((FAILED + 1))
    log "$name: $ok"
}

# NAME DETAIL CONDITION...: the condition's exit status decides.
check() {
    local name=$1 detail=$2
    shift 2
    if "$@"; then result "$name" true "$detail"; else result "$name" false "$detail"; fi
}

main_pid() { systemctl show -P MainPID tcpmon.service; }
status_field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
scrape() { curl -sf -m 10 "${1:-http://127.0.0.1:19393}/metrics"; }
metric() { # NAME-WITH-LABELS-REGEX [URL]: the value, 0 if absent
    scrape "${2:-}" | awk -v re="^$1 " '$0 ~ re { v = $NF } END { print v + 0 }'
}
ready() { curl -sf -m 10 -o /dev/null "${1:-http://127.0.0.1:19393}/readyz"; }
wait_ready() { # [URL]: up to 120 s (TCG: the verifier is slow)
    local i
    for i in $(seq 240); do ready "${1:-}" && return 0; sleep 0.5; done
    return 1
}
# Connections from the peer namespace to the guest's httpd, one per request; prints
# how many succeeded.
traffic() { # COUNT PAUSE
    ip netns exec peer bash -c '
        ok=0
        for i in $(seq '"$1"'); do
            curl -sf -m 5 -o /dev/null -H "Connection: close" http://10.203.0.1:8080/index.html && ok=$((ok + 1))
            sleep '"$2"'
        done
        echo $ok'
}
# tcpmon's tc filters and qdisc, XDP programs, and BPF programs named tcpmon_*.
attached() {
    local dev=$1
    tc filter show dev "$dev" ingress 2>/dev/null
    tc filter show dev "$dev" egress 2>/dev/null
    tc qdisc show dev "$dev" | grep clsact
    ip -d link show dev "$dev" | grep -E 'prog/xdp|xdp'
    bpftool prog show 2>/dev/null | grep -E 'name tcpmon_'
    bpftool net show dev "$dev" 2>/dev/null | grep -E 'tcpmon_'
}
journal() { journalctl -q -u tcpmon.service --no-pager -o cat; }

log "start (uptime ${T0}s)"

# --- a network for tcpmon to watch: tm0 in the root namespace, its peer in `peer`;
# the default route goes over tm0, so the default configuration watches it.
ip link set lo up
ip netns add peer
ip link add tm0 type veth peer name tm1
ip link set tm1 netns peer
ip addr add 10.203.0.1/24 dev tm0
ip link set tm0 up
ip -n peer addr add 10.203.0.2/24 dev tm1
ip -n peer link set tm1 up
ip -n peer link set lo up
ip route add default via 10.203.0.2 dev tm0
mkdir -p /srv/www
head -c 4000 /dev/urandom | base64 > /srv/www/index.html
busybox httpd -p 10.203.0.1:8080 -h /srv/www

# --- install
log "dpkg -i tcpmon $V1"
out=$(dpkg -i "$P/tcpmon_${V1}_amd64.deb" "$P/tcpmon-dbgsym_${V1}_amd64.ddeb" 2>&1)
rc=$?
check install "dpkg -i rc=$rc; $(dpkg-query -W -f='${Package} ${Version} ${Status}; ' tcpmon tcpmon-dbgsym 2>&1) $(tail -n 3 <<<"$out")" \
    test "$rc" -eq 0
pw=$(getent passwd tcpmon)
IFS=: read -r _ _ uid gid _ home shell <<<"$pw"
check user "passwd: $pw; group: $(getent group tcpmon)" \
    test -n "$pw" -a "${uid:-1000}" -lt 1000 -a "$shell" = /usr/sbin/nologin -a -n "$(getent group tcpmon)"
u=/usr/lib/systemd/system
check unit-files "service $(systemctl is-enabled tcpmon.service), socket $(systemctl is-enabled tcpmon-metrics.socket); conffile: $(dpkg-query -W -f='${Conffiles}' tcpmon | tr -s ' ')" \
    test -f $u/tcpmon.service -a -f $u/tcpmon-metrics.socket -a -f /usr/lib/sysusers.d/tcpmon.conf \
    -a "$(systemctl is-enabled tcpmon.service)" = enabled -a "$(systemctl is-enabled tcpmon-metrics.socket)" = disabled \
    -a -n "$(dpkg-query -W -f='${Conffiles}' tcpmon | grep /etc/default/tcpmon)"
vout=$(systemd-analyze verify $u/tcpmon.service $u/tcpmon-metrics.socket 2>&1)
vrc=$?
check verify "systemd-analyze verify rc=$vrc: ${vout:-no output}" test "$vrc" -eq 0 -a -z "$vout"
check active "$(systemctl is-active tcpmon.service), READY came at $(systemctl show -P ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic tcpmon.service | tr '\n' ' ')us; $(journal | tail -n 2)" \
    test "$(systemctl is-active tcpmon.service)" = active

# --- the sandbox as systemd applied it, and as the kernel sees the process
props=$(systemctl show tcpmon.service -p Type,User,NoNewPrivileges,AmbientCapabilities,CapabilityBoundingSet,ProtectSystem,ProtectHome,PrivateTmp,RuntimeDirectory,RuntimeDirectoryPreserve,RestrictAddressFamilies,LimitNOFILE,LimitMEMLOCK,SystemCallArchitectures)
want="Type=notify
User=tcpmon
NoNewPrivileges=yes
AmbientCapabilities=cap_net_admin cap_perfmon cap_bpf
CapabilityBoundingSet=cap_net_admin cap_perfmon cap_bpf
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
RuntimeDirectory=tcpmon
RuntimeDirectoryPreserve=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX
LimitNOFILE=8192
LimitMEMLOCK=infinity
SystemCallArchitectures=native"
missing=$(grep -vxF -f <(echo "$props") <<<"$want")
check sandbox-properties "$(echo $props); missing: ${missing:-none}" test -z "$missing"
pid=$(main_pid)
creds="pid $pid uid $(status_field "$pid" Uid) CapInh $(status_field "$pid" CapInh) CapPrm $(status_field "$pid" CapPrm) CapEff $(status_field "$pid" CapEff) CapBnd $(status_field "$pid" CapBnd) CapAmb $(status_field "$pid" CapAmb) NoNewPrivs $(status_field "$pid" NoNewPrivs) Seccomp $(status_field "$pid" Seccomp); nofile $(awk '/open files/ {print $4 "/" $5}' /proc/$pid/limits)"
check process-credentials "$creds" test "$(status_field "$pid" Uid)" = "$uid" \
    -a "$(status_field "$pid" CapEff)" = $CAPS -a "$(status_field "$pid" CapPrm)" = $CAPS \
    -a "$(status_field "$pid" CapBnd)" = $CAPS -a "$(status_field "$pid" CapAmb)" = $CAPS \
    -a "$(status_field "$pid" NoNewPrivs)" = 1 -a "$(status_field "$pid" Seccomp)" = 2
# In the service's mount namespace: /usr and /etc read-only, /run/tcpmon writable,
# /home empty, /tmp its own.
touch /tmp/tcpmon-host-tmp-marker
fs=$(nsenter -t "$pid" -m -- sh -c '
    touch /etc/x 2>/dev/null && echo etc-writable
    touch /usr/x 2>/dev/null && echo usr-writable
    touch /run/tcpmon/x 2>/dev/null && rm /run/tcpmon/x && echo run-ok
    [ -e /tmp/tcpmon-host-tmp-marker ] && echo tmp-shared
    [ -z "$(ls -A /home 2>/dev/null)" ] && echo home-empty
    grep -E " / | /usr " /proc/self/mountinfo | grep -q " ro," && echo root-ro')
check filesystem-sandbox "$(echo $fs)" test "$(echo $fs)" = "run-ok home-empty root-ro"
score=$(systemd-analyze security tcpmon.service 2>&1 | grep -i 'overall exposure')
check security-score "${score}" test -n "$score"

# --- scrape, with traffic over tm0
n=$(traffic 20 0)
opened=$(metric 'tcpmon_connections_opened_total\{[^}]*\}')
m=$(scrape)
check scrape "$n/20 requests; /readyz $(curl -s -m 5 http://127.0.0.1:19393/readyz); opened $opened; $(grep -c '^tcpmon_' <<<"$m") samples" \
    test "$n" -eq 20 -a -n "$m" -a "$(grep -c '^tcpmon_ready 1' <<<"$m")" -eq 1
check attached "$(grep '^tcpmon_attached' <<<"$m" | tr '\n' ' '); tc: $(tc filter show dev tm0 ingress | grep -o 'tcpmon_[a-z_]*' | tr '\n' ' ')" \
    test -n "$(grep '^tcpmon_attached{.*iface="tm0".* 1$' <<<"$m")"
rec=$(ls -l /run/tcpmon/ 2>&1)
check state-record "$rec; $(head -c 300 /run/tcpmon/tc-*.json 2>&1)" \
    test -n "$(find /run/tcpmon -name 'tc-*.json' -user tcpmon)"

# --- SIGKILL: Restart=on-failure starts it again, and the preserved runtime
# directory's record lets the new one remove what the killed one left.
pid1=$(main_pid)
since=$(date +%s)
systemctl kill -s KILL tcpmon.service
for i in $(seq 120); do
    p=$(main_pid)
    [ "$p" != 0 ] && [ "$p" != "$pid1" ] && [ "$(systemctl is-active tcpmon)" = active ] && break
    sleep 1
done
wait_ready
pid2=$(main_pid)
left=$(journalctl -q -u tcpmon.service --since "@$since" -o cat | grep -c 'removed what a killed tcpmon left')
removed=$(metric 'tcpmon_tc_leftovers_removed_total\{object="filter"\}')
filters=$(tc filter show dev tm0 ingress | grep -c 'tcpmon_tc_ingress')
check sigkill-restart "pid $pid1 killed -> $pid2, NRestarts $(systemctl show -P NRestarts tcpmon), leftovers log $left, removed filters $removed, ingress filters now $filters" \
    test "$pid2" != "$pid1" -a "$pid2" != 0 -a "$left" -ge 1 -a "$removed" -ge 1 -a "$filters" -eq 1

# --- upgrade, into socket activation: the edited /etc/default/tcpmon survives and
# takes effect (the node label), and with tcpmon-metrics.socket enabled systemd holds
# :19393, where tcpmon serves instead of on its own --web.listen-address. (One start
# for both: each costs half a minute of the verifier under TCG.)
sed -i 's|^TCPMON_ARGS=.*|TCPMON_ARGS="-i tm0 --node-name upgraded-vm --web.listen-address 127.0.0.1:19394"|' /etc/default/tcpmon
edited=$(md5sum </etc/default/tcpmon)
systemctl stop tcpmon.service
systemctl enable --now tcpmon-metrics.socket 2>/dev/null
log "dpkg -i tcpmon $V2"
out=$(dpkg -i "$P/tcpmon_${V2}_amd64.deb" "$P/tcpmon-dbgsym_${V2}_amd64.ddeb" 2>&1)
rc=$?
wait_ready
node=$(scrape | grep -c '^tcpmon_build_info{.*node="upgraded-vm"')
check upgrade-keeps-config "dpkg -i rc=$rc, now $(dpkg-query -W -f='${Version}' tcpmon), config $(grep ^TCPMON_ARGS /etc/default/tcpmon), build_info with node=upgraded-vm: $node; $(tail -n 2 <<<"$out")" \
    test "$rc" -eq 0 -a "$(dpkg-query -W -f='${Version}' tcpmon)" = "$V2" \
    -a "$(md5sum </etc/default/tcpmon)" = "$edited" -a "$node" -eq 1
ok=0
for i in $(seq 3); do ready && ok=$((ok + 1)); done
own=$(ready http://127.0.0.1:19394 && echo y)
check socket-activation "readyz on the socket $ok/3, own --web.listen-address served: ${own:-no}, socket $(systemctl is-active tcpmon-metrics.socket), $(journal | grep -o 'serving /metrics.*' | tail -n 1)" \
    test "$ok" -eq 3 -a -z "$own" -a "$(systemctl is-active tcpmon-metrics.socket)" = active

# --- restart under traffic: connections over tm0 go on while tcpmon restarts, the
# new one attaches exactly once, and scrapes during the restart wait in the socket's
# backlog instead of failing.
pid1=$(main_pid)
traffic 60 0.1 >/tmp/traffic.out &
tp=$!
(
    good=0
    # A scrape that arrives mid-restart waits for the new tcpmon: under TCG its
    # programs take half a minute through the verifier.
    for i in $(seq 40); do
        curl -sf -m 120 -o /dev/null http://127.0.0.1:19393/metrics && good=$((good + 1))
        sleep 0.25
    done
    echo $good >/tmp/scrapes.out
) &
sp=$!
sleep 1
systemctl restart tcpmon.service
rrc=$?
wait $tp $sp
n=$(cat /tmp/traffic.out)
good=$(cat /tmp/scrapes.out)
wait_ready
pid2=$(main_pid)
filters=$(tc filter show dev tm0 ingress | grep -c 'tcpmon_tc_ingress')
check restart-under-traffic "restart rc=$rrc, pid $pid1 -> $pid2, $n/60 requests and $good/40 scrapes during it, ingress filters $filters, $(systemctl is-active tcpmon)" \
    test "$rrc" -eq 0 -a "$pid1" != "$pid2" -a "$n" -eq 60 -a "$good" -eq 40 -a "$filters" -eq 1
systemctl disable --now tcpmon-metrics.socket 2>/dev/null

# --- stop: a clean exit, no seccomp kill, nothing left in the kernel.
systemctl stop tcpmon.service
res="Result=$(systemctl show -P Result tcpmon) ExecMainCode=$(systemctl show -P ExecMainCode tcpmon) ExecMainStatus=$(systemctl show -P ExecMainStatus tcpmon)"
check stop "$res; $(journal | tail -n 2)" \
    test "$(systemctl show -P Result tcpmon)" = success -a "$(systemctl show -P ExecMainStatus tcpmon)" = 0
sys=$(journalctl -q --no-pager -o cat | grep -ciE 'SIGSYS|status=31/SYS|code=killed.*SYS')
audit=$(dmesg | grep -c 'type=1326')
check no-sigsys "journal lines naming SIGSYS: $sys, seccomp audit records: $audit" test "$sys" -eq 0 -a "$audit" -eq 0
left=$(attached tm0; attached lo)
check nothing-attached "${left:-nothing on tm0 or lo}; state dir: $(ls -A /run/tcpmon 2>&1 | tr '\n' ' ')" test -z "$left"

# --- purge: everything the package made is gone.
out=$(dpkg --purge tcpmon-dbgsym tcpmon 2>&1)
rc=$?
gone=""
getent passwd tcpmon >/dev/null && gone+="user "
getent group tcpmon >/dev/null && gone+="group "
for f in /etc/default/tcpmon /run/tcpmon /usr/bin/tcpmon $u/tcpmon.service $u/tcpmon-metrics.socket \
    /usr/lib/sysusers.d/tcpmon.conf /etc/systemd/system/multi-user.target.wants/tcpmon.service \
    /usr/lib/debug/.build-id; do
    [ -e "$f" ] && gone+="$f "
done
units=$(systemctl list-unit-files tcpmon.service tcpmon-metrics.socket --no-legend 2>/dev/null)
check purge "dpkg --purge rc=$rc; left: ${gone:-nothing}${units:+; units: $units}; $(dpkg-query -W tcpmon 2>&1 | head -n 1)" \
    test "$rc" -eq 0 -a -z "$gone" -a -z "$units"

if [ "$FAILED" -gt 0 ]; then
    # For the host's log: what tcpmon said, the last of it.
    journalctl -q -u tcpmon.service -u tcpmon-metrics.socket --no-pager -o short-monotonic | tail -n 60 |
        while IFS= read -r l; do log "journal: $l"; done
fi
log "done in $(awk -v t="$T0" '{ print $1 - t }' /proc/uptime) s, $FAILED failed"
exit "$FAILED"
