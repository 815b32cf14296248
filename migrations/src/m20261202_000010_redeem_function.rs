//! PostgreSQL only: redemptions written by one function call, one round trip that commits on its
//! own: a redemption alone, or those that arrive together (group commit). Inside a function each
//! statement sees the database as of its own start, so the lots are read after the balance row
//! is locked, as the statement-by-statement path reads them; a single SQL statement would read
//! them as of before it waited for the lock. The rows come as JSON objects keyed by column
//! (built by the same code as the other path) and are read back by `jsonb_populate_record`.
//! SQLite writes a redemption statement by statement, in one transaction.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261202_000010_redeem_function"
    }
}

/// Redemptions, each item's arguments one JSON object: `tenant`, `client`, `cost` (minor units),
/// `now`, the rows `record`, `event`, `redemption` and `message`, `coupon`, `stock`, `limit` and
/// `live` (the statuses that count towards the limit). One row per item, with its place in
/// `p_items`, the Use event's id, or what refused it: `LY001` not enough available points (the
/// available points, in minor units, as the detail), `LY002` the client's limit, `LY003` out of
/// stock, `23505` the request id or the code taken.
///
/// Every row a batch writes is locked first, in the order of every other writer: the clients'
/// balance rows, then the coupons' rows, each in key order, so that batches written side by side
/// (two replicas) cannot deadlock. Each item is then checked under those locks before it writes
/// anything, so one refused writes nothing and the others are written: no subtransaction, which
/// would turn every later change of a row already changed in the batch (one hot client's
/// balance, a coupon's count) into a multixact.
pub(crate) const REDEEM_BATCH_FUNCTION: &str = r"
CREATE FUNCTION loyalty_redeem_batch(p_items jsonb)
RETURNS TABLE (item bigint, use_event_id bigint, failed_state text, failed_detail text,
    failed_message text)
LANGUAGE plpgsql AS $$
DECLARE
    v_key record;
    v_item record;
    p jsonb;
    v_tenant text;
    v_client text;
    v_coupon text;
    v_cost bigint;
    v_now timestamptz;
    v_total bigint;
    v_available bigint;
    v_count bigint;
    v_written bigint;
    v_event bigint;
    v_left bigint;
    v_take bigint;
    v_lot record;
BEGIN
    -- One primary-key lookup per row: a join with the items would scan the tables.
    FOR v_key IN
        SELECT DISTINCT i->>'tenant' AS tenant, i->>'client' AS client
        FROM jsonb_array_elements(p_items) i ORDER BY 1, 2
    LOOP
        PERFORM 1 FROM balances
        WHERE tenant_id = v_key.tenant AND client_id = v_key.client FOR UPDATE;
    END LOOP;
    FOR v_key IN
        SELECT DISTINCT i->>'tenant' AS tenant, i->>'coupon' AS coupon
        FROM jsonb_array_elements(p_items) i ORDER BY 1, 2
    LOOP
        PERFORM 1 FROM coupons
        WHERE tenant_id = v_key.tenant AND coupon_id = v_key.coupon FOR UPDATE;
    END LOOP;
    FOR v_item IN
        SELECT i.value, i.ordinality FROM jsonb_array_elements(p_items) WITH ORDINALITY i
        ORDER BY i.ordinality
    LOOP
        p := v_item.value;
        item := v_item.ordinality;
        use_event_id := NULL;
        failed_state := NULL;
        failed_detail := NULL;
        failed_message := NULL;
        v_tenant := p->>'tenant';
        v_client := p->>'client';
        v_coupon := p->>'coupon';
        v_cost := (p->>'cost')::bigint;
        v_now := (p->>'now')::timestamptz;
        -- The checks, under the locks, in the order of the statement-by-statement path.
        IF (p->>'limit') IS NOT NULL THEN
            SELECT count(*) INTO v_count FROM redemptions
            WHERE tenant_id = v_tenant AND coupon_id = v_coupon AND client_id = v_client
                AND status IN (SELECT jsonb_array_elements_text(p->'live'));
            IF v_count >= (p->>'limit')::bigint THEN
                failed_state := 'LY002';
                failed_message := 'the client''s limit is reached';
            END IF;
        END IF;
        IF failed_state IS NULL THEN
            SELECT total, available INTO v_total, v_available FROM balances
            WHERE tenant_id = v_tenant AND client_id = v_client;
            IF NOT FOUND THEN
                v_total := 0;
                v_available := 0;
            END IF;
            IF v_available < v_cost THEN
                failed_state := 'LY001';
                failed_detail := v_available::text;
                failed_message := 'not enough available points';
            END IF;
        END IF;
        IF failed_state IS NULL THEN
            SELECT redeemed_count INTO v_count FROM coupons
            WHERE tenant_id = v_tenant AND coupon_id = v_coupon;
            IF NOT FOUND OR v_count >= COALESCE((p->>'stock')::bigint, v_count + 1) THEN
                failed_state := 'LY003';
                failed_message := 'out of stock';
            END IF;
        END IF;
        -- The keys that may be taken: the request id, then the code (the request's record
        -- is taken back when the code is).
        IF failed_state IS NULL THEN
            INSERT INTO idempotency_records
            SELECT r.* FROM jsonb_populate_record(NULL::idempotency_records, p->'record') r
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS v_written = ROW_COUNT;
            IF v_written = 0 THEN
                failed_state := '23505';
                failed_message := 'the request id is taken';
            END IF;
        END IF;
        IF failed_state IS NULL THEN
            v_event := nextval(pg_get_serial_sequence('ledger_events', 'event_id'));
            INSERT INTO redemptions
            SELECT r.* FROM jsonb_populate_record(NULL::redemptions, p->'redemption'
                || jsonb_build_object('use_event_id', v_event)) r
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS v_written = ROW_COUNT;
            IF v_written = 0 THEN
                DELETE FROM idempotency_records
                WHERE tenant_id = v_tenant AND request_id = p->'record'->>'request_id';
                failed_state := '23505';
                failed_message := 'the redemption or its code is taken';
            END IF;
        END IF;
        IF failed_state IS NOT NULL THEN
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- Written: the oldest unlocked lots spent first, the Use event, the balance, the
        -- delivery and the coupon's count.
        v_left := v_cost;
        FOR v_lot IN
            SELECT event_id, remaining FROM earn_lots
            WHERE tenant_id = v_tenant AND client_id = v_client AND NOT locked AND remaining > 0
            ORDER BY earned_at, event_id
        LOOP
            v_take := LEAST(v_lot.remaining, v_left);
            UPDATE earn_lots SET remaining = remaining - v_take
            WHERE tenant_id = v_tenant AND event_id = v_lot.event_id;
            v_left := v_left - v_take;
            EXIT WHEN v_left = 0;
        END LOOP;
        INSERT INTO ledger_events
        SELECT r.* FROM jsonb_populate_record(NULL::ledger_events, p->'event'
            || jsonb_build_object('event_id', v_event, 'balance_after', v_total - v_cost)) r;
        UPDATE balances SET total = total - v_cost, available = available - v_cost,
            event_count = event_count + 1, last_event_id = v_event, updated_at = v_now
        WHERE tenant_id = v_tenant AND client_id = v_client;
        INSERT INTO outbox
        SELECT r.* FROM jsonb_populate_record(NULL::outbox, p->'message' || jsonb_build_object(
            'message_id', nextval(pg_get_serial_sequence('outbox', 'message_id')))) r;
        UPDATE coupons SET redeemed_count = redeemed_count + 1
        WHERE tenant_id = v_tenant AND coupon_id = v_coupon;
        use_event_id := v_event;
        RETURN NEXT;
    END LOOP;
END;
$$";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &[REDEEM_BATCH_FUNCTION]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &["DROP FUNCTION loyalty_redeem_batch(jsonb)"]).await
    }
}
