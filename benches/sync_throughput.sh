#!/usr/bin/env bash
# Synchronization throughput: 100,000 invoice lines (10,000 invoices of 10 lines) read from
# one-core-sim into the service, on SQLite (default) or on the PostgreSQL of DATABASE_URL.
# Prints lines per second and the service's peak memory (VmHWM). Needs grpcurl and python3.
#
#   bash benches/sync_throughput.sh
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench bash benches/sync_throughput.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --quiet
work=$(mktemp -d)
sim_port=50161
svc_port=50151
./target/release/one-core-sim --listen "127.0.0.1:$sim_port" --clients 500 --products 1000 \
  --invoices-per-day 1000 --lines-per-invoice 10 --days 10 >"$work/sim.log" 2>&1 &
sim=$!
trap 'kill $sim ${svc:-} 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 1
start=$(date +%s.%N)
LOYALTY__CORE__ENDPOINT="http://127.0.0.1:$sim_port" LOYALTY__JOBS__ENABLED=false \
  LOYALTY__OUTBOX__ENABLED=false LOYALTY__METRICS__LISTEN= LOYALTY__SYNC__INTERVAL_MS=200 \
  ./target/release/one-loyalty serve --listen "127.0.0.1:$svc_port" \
  --database-url "${DATABASE_URL:-sqlite://$work/loyalty.db}" >"$work/svc.log" 2>&1 &
svc=$!
auth=(-H 'one-tenant: demo' -H 'authorization: Bearer demo-admin-key-local-only')
while true; do
  synced=$(grpcurl -plaintext "${auth[@]}" -d '{"streams":["SYNC_STREAM_DOCUMENTS"]}' \
    "127.0.0.1:$svc_port" one.loyalty.v1.SyncService/GetSyncStatus 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["streams"][0]; print(s.get("itemsSynced","0"))' 2>/dev/null || echo 0)
  [ "$synced" = "10000" ] && break
  sleep 0.2
done
end=$(date +%s.%N)
peak=$(grep VmHWM "/proc/$svc/status" | awk '{print $2 " " $3}')
python3 - "$start" "$end" "$peak" <<'PY'
import sys
start, end, peak = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
seconds = end - start
print(f"100000 invoice lines (10000 invoices) synced in {seconds:.1f} s "
      f"(start-up included): {100000 / seconds:,.0f} lines/s; peak memory {peak}")
PY
