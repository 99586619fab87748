#!/usr/bin/env bash
# User-space instructions per packet on pptp-alg's NFQUEUE path, with valgrind's callgrind
# (instruction counts do not depend on the machine's load, unlike time).
#
#   benches/callgrind.sh [--gre N] [--calls M] [--out DIR] [--offload] [--calls-only]
#   [--strace]
#
# Root only; not part of CI. Same namespace lab as throughput.sh. The daemon runs under
# callgrind with --no-offload, so every GRE packet and every tcp/1723 packet goes through
# NFQUEUE and the engine, exactly as in production. Four runs, each a fresh daemon:
#   base0   start, one call set up by the gre-load PAC/PNS, idle, stop
#   gre     the same plus N GRE packets of that call (server -> client, translated)
#   ctl0    start, idle, stop
#   ctl     the same plus M calls set up and cleared on one connection (OCRQ/OCRP,
#           CCRQ/CDN, their ACKs, SCCRQ/SCCRP, StopCCRQ/StopCCRP)
# Instructions per GRE packet = (Ir(gre) - Ir(base0)) / N, per control packet =
# (Ir(ctl) - Ir(ctl0)) / control packets counted by the daemon. Each pair has the same wall
# time, so timer wake-ups cancel. The profile of the gre run is summarised (callgrind_annotate)
# to show what dominates the per-packet cost.
#   --offload     the daemon runs with the kernel fast path (no --no-offload): a call's setup
#                 and teardown then also change the fast path's maps
#   --calls-only  only the ctl0 and ctl runs (instructions per call)
#   --strace      the ctl0/ctl daemons run under `strace -c -f` instead of callgrind; prints
#                 the netlink sendmsg/recvmsg calls per call (a proxy for kernel-side cost)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=20000
M=500
RATE=2000
FAST_RATE=20000
OUT=
OFFLOAD=0
CALLS_ONLY=0
STRACE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --gre) N=$2; shift ;;
        --calls) M=$2; shift ;;
        --out) OUT=$2; shift ;;
        --offload) OFFLOAD=1 ;;
        --calls-only) CALLS_ONLY=1 ;;
        --strace) STRACE=1; CALLS_ONLY=1 ;;
        -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "callgrind.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "callgrind.sh: needs root" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind" >&2; exit 1; }
[ "$STRACE" -eq 0 ] || command -v strace >/dev/null || { echo "callgrind.sh: needs strace" >&2; exit 1; }
NO_OFFLOAD=--no-offload
[ "$OFFLOAD" -eq 0 ] || NO_OFFLOAD=

P=pcg$$
NS_S=$P-srv NS_R=$P-rtr NS_C=$P-cli
SRV=10.213.1.2 PUB=10.213.1.1 RLAN=10.213.2.1 CLI=10.213.2.2
WORK=${OUT:-$(mktemp -d /tmp/pptp-callgrind.XXXX)}
mkdir -p "$WORK"
PIDS=()

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

cleanup() {
    set +e
    lab_down
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CALLGRIND_BIN: a directory with pptp-alg and examples/gre-load built already (e.g. a copy
# of an earlier commit's, to compare); otherwise they are built here.
BIN=${CALLGRIND_BIN:-}
if [ -z "$BIN" ]; then
    log "building (release, with debug info)"
    (cd "$ROOT" && cargo build --release --quiet --bins --example gre-load)
    BIN=$ROOT/target/release
fi
GL=$BIN/examples/gre-load
ALG=$BIN/pptp-alg

lab_up

SOCK=$WORK/status.sock

# run NAME CALLS_HELD GRE_PACKETS CTL_CALLS: one daemon under callgrind; prints its Ir and
# stats into $WORK/NAME.*
run() {
    local name=$1 held=$2 gre=$3 ctl=$4
    rm -f "$SOCK" "$WORK/$name.ready"
    local tool=(valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.callgrind")
    [ "$STRACE" -eq 0 ] || tool=(strace -c -f -e trace=sendmsg,recvmsg,sendto,recvfrom -o "$WORK/$name.strace")
    # shellcheck disable=SC2086 # NO_OFFLOAD is one flag or none
    bg "$WORK/$name.daemon" "$NS_R" "${tool[@]}" \
        "$ALG" run --install-rules $NO_OFFLOAD --status-socket "$SOCK" --state-file "$WORK/$name.state.json" --log-level warn \
        --max-calls-per-host 16384
    local daemon=$LAST_PID i
    for i in $(seq 1 600); do
        [ -S "$SOCK" ] && in_r "$ALG" status --socket "$SOCK" --json >/dev/null 2>&1 && break
        sleep 0.1
    done
    : >"$WORK/$name.ids"
    bg "$WORK/$name.pac" "$NS_S" "$GL" pac --bind $SRV --ids-out "$WORK/$name.ids"
    local pac=$LAST_PID
    sleep 0.3
    in_r "$ALG" status --socket "$SOCK" --json >"$WORK/$name.stats0"
    if [ "$held" -gt 0 ]; then
        bg "$WORK/$name.pns" "$NS_C" "$GL" pns --server $SRV --calls "$held" \
            --ready-file "$WORK/$name.ready" --timeout 30
        local pns=$LAST_PID
        wait_file "$WORK/$name.ready" 60
    fi
    # The same wall time with and without packets, so timer work cancels out.
    local secs=$(((N + RATE - 1) / RATE))
    if [ "$gre" -gt 0 ]; then
        in_s taskset -c 1 "$GL" send --dst $PUB --ids-file "$WORK/$name.ids" --rate $RATE \
            --count "$gre" --duration $((secs + 5)) >"$WORK/$name.send"
    elif [ "$ctl" -gt 0 ]; then
        in_c "$GL" pns --server $SRV --calls "$ctl" --call-id 0x2000 --hold 0.01 \
            --timeout 60 >"$WORK/$name.ctl"
    else
        sleep "$secs"
    fi
    sleep 1
    in_r "$ALG" status --socket "$SOCK" --json >"$WORK/$name.stats"
    if [ "$held" -gt 0 ]; then
        kill "$pns"
        wait "$pns" || true
    fi
    kill "$pac"
    wait "$pac" || true
    if [ "$STRACE" -eq 1 ]; then
        # The daemon is strace's child: stopping it lets strace print its summary.
        pgrep -P "$daemon" | xargs -r kill
    else
        kill "$daemon"
    fi
    wait "$daemon" || true
    if [ "$STRACE" -eq 0 ]; then
        awk '/^(summary|totals):/{print $2; exit}' "$WORK/$name.callgrind"
    else
        # Total calls of the traced system calls (strace -c's summary line).
        awk '$NF == "total" {print $(NF-2); exit}' "$WORK/$name.strace"
    fi
}

if [ "$CALLS_ONLY" -eq 1 ]; then
    log "run ctl0: no calls"
    IR_CTL0=$(run ctl0 0 0 0)
    log "run ctl: $M calls set up and cleared"
    IR_CTL=$(run ctl 0 0 "$M")
    if [ "$STRACE" -eq 1 ]; then
        for r in ctl0 ctl; do echo "--- $r: strace -c"; cat "$WORK/$r.strace"; done
        echo "=> $(( (IR_CTL - IR_CTL0) )) netlink+queue syscalls for $M calls (${NO_OFFLOAD:-with offload})"
    else
        echo "=== callgrind (${NO_OFFLOAD:-with offload}): ctl0 $IR_CTL0 Ir, ctl $IR_CTL Ir," \
            "$(( (IR_CTL - IR_CTL0) / M )) Ir per call (setup + teardown)"
    fi
    echo "(raw data: $WORK)"
    exit 0
fi

log "run base0: one call, no GRE"
IR_BASE0=$(run base0 1 0 0)
log "run gre: one call, $N GRE packets at $RATE pps"
IR_GRE=$(run gre 1 "$N" 0)
log "run grefast: one call, $N GRE packets at $FAST_RATE pps (the daemon, slowed by valgrind, serves them in batches)"
IR_GREFAST=$(RATE=$FAST_RATE run grefast 1 "$N" 0)
log "run ctl0: no calls"
IR_CTL0=$(run ctl0 0 0 0)
log "run ctl: $M calls set up and cleared"
IR_CTL=$(run ctl 0 0 "$M")

python3 - "$WORK" "$N" "$M" "$IR_BASE0" "$IR_GRE" "$IR_CTL0" "$IR_CTL" "$IR_GREFAST" "$RATE" "$FAST_RATE" "$NO_OFFLOAD" <<'EOF'
import json, sys
w, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base0, gre, ctl0, ctl, grefast = map(int, sys.argv[4:9])
rate, fast = sys.argv[9], sys.argv[10]
def stats(name):
    return json.load(open(f"{w}/{name}.stats"))["stats"]
def stat(s, k):
    return s.get(k, 0)
sg, sg0 = stats("gre"), stats("base0")
sc, sc0 = stats("ctl"), stats("ctl0")
gre_pk = stat(sg, "gre_packets") - stat(sg0, "gre_packets") if "gre_packets" in sg else stat(sg, "packets") - stat(sg0, "packets")
ctl_pk = stat(sc, "control_packets") - stat(sc0, "control_packets")
ctl_msgs = m * 4 + 4  # OCRQ, OCRP, CCRQ, CDN per call; SCCRQ/RP, StopCCRQ/RP
print(f"\n=== callgrind: user-space instructions on the NFQUEUE path (pptp-alg {sys.argv[11] or 'with offload'}) ===")
print(f"startup + 1 call + idle (base0):   {base0:,} Ir")
print(f"  + {n} GRE packets (gre):        {gre:,} Ir   daemon counted {gre_pk} GRE packets, "
      f"{stat(sg, 'rewritten') - stat(sg0, 'rewritten')} rewritten")
print(f"  => {(gre - base0) / max(gre_pk, 1):,.0f} Ir per GRE packet at {rate} pps: one packet per wake-up (target <= 1,500)")
sf = stats("grefast")
fast_pk = stat(sf, "gre_packets")
print(f"  + {n} GRE packets at {fast} pps:   {grefast:,} Ir   daemon counted {fast_pk} GRE packets")
print(f"  => {(grefast - base0) / max(fast_pk, 1):,.0f} Ir per GRE packet at {fast} pps: batches per wake-up (target <= 1,500)")
print(f"startup + idle (ctl0):             {ctl0:,} Ir")
print(f"  + {m} calls set up and cleared:  {ctl:,} Ir   daemon counted {ctl_pk} control packets "
      f"(TCP segments incl. ACKs), {ctl_msgs} PPTP messages")
print(f"  => {(ctl - ctl0) / max(ctl_pk, 1):,.0f} Ir per control packet, "
      f"{(ctl - ctl0) / ctl_msgs:,.0f} Ir per PPTP message, {(ctl - ctl0) / m:,.0f} Ir per call (setup + teardown)")
EOF
# Per-function difference between the gre and base0 runs, divided by the packet count: the
# per-packet cost by function (exclusive = the function's own instructions; inclusive = with
# everything it calls).
profile() { # FILE INCLUSIVE(yes|no)
    callgrind_annotate --auto=no --inclusive="$2" --threshold=100 "$1" 2>/dev/null || true
}
for inc in no yes; do
    for r in base0 gre grefast; do
        profile "$WORK/$r.callgrind" $inc >"$WORK/$r.$inc.txt"
    done
done
for r in gre grefast; do
python3 - "$WORK" "$r" "$(jq -r .stats.gre_packets "$WORK/$r.stats")" <<'EOF2'
import re, sys
w, run, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
line = re.compile(r"^\s*([0-9,]+) \([ 0-9.%]+\)\s+(.*?)(?: \[.*\])?$")
def load(f, inclusive):
    d = {}
    for l in open(f):
        m = line.match(l)
        if m and "PROGRAM TOTALS" not in l:
            name = m.group(2)
            name = re.sub(r"^.*?:(?=[^/]*$)", "", name) if ":" in name else name
            v = int(m.group(1).replace(",", ""))
            # A function shows once per source file it has lines from: own costs add up,
            # inclusive costs overlap.
            d[name] = d.get(name, 0) + v if not inclusive else max(d.get(name, 0), v)
    return d
for inc, title, k in (("no", "exclusive (own instructions)", 22), ("yes", "inclusive (with callees)", 28)):
    g, b = load(f"{w}/{run}.{inc}.txt", inc == "yes"), load(f"{w}/base0.{inc}.txt", inc == "yes")
    diff = sorted(((g[f] - b.get(f, 0)) / n, f) for f in g)
    diff.reverse()
    print(f"\nIr per GRE packet by function ({run} run), {title}:")
    for v, f in diff[:k]:
        if v < 3:
            break
        print(f"  {v:8.0f}  {f[:150]}")
EOF2
done
echo "(raw data: $WORK)"
