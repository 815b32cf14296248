//! The append-only ledger: events with their per-line calculation, the maintained balance row
//! per client (updated in the same transaction as each event, with conditional updates so that
//! spends cannot overdraw) and earn lots for locking and expiry.
//!
//! Unique constraints make double processing impossible: one event per document, one event per
//! request id, one Use and one Refund per redemption, one Use per reservation, one Expire per lot.

use sea_orm_migration::prelude::*;

use crate::columns::{
    amount, big, create_all, day, drop_all, flag, id, index, instant, int, label, opt_amount,
    opt_big, opt_id, opt_instant, opt_label, opt_text, serial, table, tenant, text,
};

pub struct Migration;

const TABLES: &[&str] = &[
    "ledger_events",
    "ledger_event_lines",
    "balances",
    "earn_lots",
];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000006_ledger"
    }
}

/// Constraints that only hold for some event types; partial unique indexes, the same SQL on
/// SQLite and PostgreSQL.
const PARTIAL_UNIQUE_INDEXES: &[&str] = &[
    "CREATE UNIQUE INDEX ux_ledger_events_redemption ON ledger_events \
     (tenant_id, redemption_id, event_type) WHERE redemption_id IS NOT NULL",
    "CREATE UNIQUE INDEX ux_ledger_events_reservation ON ledger_events \
     (tenant_id, reservation_id) WHERE reservation_id IS NOT NULL",
    "CREATE UNIQUE INDEX ux_ledger_events_expired_lot ON ledger_events \
     (tenant_id, related_event_id) WHERE event_type = 'EXPIRE'",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "ledger_events",
                vec![
                    // A global append sequence; every read also filters by tenant.
                    serial("event_id"),
                    tenant(),
                    id("client_id"),
                    // EARN, USE, LOSE, EXPIRE, ADJUST or REFUND.
                    label("event_type"),
                    // Signed.
                    amount("points"),
                    amount("balance_after"),
                    instant("occurred_at"),
                    instant("recorded_at"),
                    opt_id("document_id"),
                    opt_id("redemption_id"),
                    opt_id("reservation_id"),
                    opt_big("related_event_id"),
                    opt_id("request_id"),
                    opt_label("reason_code"),
                    opt_text("reason"),
                    opt_id("actor_key_id"),
                    opt_id("actor_user_id"),
                    opt_label("stacking_mode"),
                ],
                &[],
            ),
            ledger_event_lines_table(),
            table(
                "balances",
                vec![
                    tenant(),
                    id("client_id"),
                    amount("total"),
                    amount("available"),
                    amount("locked"),
                    amount("reserved"),
                    opt_big("last_event_id"),
                    int("event_count"),
                    instant("updated_at"),
                ],
                &["tenant_id", "client_id"],
            ),
            table(
                "earn_lots",
                vec![
                    tenant(),
                    // The Earn (or positive Adjust) event that created the lot.
                    big("event_id"),
                    id("client_id"),
                    amount("points"),
                    // Not yet spent, lost or expired.
                    amount("remaining"),
                    flag("locked", false),
                    opt_instant("unlocks_at"),
                    opt_instant("expires_at"),
                    instant("earned_at"),
                ],
                &["tenant_id", "event_id"],
            ),
        ];
        let indexes = vec![
            index(
                "ledger_events",
                "ix_ledger_events_client",
                &["tenant_id", "client_id", "event_id"],
                false,
            ),
            index(
                "ledger_events",
                "ux_ledger_events_document",
                &["tenant_id", "document_id"],
                true,
            ),
            index(
                "ledger_events",
                "ux_ledger_events_request",
                &["tenant_id", "request_id"],
                true,
            ),
            index(
                "earn_lots",
                "ix_earn_lots_client",
                &["tenant_id", "client_id", "earned_at"],
                false,
            ),
            index(
                "earn_lots",
                "ix_earn_lots_unlock",
                &["locked", "unlocks_at"],
                false,
            ),
            index("earn_lots", "ix_earn_lots_expiry", &["expires_at"], false),
        ];
        create_all(manager, tables, indexes).await?;
        let db = manager.get_connection();
        for sql in PARTIAL_UNIQUE_INDEXES {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}

/// The table of an event's lines as this migration made it: `m20261207_000020_lines_in_their_rows`
/// keeps the lines in the event's row, makes `ledger_event_lines` a view, and brings the table
/// back in its `down`.
pub(crate) fn ledger_event_lines_table() -> TableCreateStatement {
    table(
        "ledger_event_lines",
        vec![
            tenant(),
            big("event_id"),
            int("line_no"),
            id("product_id"),
            amount("quantity"),
            label("channel"),
            opt_id("order_number"),
            day("pricing_date"),
            opt_amount("base_points"),
            // Exact decimal text: products of factors can have more digits than the
            // storage scale.
            text("multiplier"),
            opt_id("segment_id"),
            text("segment_rate"),
            text("unrounded_points"),
            amount("points"),
            // JSON array of every rule considered, applied or not and why.
            text("rules"),
            opt_text("note"),
        ],
        &["tenant_id", "event_id", "line_no"],
    )
}
