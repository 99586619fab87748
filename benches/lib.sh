# Shared by the benchmark scripts (sourced, not run): the namespace lab
#   server $SRV --s0==r1-- router $PUB/$RLAN (masquerade oifname r1) --r2==c0-- client $CLI
# and the helpers to run things in it. The sourcing script sets P (a prefix unique to this
# run), NS_S, NS_R, NS_C, SRV, PUB, RLAN, CLI and the array PIDS before sourcing.

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

in_s() { ip netns exec "$NS_S" "$@"; }
in_r() { ip netns exec "$NS_R" "$@"; }
in_c() { ip netns exec "$NS_C" "$@"; }

# bg OUT NS CMD...: starts CMD in namespace NS in the background, remembering its pid
# (ip netns exec execs the command, so the pid is the tool's own).
bg() {
    local out=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$@" >"$out" 2>"$out.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

wait_file() { # file timeout_s
    local i=0
    while [ ! -s "$1" ]; do
        sleep 0.02
        i=$((i + 1))
        [ $i -lt $(($2 * 50)) ] || { echo "timeout waiting for $1" >&2; return 1; }
    done
}

# Kills everything started here and in the lab's namespaces, then deletes them.
lab_down() {
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for ns in "$NS_S" "$NS_R" "$NS_C"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
    done
    sleep 0.3
    for ns in "$NS_S" "$NS_R" "$NS_C"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
}

# Creates the three namespaces, links, addresses and routes; the router forwards and
# masquerades what leaves towards the server.
lab_up() {
    local ns x
    for ns in "$NS_S" "$NS_R" "$NS_C"; do
        ip netns add "$ns"
        ip netns exec "$ns" ip link set lo up
    done
    ip link add r1 netns "$NS_R" type veth peer name s0 netns "$NS_S"
    ip link add r2 netns "$NS_R" type veth peer name c0 netns "$NS_C"
    in_s ip addr add "$SRV/24" dev s0
    in_r ip addr add "$PUB/24" dev r1
    in_r ip addr add "$RLAN/24" dev r2
    in_c ip addr add "$CLI/24" dev c0
    for x in "$NS_S s0" "$NS_R r1" "$NS_R r2" "$NS_C c0"; do
        set -- $x
        ip netns exec "$1" ip link set "$2" up
    done
    in_s ip route add default via "$PUB"
    in_c ip route add default via "$RLAN"
    in_r sysctl -qw net.ipv4.ip_forward=1
    in_r nft -f - <<'NFT'
table ip lab {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "r1" masquerade
    }
}
NFT
}
