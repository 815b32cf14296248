#!/usr/bin/env bash
# Measures the service against its baselines in one run, on this machine, with the same
# durability settings (PostgreSQL fsync and synchronous_commit as configured, SQLite WAL with
# synchronous = FULL), and writes the table of ratios to docs/PERFORMANCE.md's latest-run file.
#
#   bash benches/perf.sh                 # 10 s per measurement, 100,000-event history
#   SECONDS_PER_RUN=3 HISTORY=1000 bash benches/perf.sh   # a quick look
#
# Baselines: B0 pg_test_fsync; B2 ../shared/bench/baseline/run.sh (pgbench, unchanged);
# B4 a trivial tonic server; B5 a minimal SQLite loop doing the B2 writes.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_RUN:-10}
history=${HISTORY:-100000}
spent_lots=${SPENT_LOTS:-10000}
live_lots=${LIVE_LOTS:-10000}
clients=${CLIENTS:-10000}
pg=${PG_URL:-postgres://postgres@127.0.0.1:5432}
out=${OUT:-target/bench/latest}
mkdir -p "$out"
results="$out/results.txt"
: >"$results"

cargo build --release --bins --quiet
bench=target/release/one-loyalty-bench

echo "== B0 pg_test_fsync"
# On the file system of PostgreSQL's data directory.
fsync_dir=$(dirname "$(psql -Atq "$pg/postgres" -c 'show data_directory' 2>/dev/null || echo /tmp/x)")
[ -w "$fsync_dir" ] || fsync_dir=${TMPDIR:-/tmp}
pg_fsync=$(ls /usr/lib/postgresql/*/bin/pg_test_fsync | tail -n1)
"$pg_fsync" -s 3 -f "$fsync_dir/pg_test_fsync.tmp" >"$out/b0.txt" 2>&1 || true
rm -f "$fsync_dir/pg_test_fsync.tmp"
awk '/one 8kB write/ { section = 1 } section && $1 == "fdatasync" { print "RESULT workload=fsync backend=b0 clients=1 label=- ops=0 errors=0 tps=" $2 " mean_ms=" $4 / 1000; exit }' "$out/b0.txt" | tee -a "$results"

echo "== B2 pgbench (../shared/bench/baseline/run.sh)"
for db in loyalty_bench_b2 loyalty_bench_service; do
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
done
for c in 1 8; do
  bash ../shared/bench/baseline/run.sh "$pg/loyalty_bench_b2" "$c" "$secs" | tee "$out/b2-$c.txt"
  awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
         print "RESULT workload=" $2 " backend=b2 clients=" v["clients"] " label=- ops=0 errors=0 tps=" v["tps"] " mean_ms=" v["latency_ms"] }' \
    "$out/b2-$c.txt" | sed 's/workload=read /workload=balance /' >>"$results"
done

echo "== B4 trivial tonic server"
"$bench" echo --concurrency 1,8 --duration "$secs" | tee -a "$results"

echo "== B5 minimal SQLite loop"
"$bench" sqlite --path target/bench/b5.sqlite --concurrency 1,8 --duration "$secs" | tee -a "$results"

workloads=earn,redeem,redeem-hot,redeem-spent-lots,redeem-live-lots,balance,balance-short-history,balance-long-history,mixed
echo "== service on PostgreSQL"
"$bench" service --database-url "$pg/loyalty_bench_service" --clients "$clients" --history "$history" --spent-lots "$spent_lots" --live-lots "$live_lots" \
  --workloads "$workloads" --concurrency 1,8,64 --duration "$secs" | tee -a "$results"

echo "== service on PostgreSQL, group commit off (each write alone)"
LOYALTY__DATABASE__WRITE_BATCH_MAX=1 "$bench" service --database-url "$pg/loyalty_bench_service" \
  --clients "$clients" --no-seed --label no-group-commit --workloads earn,redeem,redeem-hot,mixed \
  --concurrency 8,64 --duration "$secs" | tee -a "$results"

echo "== two replicas on PostgreSQL (reads)"
"$bench" service --database-url "$pg/loyalty_bench_service" --clients "$clients" --no-seed \
  --replicas 2 --label replicas-2 --workloads balance,mixed --concurrency 8,16 --duration "$secs" | tee -a "$results"
"$bench" service --database-url "$pg/loyalty_bench_service" --clients "$clients" --no-seed \
  --replicas 1 --label replicas-1 --workloads balance,mixed --concurrency 8,16 --duration "$secs" | tee -a "$results"

echo "== service on SQLite"
rm -f target/bench/service.sqlite*
"$bench" service --database-url "sqlite://target/bench/service.sqlite" --clients "$clients" \
  --history "$history" --spent-lots "$spent_lots" --live-lots "$live_lots" --workloads "$workloads" --concurrency 1,8 --duration "$secs" | tee -a "$results"

echo "== service on SQLite, group commit off (each write alone)"
LOYALTY__DATABASE__WRITE_BATCH_MAX=1 "$bench" service --database-url "sqlite://target/bench/service.sqlite" \
  --clients "$clients" --no-seed --label no-group-commit --workloads earn,redeem,redeem-hot,mixed \
  --concurrency 8 --duration "$secs" | tee -a "$results"

python3 benches/ratios.py "$results" | tee "$out/table.md"
