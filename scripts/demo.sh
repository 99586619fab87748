#!/usr/bin/env bash
# Demonstration (root only, under a minute after the build): two LAN hosts
# behind one masquerading router call the same PPTP server with the SAME
# Call ID at the same time; pptp-alg gives each call its own NAT id, and each
# host gets back exactly its own GRE echoes.
#
#   scripts/demo.sh [--release] [--no-offload]
#
# Builds the binaries, creates a namespace lab (scripts/lab.sh, names
# pptpdemo-<pid>-*), runs the daemon in the router, the pptp-peer server on
# the WAN side and two pptp-peer clients on the LAN side, and prints the
# daemon's translation table taken while the calls are up, what each client
# received, and the daemon's call log. Everything is removed on exit, also on
# failure or Ctrl-C. Exit status 0 only if every client got exactly its own
# echoes and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
daemon_flags=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        --no-offload) daemon_flags+=(--no-offload) ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "demo.sh: unknown argument $arg" >&2
            exit 2
            ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: needs root (network namespaces, nftables, raw sockets)" >&2
    exit 1
fi
for tool in ip nft cargo awk; do
    command -v "$tool" >/dev/null || {
        echo "demo.sh: $tool is not installed" >&2
        exit 1
    }
done

if [ "$profile" = release ]; then
    cargo build --quiet --release --bins
else
    cargo build --quiet --bins
fi
bin=$PWD/target/$profile
ALG=$bin/pptp-alg
PEER=$bin/pptp-peer

LAB=pptpdemo-$$
R=$LAB-r
S=$LAB-s
SERVER=10.213.2.2
CALL_ID=1000
GRE_COUNT=3
HOLD=4
TAGS=(alice bob)

work=$(mktemp -d /tmp/pptpdemo.XXXXXX)
SOCK=$work/status.sock
pids=()
cleaned=0
cleanup() {
    [ "$cleaned" = 1 ] && return
    cleaned=1
    local p
    # Our own processes, by pid: clients, server, then the daemon (SIGTERM
    # makes it remove its nftables table).
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        timeout 5 tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
    done
    scripts/lab.sh destroy "$LAB" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "demo.sh: interrupted" >&2; exit 130' INT TERM

# Waits up to $2 seconds for file $1 to contain the extended regex $3.
wait_for_line() {
    local file=$1 secs=$2 re=$3 i
    for ((i = 0; i < secs * 20; i++)); do
        grep -Eq "$re" "$file" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "demo.sh: timed out waiting for /$re/ in $file:" >&2
    sed 's/^/    /' "$file" >&2
    return 1
}

section() {
    printf '\n=== %s\n' "$*"
}

section "lab"
scripts/lab.sh create "$LAB" "${#TAGS[@]}"

section "starting pptp-alg in the router ($R)"
ip netns exec "$R" "$ALG" run --install-rules --status-socket "$SOCK" --state-file "$work/state.json" --log-level info \
    "${daemon_flags[@]}" 2>"$work/alg.log" &
pids+=($!)
alg_pid=$!
wait_for_line "$work/alg.log" 20 'ready:|ERROR'
if grep -q ERROR "$work/alg.log"; then
    cat "$work/alg.log" >&2
    exit 1
fi
grep -E 'queue backend|ready:' "$work/alg.log" | sed 's/^/    /'

section "starting pptp-peer server in $S ($SERVER)"
ip netns exec "$S" "$PEER" server --bind "$SERVER" --duration 50 \
    >"$work/server.json" 2>"$work/server.log" &
pids+=($!)
server_pid=$!
wait_for_line "$work/server.log" 10 'listening on'

section "two clients call $SERVER, both with Call ID $CALL_ID"
client_pids=()
for i in "${!TAGS[@]}"; do
    tag=${TAGS[$i]}
    ns=$LAB-c$((i + 1))
    addr=10.213.1.$((i + 2))
    echo "    $tag: $addr in $ns"
    ip netns exec "$ns" "$PEER" client --server "$SERVER" --call-id "$CALL_ID" \
        --tag "$tag" --gre-count "$GRE_COUNT" --hold "$HOLD" --timeout 5 \
        >"$work/$tag.json" 2>"$work/$tag.log" &
    pids+=($!)
    client_pids+=($!)
done

# The status table while both calls are up (the clients hold them for
# $HOLD s): once both are established and their echoes are counted, or 1.5 s
# after they are established (with the kernel fast path the daemon reads the
# per-call counters only every few seconds). Table rows of calls:
# INSIDE OUTSIDE NAT-ID STATE AGE PKTS-IN PKTS-OUT.
table=
up_since=
for ((i = 0; i < 150; i++)); do
    sleep 0.1
    snap=$("$ALG" status --socket "$SOCK" 2>/dev/null) || continue
    up=$(awk '$4 == "established"' <<<"$snap" | wc -l)
    if [ "$up" -lt "${#TAGS[@]}" ]; then
        [ -n "$up_since" ] && break
        continue
    fi
    table=$snap
    up_since=${up_since:-$i}
    counted=$(awk -v n="$GRE_COUNT" '$4 == "established" && $6 >= n' <<<"$snap" | wc -l)
    if [ "$counted" -ge "${#TAGS[@]}" ] || [ $((i - up_since)) -ge 15 ]; then
        break
    fi
done
section "pptp-alg status (while the calls are up)"
if [ -n "$table" ]; then
    # Counters that are still zero are left out.
    grep -Ev '^  [a-z_]+ +0$' <<<"$table" | sed 's/^/    /'
    echo "    (counters still at zero are omitted)"
    if grep -q 'kernel fast path: on' <<<"$table"; then
        echo "    (the kernel fast path translates the echoes; the daemon reads its per-call"
        echo "     counters every 10 s, so PKTS IN may still show 0)"
    fi
else
    echo "    (the calls were never seen up together)"
fi

failed=0
for i in "${!TAGS[@]}"; do
    wait "${client_pids[$i]}" || true
done
kill -TERM "$server_pid" 2>/dev/null || true
wait "$server_pid" || true

# Fields of the clients' one-line JSON summaries (their strings hold no quotes).
json_str() { grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | sed "s/^\"$1\":\"//; s/\"\$//"; }
gre_records() { grep -o '{"from":"[^"]*","to":"[^"]*",[^}]*"payload":"[^"]*"}' || true; }

section "what each client received (GRE payloads)"
for tag in "${TAGS[@]}"; do
    f=$work/$tag.json
    if ! grep -q '"role":"client"' "$f"; then
        echo "    $tag: no summary; its log:"
        sed 's/^/        /' "$work/$tag.log"
        failed=1
        continue
    fi
    local_addr=$(json_str local <"$f")
    nat=$(awk -v k="${local_addr%%:*}:$CALL_ID" '$1 == k {print $3}' <<<"$table")
    echo "    $tag ($local_addr, own Call ID $CALL_ID, NAT id ${nat:-?}):"
    gre_records <"$f" | while read -r rec; do
        from=$(json_str from <<<"$rec")
        id=$(grep -o '"call_id":[0-9]*' <<<"$rec" | cut -d: -f2)
        echo "        from $from call id $id: $(json_str payload <<<"$rec")"
    done
    want=$(for ((s = 0; s < GRE_COUNT; s++)); do echo "echo:$tag:call$CALL_ID:$s"; done | sort)
    got=$(gre_records <"$f" | while read -r rec; do json_str payload <<<"$rec"; done | sort)
    if grep -q '"ok":true' "$f" && [ "$got" = "$want" ]; then
        echo "        -> OK: exactly its own $GRE_COUNT echoes"
    else
        echo "        -> WRONG: expected exactly:" $want
        grep -o '"errors":\[[^]]*\]' "$f" | sed 's/^/           /'
        failed=1
    fi
done
if [ -n "$table" ]; then
    ncalls=$(awk '$4 == "established"' <<<"$table" | wc -l)
    nat_ids=$(awk '$4 == "established" {print $3}' <<<"$table" | sort -u | wc -l)
    if [ "$ncalls" -ne "${#TAGS[@]}" ] || [ "$nat_ids" -ne "$ncalls" ]; then
        echo "    status showed $ncalls call(s) with $nat_ids distinct NAT id(s)"
        failed=1
    fi
else
    echo "    the daemon's status was not available"
    failed=1
fi

section "stopping pptp-alg (SIGTERM)"
kill -TERM "$alg_pid"
wait "$alg_pid" || {
    echo "    pptp-alg exited with status $?"
    failed=1
}
section "pptp-alg log: calls started and ended"
grep -E 'call (started|ended)|refused' "$work/alg.log" | sed 's/^/    /' || echo "    (none)"
if grep -Eq ' (ERROR|WARN) ' "$work/alg.log"; then
    section "pptp-alg warnings and errors"
    grep -E ' (ERROR|WARN) ' "$work/alg.log" | sed 's/^/    /'
fi
if ip netns exec "$R" nft list table ip pptp_alg >/dev/null 2>&1; then
    echo "    table ip pptp_alg is still installed after the stop"
    failed=1
fi

echo
if [ "$failed" = 0 ]; then
    echo "demo: OK: each client received exactly its own echoes through one NAT address"
else
    echo "demo: FAILED (see above)"
fi
exit "$failed"
