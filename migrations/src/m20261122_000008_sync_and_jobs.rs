//! Background work: the synchronization cursor of each (tenant, stream), advanced in the
//! transaction that stores what was read; the outbox of deliveries to ONe and e-mail; and the
//! job table. Outbox messages and jobs are leased through the database so that several replicas
//! never run the same one at once.

use sea_orm_migration::prelude::*;

use crate::columns::{
    big, create_all, drop_all, flag, id, index, instant, int, label, opt_id, opt_instant, opt_text,
    serial, table, tenant, text,
};

pub struct Migration;

const TABLES: &[&str] = &["sync_cursors", "outbox", "jobs"];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000008_sync_and_jobs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "sync_cursors",
                vec![
                    tenant(),
                    // PRODUCTS, CLIENTS, USERS, SEGMENTS, ORDERS, DOCUMENTS, DECLARATIONS,
                    // COUPON_POOLS.
                    label("stream"),
                    // The ONe `nextId` to continue from; empty at the beginning.
                    text("cursor"),
                    opt_instant("last_success_at"),
                    opt_instant("last_attempt_at"),
                    opt_text("last_error"),
                    big("items_synced"),
                    flag("full_resync_requested", false),
                    instant("updated_at"),
                ],
                &["tenant_id", "stream"],
            ),
            table(
                "outbox",
                vec![
                    serial("message_id"),
                    tenant(),
                    // ADD_POOL_CODE or SEND_SPECIAL_EMAIL.
                    label("kind"),
                    // What it delivers (a redemption id); with kind, unique.
                    id("aggregate_id"),
                    // JSON.
                    text("payload"),
                    // PENDING, DELIVERED or REJECTED.
                    label("status"),
                    int("attempts"),
                    instant("next_attempt_at"),
                    opt_id("lease_owner"),
                    opt_instant("lease_until"),
                    opt_text("last_error"),
                    instant("created_at"),
                    opt_instant("delivered_at"),
                ],
                &[],
            ),
            table(
                "jobs",
                vec![
                    serial("job_id"),
                    tenant(),
                    // e.g. EARN_DOCUMENT, UNLOCK_LOTS, EXPIRE_LOTS, RELEASE_RESERVATIONS.
                    label("kind"),
                    id("job_key"),
                    // PENDING, RUNNING, DONE or FAILED.
                    label("status"),
                    instant("run_after"),
                    int("attempts"),
                    opt_id("lease_owner"),
                    opt_instant("lease_until"),
                    opt_text("last_error"),
                    instant("created_at"),
                    opt_instant("finished_at"),
                ],
                &[],
            ),
        ];
        let indexes = vec![
            index(
                "outbox",
                "ux_outbox_aggregate",
                &["tenant_id", "kind", "aggregate_id"],
                true,
            ),
            index(
                "outbox",
                "ix_outbox_due",
                &["status", "next_attempt_at"],
                false,
            ),
            index(
                "jobs",
                "ux_jobs_key",
                &["tenant_id", "kind", "job_key"],
                true,
            ),
            index("jobs", "ix_jobs_due", &["status", "run_after"], false),
        ];
        create_all(manager, tables, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
