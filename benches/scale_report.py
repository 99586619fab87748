#!/usr/bin/env python3
"""The tables and ratios of benches/scale.sh, from its raw results.

    python3 benches/scale_report.py DIR/results.jsonl

scale.sh runs it at the end; run it by hand to report an earlier run again. Every figure is
the median over repetitions with the range (min-max); a ratio is taken per repetition (the
two configurations ran side by side in it) and then summarised the same way.
"""
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
reps = max((r["rep"] for r in rows), default=0)


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def summary(v):
    """median (min-max)"""
    v = [x for x in v if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return fmt(v[0])
    return f"{fmt(statistics.median(v))} ({fmt(min(v))}-{fmt(max(v))})"


def sel(kind, **kw):
    return [r for r in rows if r["kind"] == kind and all(r.get(k) == v for k, v in kw.items())]


def setup_of(r):
    # The full pns report (after teardown) nests the setup; the ready file is the setup.
    return r["pns"].get("setup", r["pns"])


def by_rep(kind, key, **kw):
    return {r["rep"]: key(r) for r in sel(kind, **kw)}


def ratios(a, b):
    return [a[k] / b[k] for k in a if k in b and a[k] and b[k]]


print(f"\n=== colliding Call IDs at scale ({reps} repetition(s); median (min-max)) ===\n")
print("Call setup: every inside host uses the same ids, all to one server through one public address.")
print("  one: N hosts x 1 call, id 0x4000, one control connection each")
print("  blk: N/250 hosts x 250 calls, ids 0x0100..0x01f9 (pptp-alg: one connection per host;")
print("       the helper: one connection per call)")
print("  a = masquerade alone (no PPTP translation: the tools' and the lab's ceiling),")
print("  b = Linux helper, c = pptp-alg --no-offload, d = pptp-alg (fast path)\n")
hdr = f"{'dist':<5}{'calls':>7} {'cfg':<4}| {'calls up':>24} | {'setups/s':>24} | {'teardowns/s':>24} | {'RSS MB idle -> up':>26}"
print(hdr)
print("-" * len(hdr))
sizes = sorted({r["calls"] for r in sel("setup")})
for n in sizes:
    for dist in ("one", "blk"):
        for cfg in ("a", "b", "c", "d"):
            rs = sel("setup", cfg=cfg, dist=dist, calls=n)
            if not rs:
                continue
            up = [setup_of(r)["calls"] for r in rs]
            rate = [setup_of(r)["setups_per_s"] for r in rs]
            down = [r["pns"].get("teardowns_per_s") for r in rs]
            rss = ""
            if cfg in ("c", "d"):
                rss = f"{summary([r['rss0_kb'] / 1024 for r in rs])} -> {summary([r['rss_kb'] / 1024 for r in rs])}"
            print(f"{dist:<5}{n:>7} {cfg:<4}| {summary(up):>24} | {summary(rate):>24} | {summary(down):>24} | {rss:>26}")
            errs = {setup_of(r).get("first_error") for r in rs} - {None}
            for e in sorted(errs):
                print(f"{'':17}first error: {e}")
        for cfg in ("c", "d"):
            a = by_rep("setup", lambda r: setup_of(r)["setups_per_s"], cfg=cfg, dist=dist, calls=n)
            b = by_rep("setup", lambda r: setup_of(r)["setups_per_s"], cfg="b", dist=dist, calls=n)
            if ratios(a, b):
                print(f"{'':17}setups/s {cfg}/b: {summary(ratios(a, b))}x")
        rs = [r for r in sel("setup", dist=dist, calls=n) if r["cfg"] != "b" and setup_of(r)["calls"]]
        for cfg in ("c", "d"):
            per = [(r["rss_kb"] - r["rss0_kb"]) * 1024 / setup_of(r)["calls"] for r in rs if r["cfg"] == cfg]
            if per:
                print(f"{'':17}{cfg}: RSS growth per call {summary(per)} bytes")
    print()

print("GRE no-loss rate (<= 0.5% loss), server -> N calls of distribution one (all id 0x4000),")
print("the sender cycling over every call's NAT id; 'calls reached' = distinct (host, id) pairs")
print("that received packets in the warm-up (two packets per call at 5,000 pps).\n")
hdr = f"{'calls':>7} {'cfg':<4}| {'calls up':>22} | {'no-loss pps':>30} | {'calls reached':>24}"
print(hdr)
print("-" * len(hdr))
gsizes = sorted({r["calls"] for r in sel("noloss")})
for n in gsizes:
    for cfg in ("b", "d"):
        nl = [r["rate"] for r in sel("noloss", cfg=cfg, calls=n)]
        if not nl:
            continue
        up = [setup_of(r)["calls"] for r in sel("gre_setup", cfg=cfg, calls=n)]
        reach = [r["recv"]["flows"] for r in sel("warmup", cfg=cfg, calls=n) if r["recv"]]
        print(f"{n:>7} {cfg:<4}| {summary(up):>22} | {summary(nl):>30} | {summary(reach):>24}")
    a = by_rep("noloss", lambda r: r["rate"], cfg="d", calls=n)
    b = by_rep("noloss", lambda r: r["rate"], cfg="b", calls=n)
    if ratios(a, b):
        print(f"{'':13}d/b: {summary(ratios(a, b))}x")
d1 = by_rep("noloss", lambda r: r["rate"], cfg="d", calls=min(gsizes, default=0))
for n in gsizes[1:]:
    dn = by_rep("noloss", lambda r: r["rate"], cfg="d", calls=n)
    if ratios(dn, d1):
        print(f"d at {n} calls / d at {min(gsizes)} call(s): {summary(ratios(dn, d1))}x")
