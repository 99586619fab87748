#!/usr/bin/env bash
# A PPTP NAT lab made of network namespaces (root only).
#
#   scripts/lab.sh create NAME [CLIENTS]   router, WAN side and CLIENTS (default 2) LAN hosts
#   scripts/lab.sh destroy NAME            delete every namespace NAME-*
#   scripts/lab.sh show NAME               addresses, routes and nftables of the router
#
# Topology (NAME is a prefix such as pptpdemo-1234):
#
#   NAME-c1 10.213.1.2 --eth0==lan1--+
#   NAME-c2 10.213.1.3 --eth0==lan2--+-- NAME-r (router) --wan0==eth0-- NAME-s 10.213.2.2
#   ...                              |   10.213.1.1 (LAN)   10.213.2.1 (WAN)
#
# The router forwards, masquerades `oifname "wan0"` in its own table
# `lab_nat`, and holds no other rules: the daemon adds its own table. Every LAN
# host has its own namespace and its own veth, so a GRE packet delivered to the
# wrong host really arrives at the wrong host. LAN routes are /32 per host on
# the router (no bridge: br_netfilter is built into this kernel and would run
# the IP hooks a second time for bridged frames). The WAN side has no route to
# the LAN: it can reach only the router's public address, as on the Internet.
# Addresses exist only inside the namespaces; interface names are short and
# created directly in their namespace, so nothing in the root namespace changes.
set -euo pipefail

LAN_NET=10.213.1
WAN_NET=10.213.2
ROUTER_LAN=$LAN_NET.1
ROUTER_WAN=$WAN_NET.1
SERVER=$WAN_NET.2

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "lab.sh: needs root (network namespaces)" >&2
        exit 1
    fi
}

check_name() {
    case "$1" in
        '' | *[!A-Za-z0-9_.-]*)
            echo "lab.sh: bad lab name '$1'" >&2
            exit 2
            ;;
    esac
}

# Runs a command in namespace $1.
in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

# Namespaces of lab $1, one per line.
lab_namespaces() {
    ip netns list | awk '{print $1}' | grep -E "^$1-(r|s|c[0-9]+)\$" || true
}

create() {
    local name=$1 clients=${2:-2}
    case "$clients" in
        '' | *[!0-9]*)
            echo "lab.sh: CLIENTS must be a number" >&2
            exit 2
            ;;
    esac
    if [ "$clients" -lt 1 ] || [ "$clients" -gt 200 ]; then
        echo "lab.sh: CLIENTS must be 1..200" >&2
        exit 2
    fi
    if [ -n "$(lab_namespaces "$name")" ]; then
        echo "lab.sh: lab $name exists already (scripts/lab.sh destroy $name)" >&2
        exit 1
    fi
    local r=$name-r s=$name-s
    # From here on, a failure leaves nothing behind.
    trap 'destroy "$name"' ERR
    ip netns add "$r"
    ip netns add "$s"
    in_ns "$r" ip link set lo up
    in_ns "$s" ip link set lo up
    in_ns "$r" sysctl -qw net.ipv4.ip_forward=1
    in_ns "$r" sysctl -qw net.ipv4.conf.all.rp_filter=0
    in_ns "$r" sysctl -qw net.ipv4.conf.default.rp_filter=0

    ip link add wan0 netns "$r" type veth peer name eth0 netns "$s"
    in_ns "$r" ip addr add "$ROUTER_WAN/24" dev wan0
    in_ns "$s" ip addr add "$SERVER/24" dev eth0
    in_ns "$r" ip link set wan0 up
    in_ns "$s" ip link set eth0 up

    local i c addr
    for i in $(seq 1 "$clients"); do
        c=$name-c$i
        addr=$LAN_NET.$((i + 1))
        ip netns add "$c"
        in_ns "$c" ip link set lo up
        ip link add "lan$i" netns "$r" type veth peer name eth0 netns "$c"
        in_ns "$r" ip addr add "$ROUTER_LAN/32" dev "lan$i"
        in_ns "$r" ip link set "lan$i" up
        in_ns "$r" ip route add "$addr/32" dev "lan$i" src "$ROUTER_LAN"
        in_ns "$c" ip addr add "$addr/24" dev eth0
        in_ns "$c" ip link set eth0 up
        in_ns "$c" ip route add default via "$ROUTER_LAN" dev eth0 onlink
    done

    in_ns "$r" nft -f - <<'EOF'
table ip lab_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
EOF
    trap - ERR
    echo "lab $name: router $r (LAN $ROUTER_LAN, WAN $ROUTER_WAN), server $s ($SERVER)," \
        "clients $name-c1..c$clients ($LAN_NET.2..$LAN_NET.$((clients + 1)))"
}

destroy() {
    local name=$1 ns
    for ns in $(lab_namespaces "$name"); do
        # Processes left in the namespace keep it alive only as a mount;
        # deleting it is what matters for the next run.
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}

show() {
    local name=$1 ns
    for ns in $(lab_namespaces "$name"); do
        echo "== $ns"
        in_ns "$ns" ip -br addr show | grep -v '^lo '
        in_ns "$ns" ip route show
    done
    echo "== $name-r nftables"
    in_ns "$name-r" nft list ruleset
}

[ $# -ge 2 ] || usage
cmd=$1
name=$2
check_name "$name"
need_root
case "$cmd" in
    create) create "$name" "${3:-2}" ;;
    destroy) destroy "$name" ;;
    show) show "$name" ;;
    *) usage ;;
esac
