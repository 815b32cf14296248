"""Reads the RESULT lines of benches/perf.sh and prints the table of ratios to the baselines."""
import sys

rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    key = (fields["workload"], fields["backend"], int(fields["clients"]), fields.get("label", "-"))
    rows[key] = {k: float(v) for k, v in fields.items() if k in ("tps", "mean_ms", "p50_ms", "p99_ms", "p999_ms")}


def get(workload, backend, clients, label="-"):
    return rows.get((workload, backend, clients, label))


out = []
met_all = []


def row(what, service, baseline, measure, target, kind):
    if not service or not baseline:
        out.append(f"| {what} | n/a | n/a | | {target} | not measured |")
        return
    s, b = service[measure], baseline[measure]
    if kind == "ratio":
        ratio = s / b if b else 0.0
        goal = float(target.split()[1].rstrip("×")) if target.startswith("≥") else None
        met = "" if goal is None else ("yes" if ratio >= goal else "**no**")
        out.append(f"| {what} | {s:,.1f} | {b:,.1f} | {ratio:.2f} | {target} | {met} |")
        if goal is not None:
            met_all.append(met == "yes")
    else:  # latency: service <= baseline + 0.5 ms
        ok = s <= b + 0.5
        out.append(f"| {what} | {s:.3f} ms | {b:.3f} ms | +{s - b:.3f} ms | {target} | {'yes' if ok else '**no**'} |")
        met_all.append(ok)


out.append("| Measure | Service | Baseline | Ratio | Target | Met |")
out.append("|---|---:|---:|---:|---|---|")
for c in (1, 8):
    row(f"Earn (10-line invoice), PostgreSQL, {c} client(s), calls/s vs B2 earn", get("earn", "postgres", c), get("earn", "b2", c), "tps", "≥ 0.7× B2", "ratio")
for c in (1, 8):
    row(f"Redeem, uniform clients, PostgreSQL, {c} client(s), calls/s vs B2 redeem", get("redeem", "postgres", c), get("redeem", "b2", c), "tps", "(reported)", "ratio")
for c in (1, 8):
    row(f"Redeem, one hot client, PostgreSQL, {c} client(s), calls/s vs B2 redeem-hot", get("redeem-hot", "postgres", c), get("redeem-hot", "b2", c), "tps", "≥ 0.8× B2-hot" if c == 8 else "(reported)", "ratio")
for c in (1, 8):
    row(f"Balance read, PostgreSQL, {c} client(s), calls/s vs B2 read", get("balance", "postgres", c), get("balance", "b2", c), "tps", "(reported)", "ratio")
for w, b in (("earn", "earn"), ("redeem", "redeem"), ("redeem-hot", "redeem-hot"), ("balance", "balance")):
    row(f"Single-client mean latency, {w}, PostgreSQL vs B2", get(w, "postgres", 1), get(b, "b2", 1), "mean_ms", "≤ B2 + 0.5 ms", "latency")
for c in (1, 8):
    for w in ("earn", "redeem", "redeem-hot", "balance"):
        row(f"SQLite mode, {w}, {c} client(s), calls/s vs B5", get(w, "sqlite", c), get(w, "sqlite-minimal", c), "tps", "≥ 0.8× B5", "ratio")
# With one caller a call is its work and then its answer, one after the other: no service can be
# faster than the baseline's work plus a bare gRPC call (B4). A 1-caller ratio target above this
# ceiling cannot be met by any gRPC service on this machine, whatever it does.
echo = get("echo", "none", 1)
for w, baseline, name, target in (
    ("earn", "b2", "B2", 0.7),
    ("earn", "sqlite-minimal", "B5", 0.8),
    ("redeem", "sqlite-minimal", "B5", 0.8),
    ("redeem-hot", "sqlite-minimal", "B5", 0.8),
    ("balance", "sqlite-minimal", "B5", 0.8),
):
    base = get(w, baseline, 1)
    if base and echo:
        best = base["mean_ms"] + echo["mean_ms"]
        ceiling = base["mean_ms"] / best
        reachable = "yes" if ceiling >= target else "**no**"
        out.append(f"| Ceiling, 1 client: {name}'s {w} plus a trivial tonic call (B4), as a share of {name} | {best:.3f} ms | {base['mean_ms']:.3f} ms | {ceiling:.2f} | bound for ≥ {target}× {name} (reachable?) | {reachable} |")
for backend in ("postgres", "sqlite"):
    for c in (1, 8):
        long_, short = get("balance-long-history", backend, c), get("balance-short-history", backend, c)
        if long_ and short:
            ratio = long_["mean_ms"] / short["mean_ms"]
            ok = ratio <= 1.25
            met_all.append(ok)
            out.append(f"| Balance read, {backend}, {c} client(s): mean latency with a long history vs 10 events | {long_['mean_ms']:.3f} ms | {short['mean_ms']:.3f} ms | {ratio:.2f} | independent (≤ 1.25) | {'yes' if ok else '**no**'} |")
for backend, name in (("postgres", "PostgreSQL"), ("sqlite", "SQLite")):
    for c in (1, 8):
        hot = get("redeem-hot", backend, c)
        for workload, spent in (("redeem-spent-lots", "all"), ("redeem-live-lots", "none")):
            lots = get(workload, backend, c)
            if lots and hot:
                out.append(f"| Redeem, {name}, {c} client(s): mean latency, a client with 10,000 lots {spent} spent vs the hot client (one lot) | {lots['mean_ms']:.3f} ms | {hot['mean_ms']:.3f} ms | {lots['mean_ms'] / hot['mean_ms']:.2f} | (reported) | |")
for c in (1, 8):
    row(f"Balance read through the service vs a trivial tonic call (B4), {c} client(s), calls/s", get("balance", "postgres", c), get("echo", "none", c), "tps", "(reported)", "ratio")
for w in ("balance", "mixed"):
    for c in (8, 16):
        row(f"Two replicas vs one, {w}, {c} clients, calls/s", get(w, "postgres", c, "replicas-2"), get(w, "postgres", c, "replicas-1"), "tps", "(reported)", "ratio")
for w in ("earn", "redeem", "mixed"):
    row(f"64 clients vs 8, {w}, PostgreSQL, calls/s", get(w, "postgres", 64), get(w, "postgres", 8), "tps", "(reported)", "ratio")
for w in ("earn", "redeem", "redeem-hot", "mixed"):
    for c in (8, 64):
        row(f"Group commit on vs off (each write alone), {w}, PostgreSQL, {c} clients, calls/s", get(w, "postgres", c), get(w, "postgres", c, "no-group-commit"), "tps", "(reported)", "ratio")
for w in ("earn", "redeem", "redeem-hot", "mixed"):
    row(f"Group commit on vs off (each write alone), {w}, SQLite, 8 clients, calls/s", get(w, "sqlite", 8), get(w, "sqlite", 8, "no-group-commit"), "tps", "(reported)", "ratio")
fsync = get("fsync", "b0", 1)
if fsync:
    out.append("")
    out.append(f"B0 (pg_test_fsync, one 8 kB write, fdatasync): {fsync['tps']:,.0f} syncs/s, {fsync['mean_ms']:.3f} ms each.")
out.append("")
out.append(f"Targets met: {sum(met_all)} of {len(met_all)}.")
print("\n".join(out))
