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
# GRE always flows server -> client: 76-byte enhanced GRE (12-byte header + 64-byte payload
# with sequence number and send timestamps), 96 bytes on the wire as IPv4.
# Results: a table on stdout; raw data in DIR (default /tmp/pptp-bench.XXXX).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
REPS=5
OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "throughput.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "throughput.sh: needs root" >&2; exit 1; }

if [ "$QUICK" = 1 ]; then
    REPS=1
    SIZES="1000"          # many-call sizes besides 1
    TRIAL=0.3             # seconds per search trial
    MAXDUR=0.5            # seconds at full offered load
    IDLE_DUR=2            # seconds of latency at idle
    FIXED_DUR=1           # seconds of latency at the fixed rate
    SEARCH_STEPS=5
    OCRP_CALLS=50
    CTL_CALLS=10000
else
    SIZES="100 1000 10000"
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
# The kernel helper keeps two expectations per call for five minutes; 10,000 calls need more
# than the default 4096. This limit is global (init namespace only); restored on exit.
EXPECT_MAX_OLD=$(sysctl -n net.netfilter.nf_conntrack_expect_max)
if [ "$EXPECT_MAX_OLD" -lt 65536 ]; then
    sysctl -qw net.netfilter.nf_conntrack_expect_max=65536
else
    EXPECT_MAX_OLD=
fi

# ------------------------------------------------------------------ GRE trials

# CPU time (ns) a process has run, all threads (schedstat: not time spent on other tasks).
proc_cpu_ns() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END{printf "%d", s}'
}

# trial CFG CALLS REP KIND RATE DURATION [IDS_FILE]: one receiver + one sender run; appends a
# JSON line to results and sets T_SENT, T_RECV.
trial() {
    local cfg=$1 calls=$2 rep=$3 kind=$4 rate=$5 dur=$6 ids=${7:-}
    local r=$WORK/recv.json ready=$WORK/recv.ready s=$WORK/send.json
    rm -f "$ready"
    bg "$r" "$NS_C" taskset -c "$OTHER_CPUS" "$GL" recv --ready-file "$ready" --idle-ms 300 \
        --timeout "$(awk -v d="$dur" 'BEGIN{print d+10}')"
    local rpid=$LAST_PID
    wait_file "$ready" 10
    local dst=$PUB idargs=(--call-id 0)
    [ "$cfg" = gen ] && dst=$SINK
    [ -n "$ids" ] && idargs=(--ids-file "$ids")
    local c0=0 c1=0
    [ -n "$DAEMON_PID" ] && c0=$(proc_cpu_ns "$DAEMON_PID")
    in_s taskset -c "$GEN_CPU" "$GL" send --dst "$dst" --rate "$rate" --duration "$dur" \
        "${idargs[@]}" >"$s"
    [ -n "$DAEMON_PID" ] && c1=$(proc_cpu_ns "$DAEMON_PID")
    if [ "$cfg" = gen ]; then
        stop_pid "$rpid"
    else
        wait "$rpid" || true
    fi
    T_SENT=$(jq -r .sent "$s")
    T_ACH=$(jq -r .rate_achieved "$s")
    T_RATE=$rate
    T_RECV=$(jq -r '.received // 0' "$r" 2>/dev/null || echo 0)
    emit "{\"cfg\":\"$cfg\",\"calls\":$calls,\"rep\":$rep,\"kind\":\"$kind\",\"rate\":$rate,\"daemon_cpu_ns\":$((c1 - c0)),\"send\":$(cat "$s"),\"recv\":$(cat "$r" 2>/dev/null || echo null)}"
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
    # Bisection for the highest rate with <= 0.5% loss, bracketing the delivered rate.
    local d=$((T_RECV * 10 / $(awk -v m="$MAXDUR" 'BEGIN{print int(m*10)}')))
    local lo=$((d / 5)) hi=$((d * 13 / 10)) best=0 i mid
    [ $lo -ge 1000 ] || lo=1000
    for i in $(seq 1 "$SEARCH_STEPS"); do
        mid=$(((lo + hi) / 2))
        trial "$cfg" "$calls" "$rep" search "$mid" "$TRIAL" "$ids"
        if ok_loss; then
            best=$mid
            lo=$mid
        else
            hi=$mid
        fi
    done
    emit "{\"cfg\":\"$cfg\",\"calls\":$calls,\"rep\":$rep,\"kind\":\"noloss\",\"rate\":$best}"
    log "  $cfg calls=$calls rep=$rep: no-loss ~$best pps (saturated delivery $d pps)"
    if [ "$lat" = 1 ]; then
        trial "$cfg" "$calls" "$rep" idle "$IDLE_RATE" "$IDLE_DUR" "$ids"
        trial "$cfg" "$calls" "$rep" fixed "$FIXED_RATE" "$FIXED_DUR" "$ids"
    fi
}

# ------------------------------------------------------------------ configurations

PAC_PID=
PNS_PID=

start_daemon() { # extra args...
    local sock=$WORK/status.sock
    rm -f "$sock"
    # A fresh state file for every start: no calls carried over from the previous
    # configuration, none from or to a daemon outside this lab. (`--state-file ""`,
    # documented as "none", is rejected by the CLI at the time of writing.)
    DAEMON_N=$((DAEMON_N + 1))
    bg "$WORK/daemon.log" "$NS_R" "$ALG" run --install-rules --status-socket "$sock" \
        --max-calls 20000 --max-calls-per-host 16384 --max-connections 20000 \
        --state-file "$WORK/state.$DAEMON_N.json" --log-level warn "$@"
    DAEMON_PID=$LAST_PID
    local i
    for i in $(seq 1 250); do
        [ -S "$sock" ] && in_r "$ALG" status --socket "$sock" --json >/dev/null 2>&1 && return 0
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
    bg "$WORK/pac.out" "$NS_S" "$GL" pac --bind $SRV --ids-out "$WORK/ids" "$@"
    PAC_PID=$LAST_PID
    sleep 0.1
}

# start_pns CONNS CALLS WINDOW [extra]: returns once all calls are up.
start_pns() {
    local conns=$1 calls=$2 window=$3
    shift 3
    rm -f "$WORK/pns.ready"
    bg "$WORK/pns.out" "$NS_C" "$GL" pns --server $SRV --conns "$conns" --calls "$calls" \
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

cfg_up() { # CFG CALLS
    local cfg=$1 calls=$2
    case "$cfg" in
        a)
            # The client speaks first (Call ID 0), so the server's Call ID 0 GRE is a reply.
            in_c "$GL" send --dst $SRV --rate 1000 --count 3 --call-id 0 >/dev/null
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
            start_pns "$calls" 1 1
            ;;
        c | d)
            if [ "$cfg" = c ]; then start_daemon --no-offload; else start_daemon; fi
            start_pac
            start_pns 1 "$calls" 32
            ;;
        min)
            in_r "$ALG" rules install --no-offload >/dev/null
            bg "$WORK/nfqmin.out" "$NS_R" "$NFQMIN" --to $CLI
            DAEMON_PID=$LAST_PID
            sleep 0.2
            ;;
        gen) ;;
    esac
}

cfg_down() {
    local cfg=$1
    case "$cfg" in
        b)
            stop_calls
            in_r nft delete table ip labhelper
            ;;
        c | d)
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
        b | c | d) echo "$WORK/ids" ;;
        *) echo "" ;;
    esac
}

rotate() { # REP list... -> the list rotated by REP
    local n=$1
    shift
    local a=("$@") k=${#a[@]} i
    for i in $(seq 0 $((k - 1))); do printf '%s ' "${a[$(((i + n) % k))]}"; done
}

# ------------------------------------------------------------------ run

T0=$(date +%s)
for rep in $(seq 1 "$REPS"); do
    log "repetition $rep/$REPS: one call"
    for cfg in $(rotate "$rep" gen a b c d min); do
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

    log "repetition $rep/$REPS: control plane"
    for cfg in c d; do
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
    # translated, so the first of those is probe (300 - counter).
    start_daemon
    rm -f "$WORK/probe.ready"
    bg "$WORK/probe.json" "$NS_C" "$GL" recv --ready-file "$WORK/probe.ready" --idle-ms 2000 \
        --timeout 120 --probe-out "$WORK/probes.txt"
    PROBE_RECV=$LAST_PID
    wait_file "$WORK/probe.ready" 10
    start_pac --probes 300 --probe-gap-us 10
    start_pns 1 "$OCRP_CALLS" 1 --gap 0.01
    sleep 0.1
    in_r nft -j list map ip pptp_alg gre_daddr >"$WORK/gre_daddr.json"
    stop_pid "$PROBE_RECV"
    python3 - "$WORK/probes.txt" "$WORK/gre_daddr.json" "$rep" >>"$RES" <<'EOF'
import json, sys
probes, mapfile, rep = sys.argv[1], sys.argv[2], int(sys.argv[3])
arr = {}
for line in open(probes):
    cid, seq, t, ref = map(int, line.split())
    arr[(cid, seq)] = (t, ref)
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
lat, none = [], 0
for cid, k in counters.items():
    first = 300 - k
    if k == 0 or (cid, first) not in arr:
        none += 1
        continue
    t, ref = arr[(cid, first)]
    lat.append((t - ref) / 1000.0)
print(json.dumps({"cfg": "d", "calls": 1, "rep": rep, "kind": "ocrp", "lat_us": lat, "missing": none}))
EOF
    stop_pid "$PNS_PID"
    stop_calls
    stop_daemon
    in_r conntrack -F >/dev/null 2>&1 || true
done
log "done in $(($(date +%s) - T0)) s; raw results in $RES"

# ------------------------------------------------------------------ report

python3 - "$RES" "$FIXED_RATE" "$IDLE_RATE" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
fixed_rate, idle_rate = sys.argv[2], sys.argv[3]

def med(v):
    return statistics.median(v) if v else None

def spread(v):
    if not v:
        return ""
    m = statistics.median(v)
    return f"±{100*(max(v)-min(v))/2/m:.0f}%" if m and len(v) > 1 else ""

def fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}"

def sel(cfg, calls, kind):
    return [r for r in rows if r["cfg"] == cfg and r["calls"] == calls and r["kind"] == kind]

def noloss(cfg, calls):
    return [r["rate"] for r in sel(cfg, calls, "noloss")]

def delivered(cfg, calls):
    return [r["recv"]["received"] / r["send"]["elapsed_s"] for r in sel(cfg, calls, "max") if r["recv"]]

def offered(cfg, calls):
    return [r["send"]["rate_achieved"] for r in sel(cfg, calls, "max")]

def lat(cfg, calls, kind, p):
    return [r["recv"]["latency"][p] for r in sel(cfg, calls, kind)
            if r["recv"] and r["recv"]["latency"][p] is not None]

def ratio(x, y):
    return f"{x/y:.2f}x" if x and y else "-"

reps = max(r["rep"] for r in rows)
print(f"\n=== pptp-alg GRE benchmark ({reps} repetition(s); median, ±half-range) ===")
print("GRE server->client, 96-byte IPv4 packets; generator pinned to its own core\n")
g = med(offered("gen", 1))
print(f"generator ceiling (ifb sink, no forwarding): {fmt(g)} pps {spread(offered('gen', 1))}\n")
hdr = f"{'cfg':<5}{'calls':>6} | {'no-loss pps':>16} | {'delivered@max':>16} | {'idle p50/p99/p99.9 us':>22} | {'@'+fixed_rate+'pps p50/p99/p99.9 us':>26}"
print(hdr)
print("-" * len(hdr))
cfgs = ["a", "b", "c", "d", "min", "b-new", "d-new"]
sizes = sorted({r["calls"] for r in rows if r["kind"] == "noloss"})
for calls in sizes:
    for cfg in cfgs:
        nl = noloss(cfg, calls)
        if not nl:
            continue
        dl = delivered(cfg, calls)
        li = "/".join(fmt(med(lat(cfg, calls, "idle", p))) for p in ("p50_us", "p99_us", "p999_us"))
        lf = "/".join(fmt(med(lat(cfg, calls, "fixed", p))) for p in ("p50_us", "p99_us", "p999_us"))
        print(f"{cfg:<5}{calls:>6} | {fmt(med(nl)):>11} {spread(nl):>4} | {fmt(med(dl)):>11} {spread(dl):>4} | {li:>22} | {lf:>26}")
    print()

def cpu_gen(cfg, calls):
    return [r["send"]["cpu_ns_per_pkt"] for r in sel(cfg, calls, "max")]

def cpu_daemon(cfg, calls):
    return [r["daemon_cpu_ns"] / r["recv"]["received"] for r in sel(cfg, calls, "max")
            if r.get("daemon_cpu_ns") and r["recv"] and r["recv"]["received"]]

print("CPU per packet at saturation (schedstat run time / packets; insensitive to other tasks")
print("taking the core, unlike the rates above):")
print(f"{'cfg':<5}{'calls':>6} | {'generator core: send + kernel path':>36} | {'minus gen':>9} | {'userspace process':>18}")
g0 = med(cpu_gen("gen", 1))
for calls in sizes:
    for cfg in ["gen"] + cfgs:
        v = cpu_gen(cfg, calls)
        if not v:
            continue
        dc = cpu_daemon(cfg, calls)
        kp = f"{med(v) - g0:,.0f} ns" if g0 and cfg != "gen" else "-"
        print(f"{cfg:<5}{calls:>6} | {fmt(med(v), ' ns'):>31} {spread(v):>4} | {kp:>9} | "
              f"{(fmt(med(dc), ' ns') + ' ' + spread(dc)) if dc else '-':>18}")
print()

def paired(x, cx, y, cy, kind="noloss"):
    """Median and half-range of the per-repetition ratios x/y (same repetition: paired)."""
    v = []
    for rep in range(1, reps + 1):
        xs = [r["rate"] for r in sel(x, cx, kind) if r["rep"] == rep]
        ys = [r["rate"] for r in sel(y, cy, kind) if r["rep"] == rep]
        if xs and ys and ys[0]:
            v.append(xs[0] / ys[0])
    if not v:
        return "-"
    return f"{med(v):.2f}x" + (f" ({min(v):.2f}..{max(v):.2f})" if len(v) > 1 else "")

print("Ratios of no-loss pps: median of the per-repetition ratios (min..max); one call unless said")
for x, y, t in (("b", "a", ""), ("d", "a", "target >= 0.9"), ("d", "b", "target >= 0.9"),
                ("c", "a", ""), ("c", "min", "target >= 0.85"), ("min", "a", "")):
    print(f"  {x}/{y}: {paired(x, 1, y, 1)}   {t}")
def cost_ratio(x, y, f):
    vx, vy = med(f(x, 1)), med(f(y, 1))
    return f"{vy / vx:.2f}x" if vx and vy else "-"
print("  as throughput per core from CPU per packet (higher is better):")
print(f"    d/a {cost_ratio('d', 'a', cpu_gen)}   d/b {cost_ratio('d', 'b', cpu_gen)}   "
      f"b/a {cost_ratio('b', 'a', cpu_gen)}   c/min (userspace process) {cost_ratio('c', 'min', cpu_daemon)}")
dsz = [s for s in sizes if noloss("d", s)]
if dsz:
    vals = {s: med(noloss("d", s)) for s in dsz}
    print("  d by calls: " + "  ".join(f"{s}: {fmt(v)} ({ratio(v, vals[1])} of 1 call)" for s, v in vals.items()))
    bvals = {s: med(noloss("b", s)) for s in sizes if noloss("b", s)}
    print("  b by calls: " + "  ".join(f"{s}: {fmt(v)}" for s, v in bvals.items()))
    for s in dsz:
        if s > 1:
            print(f"  d at {s} calls / d at 1 call: {paired('d', s, 'd', 1)}   (target: within 10%)")
    for s in dsz:
        if s in bvals and s > 1:
            print(f"  d/b at {s} calls, traffic on all calls: {paired('d', s, 'b', s)}" + ("   target >= 5x" if s == 1000 else ""))
    for s in dsz:
        if noloss("d-new", s) and noloss("b-new", s):
            print(f"  d/b at {s} calls, traffic on the newest call: {paired('d-new', s, 'b-new', s)}"
                  + ("   target >= 5x" if s == 1000 else "")
                  + f"   (d-new at {s} / d at 1 call: {paired('d-new', s, 'd', 1)})")
dl, al = med(lat("d", 1, "idle", "p50_us")), med(lat("a", 1, "idle", "p50_us"))
if dl is not None and al is not None:
    print(f"  d p50 latency added over a (idle): {dl - al:+.1f} us (target <= 5)")
dl, al = med(lat("d", 1, "fixed", "p50_us")), med(lat("a", 1, "fixed", "p50_us"))
if dl is not None and al is not None:
    print(f"  d p50 latency added over a (@{fixed_rate} pps): {dl - al:+.1f} us")

print("\nControl plane (pptp-alg; one connection, 32 requests in flight):")
for cfg in ["c", "d"]:
    ctl = [r for r in rows if r["cfg"] == cfg and r["kind"] == "ctl"]
    if ctl:
        su = [r["pns"]["setup"]["setups_per_s"] for r in ctl]
        td = [r["pns"]["teardowns_per_s"] for r in ctl]
        n = ctl[0]["calls"]
        print(f"  {cfg}: {n} calls: setups/s {fmt(med(su))} {spread(su)}, teardowns/s {fmt(med(td))} {spread(td)} (target >= 1000)")
for cfg in ["b", "d"]:
    st = [r for r in rows if r["cfg"] == cfg and r["kind"] == "setup"]
    for s in sorted({r["calls"] for r in st}):
        v = [r["pns"]["setups_per_s"] for r in st if r["calls"] == s]
        print(f"  {cfg} setup of {s} calls ({'connections' if cfg == 'b' else 'one connection'}): {fmt(med(v))} setups/s")
rss, anon = {}, {}
for r in rows:
    if r["kind"] == "rss":
        rss.setdefault((r["cfg"], r["calls"]), []).append(r["kb"])
        anon.setdefault((r["cfg"], r["calls"]), []).append(r.get("anon_kb", 0))
print("  daemon memory, VmRSS (of which RssAnon):")
for (c, n), v in sorted(rss.items()):
    print(f"    {c} {n:>5} calls: {med(v)/1024:.2f} MB ({med(anon[(c, n)])/1024:.2f} MB anon)")
for cfg in ("c", "d"):
    d0, a0 = med(rss.get((cfg, 0), []) or [0]), med(anon.get((cfg, 0), []) or [0])
    for (c, n), v in sorted(rss.items()):
        if c == cfg and n >= 1000 and d0:
            print(f"  {cfg} growth 0 -> {n} calls: VmRSS {(med(v) - d0)/1024:+.2f} MB, anon {(med(anon[(c, n)]) - a0)/1024:+.2f} MB"
                  + ("  (target: 10,000 calls in <= 2.5 MB)" if n == 10000 else ""))
oc = [x for r in rows if r["kind"] == "ocrp" for x in r["lat_us"]]
miss = sum(r["missing"] for r in rows if r["kind"] == "ocrp")
if oc:
    oc.sort()
    q = lambda p: oc[min(len(oc) - 1, round(p / 100 * (len(oc) - 1)))]
    print(f"  OCRP sent -> first kernel-translated GRE at client: p50 {q(50):.0f} us, p99 {q(99):.0f} us, max {oc[-1]:.0f} us "
          f"({len(oc)} calls, {miss} without a kernel-translated probe in 3 ms; target p99 <= 1000 us)")
EOF
