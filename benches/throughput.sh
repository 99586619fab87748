#!/usr/bin/env bash
# GRE throughput, latency and control-plane benchmark of pptp-alg in network namespaces.
#
#   benches/throughput.sh [--quick] [--reps N] [--out DIR]
#
# Root only; not part of CI. Builds the tools, creates three namespaces
#
#   server 10.213.1.2 --s0==r1-- router (masquerade oifname r1) --r2==c0-- client 10.213.2.2
#                                10.213.1.1 (public)  10.213.2.1
#
# and measures, configurations interleaved in one run (order rotated every repetition):
#   a    conntrack + masquerade, no ALG, GRE that needs no translation (Call ID 0 both ways:
#        the client sends first, the server's GRE matches the reply tuple)
#   b    the kernel PPTP helper (ct helper "pptp" on tcp/1723), after real control exchanges
#   c    pptp-alg run --install-rules --no-offload (all GRE through NFQUEUE)
#   d    pptp-alg run --install-rules (kernel fast path)
#   min  benches/tools/nfq_minimal.rs on the same queue rule as c (yardstick for c)
#   gen  the generator alone, sending into an ifb device, which drops (its ceiling)
#   e    (only with ALT_ALG=/path/to/pptp-alg) d with another build: an A/B of a change
#   dn   d with the daemon at nice DN_NICE (default -10): does priority shorten its tail?
# GRE always flows server -> client: 76-byte enhanced GRE (12-byte header + 64-byte payload
# with sequence number and send timestamps), 96 bytes on the wire as IPv4.
# Results: a table on stdout; raw data in DIR (default /tmp/pptp-bench.XXXX).
#
# --no-rps  leaves the router's receive work on the generator's core (see RPS below).
# --profile "CFG..."  instead: a perf profile of each configuration at a fixed rate.
# --flood  instead: the control plane under a flood of GRE with Call IDs no call uses, aimed
#          at the public address (issue 16): Echo round trips on a live control connection
#          idle and under the flood, new calls set up during it, the router's NFQUEUE drops
#          and conntrack count before and after, GRE that reached the inside. Cases CFG:CALLS
#          in FLOOD_CASES (default "a:10 b:10 c:10 d:10 b:1000"); FLOOD_RATE (150000 pps),
#          FLOOD_DUR (10 s), FLOOD_IDLE (5 s of idle echoes first), FLOOD_NEW (200 calls),
#          ECHO_MS (10 ms between echoes); FLOOD_DROP=1 drops GRE still addressed to the
#          public address right after pptp-alg's gre_in (an experiment); FLOOD_PEERS=router
#          puts the PPTP peers on the router's core (see there).
# Environment: CFGS (one-call configurations, default "gen a b c d min"), SIZES (many-call
# sizes), CONTROL=0 (skip the control plane), ALT_ALG (adds configuration e), PERF_ARGS
# (more `perf record` options for --profile, e.g. -g), GRE_SINK=drop (the rate trials count and
# drop the GRE at the client's link, in its netdev ingress hook, instead of handing it to a
# receiver process: the router's forwarding alone; instead of latency trials, the router
# core's CPU per packet at CPU_RATE pps, 100,000 by default).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
PROFILE=
FLOOD=0
CFGS=${CFGS-gen a b c d min}
CONTROL=${CONTROL:-1}
CTL_CFGS=${CTL_CFGS-c d}  # configurations whose setup and teardown rates the control part measures
OCRP_RPS=${OCRP_RPS:-on}  # RPS for the OCRP-to-first-GRE case (see there)
ALT_ALG=${ALT_ALG:-}
[ -z "$ALT_ALG" ] || CFGS="$CFGS e"
RPS=1
REPS=5
OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --no-rps) RPS=0 ;;
        --profile) PROFILE=$2; shift ;;
        --flood) FLOOD=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "throughput.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "throughput.sh: needs root" >&2; exit 1; }

if [ "$QUICK" = 1 ]; then
    REPS=1
    SIZES=${SIZES-1000}   # many-call sizes besides 1
    TRIAL=0.3             # seconds per search trial
    MAXDUR=0.5            # seconds at full offered load
    IDLE_DUR=2            # seconds of latency at idle
    FIXED_DUR=1           # seconds of latency at the fixed rate
    SEARCH_STEPS=5
    OCRP_CALLS=50
    CTL_CALLS=10000
else
    SIZES=${SIZES-100 1000 10000}
    TRIAL=0.5
    MAXDUR=1
    IDLE_DUR=4
    FIXED_DUR=2
    SEARCH_STEPS=6
    OCRP_CALLS=200
    CTL_CALLS=10000
fi
IDLE_RATE=1000            # packets per second for "idle" latency
FIXED_RATE=${FIXED_RATE:-20000} # packets per second for latency under load
CPU_RATE=${CPU_RATE:-100000} # packets per second for CPU per packet (GRE_SINK=drop)
NCPU=$(nproc)
GEN_CPU=$((NCPU - 1))     # the generator's own core
OTHER_CPUS=0-$((NCPU > 1 ? NCPU - 2 : 0))

P=ptb$$
NS_S=$P-srv NS_R=$P-rtr NS_C=$P-cli
SRV=10.213.1.2 PUB=10.213.1.1 RLAN=10.213.2.1 CLI=10.213.2.2 SINK=10.213.9.2
WORK=${OUT:-$(mktemp -d /tmp/pptp-bench.XXXX)}
mkdir -p "$WORK"
RES=$WORK/results.jsonl
: >"$RES"
PIDS=()
DAEMON_PID=
DAEMON_N=0
EXPECT_MAX_OLD=

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

cleanup() {
    set +e
    lab_down
    [ -z "${BACKLOG_OLD:-}" ] || sysctl -qw net.core.netdev_max_backlog="$BACKLOG_OLD"
    if [ -n "$EXPECT_MAX_OLD" ]; then
        sysctl -qw net.netfilter.nf_conntrack_expect_max="$EXPECT_MAX_OLD"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

emit() { echo "$1" >>"$RES"; }

# ------------------------------------------------------------------ build and lab

log "building (release)"
(cd "$ROOT" && cargo build --release --quiet --bins --example gre-load --example nfq-minimal)
BIN=$ROOT/target/release
GL=$BIN/examples/gre-load
NFQMIN=$BIN/examples/nfq-minimal
ALG=$BIN/pptp-alg

log "lab $P in $WORK"
lab_up
in_s ip link add d0 type ifb # no dummy driver here; ifb drops what it is given
in_s ip addr add 10.213.9.1/24 dev d0
in_s ip link set d0 up
in_r sysctl -qw net.ipv4.conf.all.rp_filter=0
# veth hands a packet to the receiving namespace on the sender's core, so without RPS the
# router's whole forwarding path runs on the generator's core, and every rate includes the
# generator's own cost. For the rate trials, RPS on the router's outside link moves the
# forwarding (and the client's receive) to the other core(s): the generator's core then holds
# only the generator, as if the traffic came from another machine. The latency trials run
# without it: there RPS would add a cross-core wake-up that a router's NIC does not. So do
# the userspace paths c and min: with two cores RPS would put the kernel's receive work on
# the consumer's core, and both collapse (see benches/README.md).
RPS_MASK=0
if [ "$RPS" = 1 ] && [ "$NCPU" -gt 1 ]; then
    RPS_MASK=$(printf '%x' $(((1 << GEN_CPU) - 1)))
    log "RPS for rate trials: router's r1 receive work on cpu mask $RPS_MASK, generator alone on cpu $GEN_CPU"
fi
# GRE_SINK=drop: a counter and a drop in the client link's netdev ingress hook stand for the
# receiver during a trial (sink_on), and give what reached the client (sink_off).
GRE_SINK=${GRE_SINK:-}
sink_on() {
    in_c nft -f - <<'NFT'
table netdev sink {
    chain in {
        type filter hook ingress device "c0" priority 0; policy accept;
        ip protocol gre counter drop
    }
}
NFT
}
sink_off() { # -> packets counted
    in_c nft -j list table netdev sink | jq '[.nftables[].rule? // empty | .expr[] | .counter? // empty | .packets] | add'
    in_c nft delete table netdev sink
}
if [ "$GRE_SINK" = drop ]; then
    sink_on && sink_off >/dev/null || { echo "throughput.sh: GRE_SINK=drop needs a netdev ingress hook" >&2; exit 1; }
fi
RPS_NOW=false
rps() { # on|off [LINK]: the router's outside link r1 unless LINK
    local m=0
    RPS_NOW=false
    [ "$1" = on ] && m=$RPS_MASK && [ "$m" != 0 ] && RPS_NOW=true
    in_r sh -c "echo $m >/sys/class/net/${2:-r1}/queues/rx-0/rps_cpus"
}
# The kernel helper keeps two expectations per call for five minutes; 10,000 calls need more
# than the default 4096. This limit is global (init namespace only); restored on exit.
# With RPS, packets wait in the other core's backlog (default 1,000 packets, 3 ms at 300k pps):
# a pause of the core longer than that on this shared VM loses packets at any rate. 10,000
# is the size of a large NIC receive ring. Global, restored on exit.
BACKLOG_OLD=$(sysctl -n net.core.netdev_max_backlog)
sysctl -qw net.core.netdev_max_backlog=10000
EXPECT_MAX_OLD=$(sysctl -n net.netfilter.nf_conntrack_expect_max)
if [ "$EXPECT_MAX_OLD" -lt 65536 ]; then
    sysctl -qw net.netfilter.nf_conntrack_expect_max=65536
else
    EXPECT_MAX_OLD=
fi

# ------------------------------------------------------------------ GRE trials

# Busy time (ns) of the cores besides the generator's, all work (user, system, softirq),
# from /proc/stat (USER_HZ ticks).
other_busy_ns() {
    awk -v g="cpu$GEN_CPU" -v hz="$(getconf CLK_TCK)" '
        /^cpu[0-9]/ && $1 != g { b += $2 + $3 + $4 + $7 + $8 + $9 }
        END { printf "%.0f", b * 1e9 / hz }' /proc/stat
}

# Idle time (us) of the cores besides the generator's, from cpuidle's residency counters
# (microseconds, unlike /proc/stat's ticks), or -1 without cpuidle.
other_idle_us() {
    local c t=0 n=0 f
    for c in /sys/devices/system/cpu/cpu[0-9]*; do
        [ "${c##*/cpu}" != "$GEN_CPU" ] || continue
        for f in "$c"/cpuidle/state*/time; do
            [ -r "$f" ] || continue
            t=$((t + $(cat "$f")))
            n=$((n + 1))
        done
    done
    [ "$n" -gt 0 ] && echo "$t" || echo -1
}

# [[processed, dropped, time_squeeze] per CPU] from /proc/net/softnet_stat (hexadecimal;
# global, not per namespace): `dropped` counts packets refused by a full backlog
# (netdev_max_backlog), which the flood and, with RPS, the server's segments share; with
# RPS, the GRE under test (where a saturated trial loses what it does not deliver).
softnet_json() {
    python3 -c 'import json; print(json.dumps([[int(w, 16) for w in l.split()[:3]] for l in open("/proc/net/softnet_stat")]))'
}

# CPU time (ns) a process has run, all threads (schedstat: not time spent on other tasks).
proc_cpu_ns() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END{printf "%d", s}'
}

# trial CFG CALLS REP KIND RATE DURATION [IDS_FILE]: one receiver + one sender run; appends a
# JSON line to results and sets T_SENT, T_RECV.
trial() {
    local cfg=$1 calls=$2 rep=$3 kind=$4 rate=$5 dur=$6 ids=${7:-}
    local r=$WORK/recv.json ready=$WORK/recv.ready s=$WORK/send.json rpid=
    rm -f "$ready" "$r"
    if [ "$GRE_SINK" = drop ] && [ "$cfg" != gen ]; then
        sink_on
    else
        bg "$r" "$NS_C" taskset -c "$OTHER_CPUS" "$GL" recv --ready-file "$ready" --idle-ms 300 \
            --timeout "$(awk -v d="$dur" 'BEGIN{print d+10}')"
        rpid=$LAST_PID
        wait_file "$ready" 10
    fi
    local dst=$PUB idargs=(--call-id 0) tick=()
    # Fixed-rate CPU trials: bursts every 100 us, as a NIC's interrupt moderation hands
    # them over; one packet per wake-up would mostly measure this VM's idle exits.
    [ "$kind" = cpu ] && tick=(--tick-us 100)
    [ "$cfg" = gen ] && dst=$SINK
    [ -n "$ids" ] && idargs=(--ids-file "$ids")
    local c0=0 c1=0 o0 o1 i0 i1 w0 w1
    case "$kind:$cfg" in
        idle:* | fixed:* | *:c | *:min) rps off ;;
        *) rps on ;;
    esac
    [ -n "$DAEMON_PID" ] && c0=$(proc_cpu_ns "$DAEMON_PID")
    local sn0 sn1
    sn0=$(softnet_json)
    o0=$(other_busy_ns)
    i0=$(other_idle_us)
    w0=$(date +%s%N)
    in_s taskset -c "$GEN_CPU" "$GL" send --dst "$dst" --rate "$rate" --duration "$dur" \
        "${idargs[@]}" "${tick[@]}" >"$s"
    [ -z "$rpid" ] && sleep 0.05 # the backlog drains
    w1=$(date +%s%N)
    i1=$(other_idle_us)
    o1=$(other_busy_ns)
    sn1=$(softnet_json)
    [ -n "$DAEMON_PID" ] && c1=$(proc_cpu_ns "$DAEMON_PID")
    if [ -z "$rpid" ]; then
        echo "{\"received\":$(sink_off),\"sink\":\"drop\"}" >"$r"
    elif [ "$cfg" = gen ]; then
        stop_pid "$rpid"
    else
        wait "$rpid" || true
    fi
    T_SENT=$(jq -r .sent "$s")
    T_ACH=$(jq -r .rate_achieved "$s")
    T_RATE=$rate
    T_RECV=$(jq -r '.received // 0' "$r" 2>/dev/null || echo 0)
    emit "{\"cfg\":\"$cfg\",\"calls\":$calls,\"rep\":$rep,\"kind\":\"$kind\",\"rate\":$rate,\"daemon_cpu_ns\":$((c1 - c0)),\"other_busy_ns\":$((o1 - o0)),\"other_idle_us\":$([ "$i0" -ge 0 ] && echo $((i1 - i0)) || echo null),\"other_cpus\":$((NCPU - 1)),\"window_ns\":$((w1 - w0)),\"softnet_before\":$sn0,\"softnet_after\":$sn1,\"rps\":$RPS_NOW,\"send\":$(cat "$s"),\"recv\":$(cat "$r" 2>/dev/null || echo null)}"
}

# A trial passes when at most 0.5% of what was sent is lost and the generator kept up with the
# schedule (it sends late rather than skipping, so a slow generator shows as a lower rate).
ok_loss() {
    [ $((T_RECV * 1000)) -ge $((T_SENT * 995)) ] &&
        awk -v a="$T_ACH" -v r="$T_RATE" 'BEGIN{exit !(a >= 0.99 * r)}'
}

# gre_suite CFG CALLS REP IDS [LAT]: saturation, no-loss search, and (LAT=1) latency.
gre_suite() {
    local cfg=$1 calls=$2 rep=$3 ids=${4:-} lat=${5:-1}
    trial "$cfg" "$calls" "$rep" warmup 20000 0.3 "$ids"
    trial "$cfg" "$calls" "$rep" max 0 "$MAXDUR" "$ids"
    [ "$cfg" = gen ] && return 0
    # Search for the highest rate with <= 0.5% loss: start just under the delivered rate,
    # step up by 1.5x while trials pass or down by 2x while they fail until a pass and a
    # fail bracket it, then bisect. Starting from the delivered rate alone would miss the
    # NFQUEUE paths under RPS: at full offered load they collapse (the kernel's receive
    # work starves the consumer), far below what they carry without loss.
    local d=$((T_RECV * 10 / $(awk -v m="$MAXDUR" 'BEGIN{print int(m*10)}')))
    local offered=${T_ACH%.*}
    local lo=0 hi=0 best=0 i mid=$((d * 9 / 10))
    [ $mid -ge 1000 ] || mid=1000
    for i in $(seq 1 $((SEARCH_STEPS + 2))); do
        trial "$cfg" "$calls" "$rep" search "$mid" "$TRIAL" "$ids"
        if ok_loss; then
            best=$mid
            lo=$mid
        else
            hi=$mid
        fi
        if [ $lo -gt 0 ] && [ $hi -gt 0 ]; then
            mid=$(((lo + hi) / 2))
        elif [ $hi -eq 0 ]; then
            mid=$((lo * 3 / 2))
            [ $mid -le "$offered" ] || mid=$offered
            [ $mid -gt $lo ] || break
        else
            mid=$((hi / 2))
            [ $mid -ge 500 ] || break
        fi
    done
    emit "{\"cfg\":\"$cfg\",\"calls\":$calls,\"rep\":$rep,\"kind\":\"noloss\",\"rate\":$best}"
    log "  $cfg calls=$calls rep=$rep: no-loss ~$best pps (saturated delivery $d pps)"
    if [ "$GRE_SINK" = drop ]; then
        # The router's CPU per packet at a fixed rate every path carries: busy time of its
        # core (the window minus cpuidle's idle time) over the packets delivered.
        trial "$cfg" "$calls" "$rep" cpu "$CPU_RATE" 3 "$ids"
    elif [ "$lat" = 1 ]; then
        trial "$cfg" "$calls" "$rep" idle "$IDLE_RATE" "$IDLE_DUR" "$ids"
        trial "$cfg" "$calls" "$rep" fixed "$FIXED_RATE" "$FIXED_DUR" "$ids"
    fi
}

# ------------------------------------------------------------------ configurations

PAC_PID=
PNS_PID=
# The control tools' CPU pinning (the flood keeps them off the generator's core).
CTL_PIN=(env)

start_daemon() { # extra args...
    local sock=$WORK/status.sock
    rm -f "$sock"
    # A fresh state file for every start: no calls carried over from the previous
    # configuration, none from or to a daemon outside this lab. (`--state-file ""`,
    # documented as "none", is rejected by the CLI at the time of writing.)
    DAEMON_N=$((DAEMON_N + 1))
    # Pinned off the generator's core, like the minimal loop and the receiver: left to the
    # scheduler, either consumer sometimes landed beside the busy-waiting generator, and c/min
    # swung between 0.6x and 4.6x from one repetition to the next.
    bg "$WORK/daemon.log" "$NS_R" nice -n "${ALG_NICE:-0}" taskset -c "$OTHER_CPUS" "${ALG_RUN:-$ALG}" run --install-rules --status-socket "$sock" \
        --max-calls 20000 --max-calls-per-host 16384 --max-connections 20000 \
        --state-file "$WORK/state.$DAEMON_N.json" --log-level warn "$@"
    DAEMON_PID=$LAST_PID
    local i
    for i in $(seq 1 250); do
        [ -S "$sock" ] && in_r "${ALG_RUN:-$ALG}" status --socket "$sock" --json >/dev/null 2>&1 && return 0
        sleep 0.02
    done
    echo "daemon did not start:" >&2
    cat "$WORK/daemon.log.err" >&2
    return 1
}

stop_daemon() {
    [ -n "$DAEMON_PID" ] && stop_pid "$DAEMON_PID"
    DAEMON_PID=
}

# {"kb": VmRSS, "anon_kb": RssAnon, "file_kb": RssFile} of the daemon.
daemon_rss() {
    awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^RssFile/{f=$2}
        END{printf "\"kb\":%d,\"anon_kb\":%d,\"file_kb\":%d", r, a, f}' "/proc/$DAEMON_PID/status"
}

start_pac() { # extra args...
    : >"$WORK/ids"
    bg "$WORK/pac.out" "$NS_S" "${CTL_PIN[@]}" "$GL" pac --bind $SRV --ids-out "$WORK/ids" "$@"
    PAC_PID=$LAST_PID
    sleep 0.1
}

# start_pns CONNS CALLS WINDOW [extra]: returns once all calls are up.
start_pns() {
    local conns=$1 calls=$2 window=$3
    shift 3
    rm -f "$WORK/pns.ready"
    bg "$WORK/pns.out" "$NS_C" "${CTL_PIN[@]}" "$GL" pns --server $SRV --conns "$conns" --calls "$calls" \
        --window "$window" --ready-file "$WORK/pns.ready" "$@"
    PNS_PID=$LAST_PID
    if ! wait_file "$WORK/pns.ready" 300; then
        cat "$WORK/pns.out.err" >&2
        return 1
    fi
}

stop_calls() {
    [ -n "$PNS_PID" ] && stop_pid "$PNS_PID"
    [ -n "$PAC_PID" ] && stop_pid "$PAC_PID"
    PNS_PID= PAC_PID=
}

cfg_up() { # CFG CALLS [PNS_ARGS...]: with PNS_ARGS (the flood), a holds calls as well
    local cfg=$1 calls=$2
    shift 2
    case "$cfg" in
        a)
            # The client speaks first (Call ID 0), so the server's Call ID 0 GRE is a reply.
            in_c "$GL" send --dst $SRV --rate 1000 --count 3 --call-id 0 >/dev/null
            if [ $# -gt 0 ]; then
                start_pac
                start_pns 1 "$calls" 32 "$@"
            fi
            ;;
        b)
            in_r nft -f - <<'EOF'
table ip labhelper {
    ct helper pptp {
        type "pptp" protocol tcp
        l3proto ip
    }
    chain pre {
        type filter hook prerouting priority filter; policy accept;
        tcp dport 1723 ct helper set "pptp"
    }
}
EOF
            start_pac
            # The kernel helper tracks one call per control connection.
            start_pns "$calls" 1 1 "$@"
            ;;
        c | d | dn | e)
            case "$cfg" in
                c) start_daemon --no-offload ;;
                d) start_daemon ;;
                dn) ALG_NICE=${DN_NICE:--10} start_daemon ;;
                e) ALG_RUN=$ALT_ALG start_daemon ;;
            esac
            start_pac
            start_pns 1 "$calls" 32 "$@"
            ;;
        min)
            in_r "$ALG" rules install --no-offload >/dev/null
            bg "$WORK/nfqmin.out" "$NS_R" taskset -c "$OTHER_CPUS" "$NFQMIN" --to $CLI
            DAEMON_PID=$LAST_PID
            sleep 0.2
            ;;
        gen) ;;
    esac
}

cfg_down() {
    local cfg=$1
    case "$cfg" in
        a) stop_calls ;;
        b)
            stop_calls
            in_r nft delete table ip labhelper
            ;;
        c | d | dn | e)
            stop_calls
            stop_daemon
            ;;
        min)
            in_r "$ALG" rules remove >/dev/null
            stop_daemon
            ;;
    esac
    in_r conntrack -F >/dev/null 2>&1 || true
}

ids_for() { # CFG -> file of Call IDs the server should use ("" = Call ID 0)
    case "$1" in
        b | c | d | dn | e) echo "$WORK/ids" ;;
        *) echo "" ;;
    esac
}

rotate() { # REP list... -> the list rotated by REP
    local n=$1
    shift
    local a=("$@") k=${#a[@]} i
    for i in $(seq 0 $((k - 1))); do printf '%s ' "${a[$(((i + n) % k))]}"; done
}

# ------------------------------------------------------------------ profile

# --profile "CFG...": for each configuration (one call), a fixed rate every one of them
# sustains, sampled by `perf record -a`; per configuration the symbols by share of samples in
# DIR/profile.CFG.txt, and the total sample count in the log (samples / packets delivered is
# the per-packet scale: see benches/README.md).
if [ -n "$PROFILE" ]; then
    command -v perf >/dev/null || { echo "throughput.sh: --profile needs perf" >&2; exit 1; }
    PROF_RATE=${PROF_RATE:-100000}
    for cfg in $PROFILE; do
        cfg_up "$cfg" 1
        ids=$(ids_for "$cfg")
        trial "$cfg" 1 0 warmup 20000 0.3 "$ids"
        perf record ${PERF_ARGS:-} -a -F 4999 -o "$WORK/perf.$cfg.data" -- sleep 2.5 >/dev/null 2>&1 &
        ppid=$!
        sleep 0.2
        trial "$cfg" 1 0 profile "$PROF_RATE" 2 "$ids"
        wait "$ppid" || true
        perf report -i "$WORK/perf.$cfg.data" --sort sym --stdio 2>/dev/null |
            grep '%' | grep -v '^#' | head -60 >"$WORK/profile.$cfg.txt" || true
        total=$(perf report -i "$WORK/perf.$cfg.data" --sort comm --stdio 2>/dev/null |
            awk '/^# Samples:/{print $3; exit}' || true)
        log "  $cfg: sent $T_SENT received $T_RECV at $PROF_RATE pps; $total samples"
        cfg_down "$cfg"
    done
    log "profiles in $WORK/profile.*.txt"
    exit 0
fi

# ------------------------------------------------------------------ flood

# --flood (issue 16): with CALLS calls up, FLOOD_RATE pps of enhanced GRE with Call IDs that no
# call uses, from the server to the public address, for FLOOD_DUR s. Measured per case:
# - Echo-Request/Reply round trips on the first of the held calls' control connections, one
#   every ECHO_MS ms, FLOOD_IDLE s before the flood ("idle") and during it;
# - FLOOD_NEW new calls during the flood, each on a new connection from the client (connect,
#   SCCRQ, OCRQ; paced evenly over the flood), each one's setup time;
# - the router's /proc/net/netfilter/nfnetlink_queue per queue (waiting, queue full drops,
#   socket full drops, packets queued) and `conntrack -C` just before and right after it;
# - GRE that reached the client (a raw socket there), the rate the generator achieved, and
#   for pptp-alg its unknown-GRE counters.
# The flood's ids: every id but those with low byte 0x00 (the new calls all use inside id
# 0x4000, so pptp-alg gives each its own block and the low byte stays 0x00), 0x0100-0x01ff
# (the held calls' ids, inside and NAT) and the client's ephemeral ports 58000-62999 (the
# Linux helper's NAT id is the masqueraded source port of the control connection, which
# masquerade keeps): about 58,000 ids, so a table that tracks them grows by as many.
if [ "$FLOOD" = 1 ]; then
    FLOOD_CASES=${FLOOD_CASES:-a:10 b:10 c:10 d:10 b:1000}
    FLOOD_RATE=${FLOOD_RATE:-150000}
    FLOOD_DUR=${FLOOD_DUR:-10}
    FLOOD_IDLE=${FLOOD_IDLE:-5}
    FLOOD_NEW=${FLOOD_NEW:-200}
    ECHO_MS=${ECHO_MS:-10}
    FLOOD_IDS=$WORK/flood.ids
    # The pac, the pns and the echoes are the two ends of the control plane, other machines,
    # not the router: they run on the generator's core, which sleeps between ticks of
    # FLOOD_TICK_US (100) us and sends what is due, and RPS on both router links leaves the
    # router's core to the router's packet work and the daemon. FLOOD_PEERS=router, the
    # layout before: the peers on the router's core, the generator busy-waiting on its own.
    FLOOD_PEERS=${FLOOD_PEERS:-gen}
    GEN_TICK=()
    if [ "$FLOOD_PEERS" = gen ]; then
        CTL_PIN=(taskset -c "$GEN_CPU")
        GEN_TICK=(--tick-us "${FLOOD_TICK_US:-100}")
    else
        CTL_PIN=(taskset -c "$OTHER_CPUS")
    fi
    in_c sysctl -qw net.ipv4.ip_local_port_range="58000 62999"
    python3 - "$FLOOD_IDS" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(1, 65536):
        if i & 0xff and not 0x0100 <= i <= 0x01ff and not 58000 <= i <= 62999:
            f.write(f"{i}\n")
PY
    log "flood: $(wc -l <"$FLOOD_IDS") unknown Call IDs at $FLOOD_RATE pps for $FLOOD_DUR s; cases $FLOOD_CASES; RPS $([ "$RPS_MASK" != 0 ] && echo on || echo off)"

    # {"QUEUE": [waiting, dropped (queue full), dropped (socket full), packets queued]} of the
    # router's queues (a queue appears while a process is bound to it).
    queues_json() {
        in_r cat /proc/net/netfilter/nfnetlink_queue |
            awk 'BEGIN{printf "{"} {printf "%s\"%s\":[%s,%s,%s,%s]", (NR>1?",":""), $1, $3, $6, $7, $8} END{printf "}"}'
    }
    # [[user, nice, system, idle, iowait, irq, softirq] per CPU] from /proc/stat (ticks).
    cpustat_json() {
        python3 -c 'import json; print(json.dumps([[int(w) for w in l.split()[1:8]] for l in open("/proc/stat") if l[:3] == "cpu" and l[3].isdigit()]))'
    }
    jfile() { # the JSON value in FILE, or null
        [ -s "$1" ] && jq -ce . "$1" 2>/dev/null || echo null
    }
    alg_unknown() { # pptp-alg's unknown-GRE counters, or null
        if [ -n "$DAEMON_PID" ]; then
            in_r "$ALG" status --socket "$WORK/status.sock" --json |
                jq -c '.stats | {gre_unknown_call, gre_unknown_kernel}' || echo null
        else
            echo null
        fi
    }

    flood_case() { # CFG CALLS REP
        local cfg=$1 n=$2 rep=$3 echo=$WORK/echo.txt new=$WORK/new
        rm -f "$echo" "$new.ready" "$WORK/leak.ready"
        if [ "$FLOOD_PEERS" = gen ]; then
            rps on r2
            rps on
        fi
        cfg_up "$cfg" "$n" --echo-interval-ms "$ECHO_MS" --echo-out "$echo"
        if [ "${FLOOD_DROP:-0}" = 1 ]; then
            # An experiment: GRE still addressed to the public address after pptp-alg's
            # gre_in (priority raw) is dropped right after it, instead of being delivered to
            # the router's own stack; what a kernel drop of unknown GRE would save.
            in_r nft -f - <<NFT
table ip labdrop {
    chain pre {
        type filter hook prerouting priority raw + 1; policy accept;
        ip daddr $PUB ip protocol gre counter drop
    }
}
NFT
        fi
        local up overlap
        up=$(jq -r .calls "$WORK/pns.ready")
        [ "$up" -eq "$n" ] || log "  $cfg: only $up of $n calls set up"
        overlap=$(grep -cxFf "$WORK/ids" "$FLOOD_IDS" || true)
        [ "$overlap" -eq 0 ] || log "  $cfg: $overlap held calls' ids are among the flood's"
        sleep "$FLOOD_IDLE"
        bg "$WORK/leak.json" "$NS_C" "${CTL_PIN[@]}" "$GL" recv --ready-file "$WORK/leak.ready" \
            --idle-ms 600000 --timeout "$((FLOOD_DUR + 120))"
        local leak_pid=$LAST_PID
        wait_file "$WORK/leak.ready" 10
        local q0 ct0 u0 q1 ct1 u1 t0 t1 gpid npid sn0 sn1 cs0 cs1
        q0=$(queues_json)
        sn0=$(softnet_json)
        cs0=$(cpustat_json)
        ct0=$(in_r conntrack -C)
        u0=$(alg_unknown)
        rps on
        local rps_flood=$RPS_NOW
        t0=$(date +%s%N)
        # At the highest CFS priority: a build sharing the generator's core made it fall to
        # half the rate (it sends late, never skips), and the flood with it.
        in_s nice -n -20 taskset -c "$GEN_CPU" "$GL" send --dst "$PUB" --rate "$FLOOD_RATE" \
            --duration "$FLOOD_DUR" --ids-file "$FLOOD_IDS" "${GEN_TICK[@]}" >"$WORK/flood.send.json" &
        gpid=$!
        sleep 0.5
        # New calls over the flood's middle: from 0.5 s in to 1 s before its end.
        bg "$new.out" "$NS_C" "${CTL_PIN[@]}" "$GL" pns --server "$SRV" --conns "$FLOOD_NEW" \
            --calls 1 --call-id 0x4000 --same-ids --threads 50 --conn-times --hold 0.01 \
            --conn-interval "$(awk -v d="$FLOOD_DUR" -v k="$FLOOD_NEW" 'BEGIN{print (d - 1.5) / k}')" \
            --ready-file "$new.ready"
        npid=$LAST_PID
        wait "$gpid"
        t1=$(date +%s%N)
        q1=$(queues_json)
        sn1=$(softnet_json)
        cs1=$(cpustat_json)
        ct1=$(in_r conntrack -C)
        u1=$(alg_unknown)
        [ "$FLOOD_PEERS" = gen ] || rps off
        wait "$npid" || log "  $cfg: the new calls' client failed: $(cat "$new.out.err")"
        stop_pid "$leak_pid"
        stop_calls
        [ "${FLOOD_DROP:-0}" = 1 ] && in_r nft delete table ip labdrop
        rps off r2
        rps off
        python3 - "$echo" "$t0" "$t1" >"$WORK/echo.json" <<'PY'
import json, sys
t0, t1 = int(sys.argv[2]), int(sys.argv[3])
idle, flood, lost = [], [], {"idle_lost": 0, "flood_lost": 0}
for line in open(sys.argv[1]):
    t, rtt = map(int, line.split())
    phase = "idle" if t < t0 else "flood" if t < t1 else None
    if phase and rtt < 0:  # no reply within the client's timeout
        lost[phase + "_lost"] += 1
    elif phase:
        (idle if phase == "idle" else flood).append(rtt / 1000.0)
print(json.dumps({"idle_us": idle, "flood_us": flood, **lost}))
PY
        emit "$(jq -cn --arg cfg "$cfg" --argjson calls "$n" --argjson rep "$rep" \
            --argjson rps "$rps_flood" --arg peers "$FLOOD_PEERS" --argjson flood_ns "$((t1 - t0))" \
            --argjson held "$(jfile "$WORK/pns.ready")" --argjson held_pns "$(jfile "$WORK/pns.out")" \
            --argjson echo "$(jfile "$WORK/echo.json")" --argjson send "$(jfile "$WORK/flood.send.json")" \
            --argjson leak "$(jfile "$WORK/leak.json")" --argjson new_pns "$(jfile "$new.out")" \
            --argjson new "$(jfile "$new.ready")" --argjson queues_before "$q0" --argjson queues_after "$q1" \
            --argjson conntrack_before "$ct0" --argjson conntrack_after "$ct1" \
            --argjson softnet_before "$sn0" --argjson softnet_after "$sn1" \
            --argjson cpustat_before "$cs0" --argjson cpustat_after "$cs1" --argjson gen_cpu "$GEN_CPU" \
            --argjson netdev_max_backlog "$(sysctl -n net.core.netdev_max_backlog)" \
            --argjson alg_before "$u0" --argjson alg_after "$u1" --argjson ids_overlap "$overlap" \
            --argjson conntrack_max "$(in_r cat /proc/sys/net/netfilter/nf_conntrack_max)" \
            '$ARGS.named + {kind: "flood"}')"
        log "  $(python3 "$ROOT/benches/report.py" --flood-line "$RES")"
        cfg_down "$cfg"
    }

    T0=$(date +%s)
    for rep in $(seq 1 "$REPS"); do
        log "repetition $rep/$REPS: flood"
        for c in $(rotate "$rep" $FLOOD_CASES); do
            flood_case "${c%%:*}" "${c##*:}" "$rep"
        done
    done
    log "done in $(($(date +%s) - T0)) s; raw results in $RES"
    python3 "$ROOT/benches/report.py" "$RES"
    exit 0
fi

# ------------------------------------------------------------------ run

T0=$(date +%s)
for rep in $(seq 1 "$REPS"); do
    log "repetition $rep/$REPS: one call"
    for cfg in $(rotate "$rep" $CFGS); do
        cfg_up "$cfg" 1
        gre_suite "$cfg" 1 "$rep" "$(ids_for "$cfg")"
        cfg_down "$cfg"
    done
    for n in $SIZES; do
        log "repetition $rep/$REPS: $n calls"
        for cfg in $(rotate "$rep" b d); do
            cfg_up "$cfg" "$n"
            got=$(wc -l <"$WORK/ids")
            [ "$got" -eq "$n" ] || log "  $cfg: only $got of $n calls set up"
            emit "{\"cfg\":\"$cfg\",\"calls\":$n,\"rep\":$rep,\"kind\":\"setup\",\"pns\":$(cat "$WORK/pns.ready")}"
            if [ "$cfg" = d ]; then
                emit "{\"cfg\":\"d\",\"calls\":$n,\"rep\":$rep,\"kind\":\"rss\",$(daemon_rss)}"
            fi
            gre_suite "$cfg" "$n" "$rep" "$WORK/ids" 0
            # One busy call among n idle ones: the newest, which the kernel helper finds
            # last (its list of calls grows at the tail).
            tail -n 1 "$WORK/ids" >"$WORK/ids.newest"
            gre_suite "$cfg-new" "$n" "$rep" "$WORK/ids.newest" 0
            cfg_down "$cfg"
        done
    done

    [ "$CONTROL" = 1 ] || continue
    log "repetition $rep/$REPS: control plane"
    for cfg in $CTL_CFGS; do
        # Setups and teardowns per second: one connection, 32 requests in flight.
        if [ "$cfg" = c ]; then start_daemon --no-offload; else start_daemon; fi
        emit "{\"cfg\":\"$cfg\",\"calls\":0,\"rep\":$rep,\"kind\":\"rss\",$(daemon_rss)}"
        start_pac
        start_pns 1 "$CTL_CALLS" 32
        emit "{\"cfg\":\"$cfg\",\"calls\":$CTL_CALLS,\"rep\":$rep,\"kind\":\"rss\",$(daemon_rss)}"
        stop_pid "$PNS_PID"
        emit "{\"cfg\":\"$cfg\",\"calls\":$CTL_CALLS,\"rep\":$rep,\"kind\":\"ctl\",\"pns\":$(cat "$WORK/pns.out")}"
        stop_calls
        stop_daemon
        in_r conntrack -F >/dev/null 2>&1 || true
    done
    # OCRP to first kernel-translated GRE: the server sends 300 probes 10 us apart right
    # after each Outgoing-Call-Reply; the fast path's element counter says how many the kernel
    # translated, so the first of those is probe (300 - counter). Its delay is split in three:
    # the server's write of the reply, the server's lateness from there to that probe's send,
    # and the probe's path (arrival minus its send time). The server runs on the generator's
    # core (OCRP_PAC_CPU), idle here, and RPS (OCRP_RPS) puts the router's receive work on
    # the other core, as if the server were another machine: on the daemon's core, or with
    # the router's path run inside its write (RPS off), the write carried the reply through
    # the router up to the daemon's queue, and was preempted by the daemon it woke, taking up
    # to 3.8 ms, while every probe was translated by the kernel from the first.
    rps "$OCRP_RPS"
    start_daemon
    rm -f "$WORK/probe.ready"
    bg "$WORK/probe.json" "$NS_C" "$GL" recv --ready-file "$WORK/probe.ready" --idle-ms 2000 \
        --timeout 120 --probe-out "$WORK/probes.txt"
    PROBE_RECV=$LAST_PID
    wait_file "$WORK/probe.ready" 10
    CTL_PIN=(taskset -c "${OCRP_PAC_CPU:-$GEN_CPU}")
    start_pac --probes 300 --probe-gap-us 10
    CTL_PIN=(env)
    start_pns 1 "$OCRP_CALLS" 1 --gap 0.01
    sleep 0.1
    in_r nft -j list map ip pptp_alg gre_daddr >"$WORK/gre_daddr.json"
    stop_pid "$PROBE_RECV"
    python3 - "$WORK/probes.txt" "$WORK/gre_daddr.json" "$rep" "$RPS_NOW" >>"$RES" <<'EOF'
import json, sys
probes, mapfile, rep, rps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "true"
arr = {}
for line in open(probes):
    cid, seq, t, ref, sent, written = map(int, line.split())
    arr[(cid, seq)] = (t, ref, sent, written)
counters = {}
for item in json.load(open(mapfile))["nftables"]:
    m = item.get("map")
    if not m:
        continue
    for el in m.get("elem", []):
        key, _val = el
        e = key.get("elem", key)
        cid = e["val"]["concat"][1] if "val" in e else key["concat"][1]
        counters[cid] = e.get("counter", {}).get("packets", 0)
lat, write, late, path, firsts, none = [], [], [], [], [], 0
for cid, k in counters.items():
    first = 300 - k
    if k == 0 or (cid, first) not in arr:
        none += 1
        continue
    t, ref, sent, written = arr[(cid, first)]
    lat.append((t - ref) / 1000.0)
    write.append((written - ref) / 1000.0)
    late.append((sent - written) / 1000.0)
    path.append((t - sent) / 1000.0)
    firsts.append(first)
print(json.dumps({"cfg": "d", "calls": 1, "rep": rep, "kind": "ocrp", "rps": rps, "lat_us": lat,
                  "write_us": write, "late_us": late, "path_us": path, "first_kernel_probe": firsts, "missing": none}))
EOF
    stop_pid "$PNS_PID"
    stop_calls
    stop_daemon
    in_r conntrack -F >/dev/null 2>&1 || true
done
log "done in $(($(date +%s) - T0)) s; raw results in $RES"

# ------------------------------------------------------------------ report

python3 "$ROOT/benches/report.py" "$RES" "$FIXED_RATE" "$IDLE_RATE"
