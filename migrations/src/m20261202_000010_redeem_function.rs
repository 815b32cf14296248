//! PostgreSQL only: a redemption written by one function call, one round trip that commits on
//! its own, and redemptions written together by another (group commit). Inside a function each statement sees the database as of its own start, so the lots
//! are read after the balance row is locked, as the statement-by-statement path reads them; a
//! single SQL statement would read them as of before it waited for the lock. The rows come as
//! JSON objects keyed by column (built by the same code as the other path) and are read back by
//! `jsonb_populate_record`; a refusal raises an error of its own code, which undoes everything.
//! SQLite writes a redemption statement by statement, in one transaction.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261202_000010_redeem_function"
    }
}

/// One redemption, its arguments in one JSON object: `tenant`, `client`, `cost` (minor units),
/// `now`, the rows `record`, `event`, `redemption` and `message`, `coupon`, `stock`, `limit` and
/// `live` (the statuses that count towards the limit). Locks in the order of every other writer:
/// the client's balance row, then the coupon's row (last, so that it is held only until the
/// commit). Refusals: `LY001` not enough available points (the available points, in minor
/// units, as the detail), `LY002` the client's limit, `LY003` out of stock.
const REDEEM_FUNCTION: &str = r"
CREATE FUNCTION loyalty_redeem(p jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    p_tenant text := p->>'tenant';
    p_client text := p->>'client';
    p_cost bigint := (p->>'cost')::bigint;
    p_now timestamptz := (p->>'now')::timestamptz;
    p_coupon text := p->>'coupon';
    p_stock bigint := (p->>'stock')::bigint;
    p_limit bigint := (p->>'limit')::bigint;
    v_total bigint;
    v_available bigint;
    v_held bigint;
    v_event bigint;
    v_left bigint := p_cost;
    v_take bigint;
    v_lot record;
BEGIN
    INSERT INTO idempotency_records
    SELECT r.* FROM jsonb_populate_record(NULL::idempotency_records, p->'record') r;
    INSERT INTO balances AS b
        (tenant_id, client_id, total, available, locked, reserved, last_event_id, event_count,
         updated_at)
    VALUES (p_tenant, p_client, 0, 0, 0, 0, NULL, 0, p_now)
    ON CONFLICT (tenant_id, client_id) DO UPDATE SET updated_at = EXCLUDED.updated_at
    RETURNING b.total, b.available INTO v_total, v_available;
    IF p_limit IS NOT NULL THEN
        SELECT count(*) INTO v_held FROM redemptions
        WHERE tenant_id = p_tenant AND coupon_id = p_coupon AND client_id = p_client
            AND status IN (SELECT jsonb_array_elements_text(p->'live'));
        IF v_held >= p_limit THEN
            RAISE EXCEPTION USING ERRCODE = 'LY002', MESSAGE = 'the client''s limit is reached';
        END IF;
    END IF;
    IF v_available < p_cost THEN
        RAISE EXCEPTION USING ERRCODE = 'LY001', MESSAGE = 'not enough available points',
            DETAIL = v_available::text;
    END IF;
    v_event := nextval(pg_get_serial_sequence('ledger_events', 'event_id'));
    FOR v_lot IN
        SELECT event_id, remaining FROM earn_lots
        WHERE tenant_id = p_tenant AND client_id = p_client AND NOT locked AND remaining > 0
        ORDER BY earned_at, event_id
    LOOP
        v_take := LEAST(v_lot.remaining, v_left);
        UPDATE earn_lots SET remaining = remaining - v_take
        WHERE tenant_id = p_tenant AND event_id = v_lot.event_id;
        v_left := v_left - v_take;
        EXIT WHEN v_left = 0;
    END LOOP;
    INSERT INTO ledger_events
    SELECT r.* FROM jsonb_populate_record(NULL::ledger_events, p->'event'
        || jsonb_build_object('event_id', v_event, 'balance_after', v_total - p_cost)) r;
    UPDATE balances SET total = total - p_cost, available = available - p_cost,
        event_count = event_count + 1, last_event_id = v_event, updated_at = p_now
    WHERE tenant_id = p_tenant AND client_id = p_client;
    INSERT INTO redemptions
    SELECT r.* FROM jsonb_populate_record(NULL::redemptions, p->'redemption'
        || jsonb_build_object('use_event_id', v_event)) r;
    INSERT INTO outbox
    SELECT r.* FROM jsonb_populate_record(NULL::outbox, p->'message' || jsonb_build_object(
        'message_id', nextval(pg_get_serial_sequence('outbox', 'message_id')))) r;
    UPDATE coupons SET redeemed_count = redeemed_count + 1
    WHERE tenant_id = p_tenant AND coupon_id = p_coupon
        AND (p_stock IS NULL OR redeemed_count < p_stock);
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LY003', MESSAGE = 'out of stock';
    END IF;
    RETURN v_event;
END;
$$";

/// Redemptions written together (group commit): each as [`REDEEM_FUNCTION`] writes it, in a
/// subtransaction of its own, so that one refused leaves the others written; one row per item,
/// in order, with the Use event's id or what refused it (SQLSTATE, detail, message). Every batch
/// first locks the clients' balance rows, then the coupons' rows, each in key order, so that
/// batches written side by side (two replicas) cannot deadlock.
const REDEEM_BATCH_FUNCTION: &str = r"
CREATE FUNCTION loyalty_redeem_batch(p_items jsonb)
RETURNS TABLE (use_event_id bigint, refused_state text, refused_detail text, refused_message text)
LANGUAGE plpgsql AS $$
DECLARE
    v_item jsonb;
    v_key record;
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
    FOR v_item IN SELECT value FROM jsonb_array_elements(p_items) LOOP
        BEGIN
            use_event_id := loyalty_redeem(v_item);
            refused_state := NULL;
            refused_detail := NULL;
            refused_message := NULL;
        EXCEPTION WHEN OTHERS THEN
            use_event_id := NULL;
            GET STACKED DIAGNOSTICS refused_state = RETURNED_SQLSTATE,
                refused_detail = PG_EXCEPTION_DETAIL, refused_message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END;
$$";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            let db = manager.get_connection();
            db.execute_unprepared(REDEEM_FUNCTION).await?;
            db.execute_unprepared(REDEEM_BATCH_FUNCTION).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            let db = manager.get_connection();
            db.execute_unprepared("DROP FUNCTION loyalty_redeem_batch(jsonb)")
                .await?;
            db.execute_unprepared("DROP FUNCTION loyalty_redeem(jsonb)")
                .await?;
        }
        Ok(())
    }
}
