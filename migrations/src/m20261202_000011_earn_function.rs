//! PostgreSQL only: a received invoice with its earn written by one function call, alone or
//! together with the others that arrive while one is being written (group commit). SQLite writes
//! each in one transaction of one script (`sqlite_script` in the service).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261202_000011_earn_function"
    }
}

/// One earn, its arguments in one JSON object: `tenant`, `client`, `document` (its id), `total`,
/// `available` and `locked` (what the balance gains, in minor units), `now`, and the rows
/// `event`, `document_row`, `lines`, `lots` and `event_lines`. The client's balance row is
/// created or locked first, unless the document is stored already; the event's id is drawn only
/// then, under the lock, so that one client's events are numbered in the order they commit.
/// Returns the event's id, or `NULL` when the document was stored before (nothing is written).
/// A concurrent first delivery of the same document waits on the balance row, then fails on the
/// document's primary key, which undoes the whole call.
pub(crate) const EARN_FUNCTION: &str = r"
CREATE FUNCTION loyalty_earn(p jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_event bigint;
BEGIN
    WITH bal AS (
        INSERT INTO balances AS b
            (tenant_id, client_id, total, available, locked, reserved, last_event_id,
             event_count, updated_at)
        SELECT p->>'tenant', p->>'client', (p->>'total')::bigint, (p->>'available')::bigint,
            (p->>'locked')::bigint, 0,
            nextval(pg_get_serial_sequence('ledger_events', 'event_id')), 1,
            (p->>'now')::timestamptz
        WHERE NOT EXISTS (
            SELECT 1 FROM documents
            WHERE tenant_id = p->>'tenant' AND document_id = p->>'document')
        ON CONFLICT (tenant_id, client_id) DO UPDATE SET
            total = b.total + EXCLUDED.total,
            available = b.available + EXCLUDED.available,
            locked = b.locked + EXCLUDED.locked,
            last_event_id = nextval(pg_get_serial_sequence('ledger_events', 'event_id')),
            event_count = b.event_count + 1,
            updated_at = EXCLUDED.updated_at
        RETURNING b.last_event_id AS event_id, b.total AS total
    ), event AS (
        INSERT INTO ledger_events
        SELECT r.* FROM bal, jsonb_populate_record(NULL::ledger_events, p->'event'
            || jsonb_build_object('event_id', bal.event_id, 'balance_after', bal.total)) r
    ), document AS (
        INSERT INTO documents
        SELECT r.* FROM bal, jsonb_populate_record(NULL::documents,
            p->'document_row' || jsonb_build_object('event_id', bal.event_id)) r
    ), document_line AS (
        INSERT INTO document_lines
        SELECT r.* FROM bal, jsonb_array_elements(p->'lines') l,
            jsonb_populate_record(NULL::document_lines, l) r
    ), lot AS (
        INSERT INTO earn_lots
        SELECT r.* FROM bal, jsonb_array_elements(p->'lots') l,
            jsonb_populate_record(NULL::earn_lots,
                l || jsonb_build_object('event_id', bal.event_id)) r
    ), event_line AS (
        INSERT INTO ledger_event_lines
        SELECT r.* FROM bal, jsonb_array_elements(p->'event_lines') l,
            jsonb_populate_record(NULL::ledger_event_lines,
                l || jsonb_build_object('event_id', bal.event_id)) r
    )
    SELECT event_id INTO v_event FROM bal;
    RETURN v_event;
END;
$$";

/// Earns written together (group commit): each as [`EARN_FUNCTION`] writes it, in a
/// subtransaction of its own, so that one that fails leaves the others written. They are written
/// in the order of their clients (the balance rows are locked in key order, as a batch of
/// redemptions locks them, so that batches written side by side cannot deadlock); one row per
/// item, with its place in `p_items`, the event's id and what failed it (SQLSTATE, detail,
/// message).
pub(crate) const EARN_BATCH_FUNCTION: &str = r"
CREATE FUNCTION loyalty_earn_batch(p_items jsonb)
RETURNS TABLE (item bigint, event_id bigint, failed_state text, failed_detail text,
    failed_message text)
LANGUAGE plpgsql AS $$
DECLARE
    v_item record;
BEGIN
    FOR v_item IN
        SELECT i.value, i.ordinality FROM jsonb_array_elements(p_items) WITH ORDINALITY i
        ORDER BY i.value->>'tenant', i.value->>'client', i.ordinality
    LOOP
        item := v_item.ordinality;
        BEGIN
            event_id := loyalty_earn(v_item.value);
            failed_state := NULL;
            failed_detail := NULL;
            failed_message := NULL;
        EXCEPTION WHEN OTHERS THEN
            event_id := NULL;
            GET STACKED DIAGNOSTICS failed_state = RETURNED_SQLSTATE,
                failed_detail = PG_EXCEPTION_DETAIL, failed_message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END;
$$";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &[EARN_FUNCTION, EARN_BATCH_FUNCTION]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(
            manager,
            &[
                "DROP FUNCTION loyalty_earn_batch(jsonb)",
                "DROP FUNCTION loyalty_earn(jsonb)",
            ],
        )
        .await
    }
}
