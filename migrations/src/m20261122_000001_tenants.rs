//! Tenants, their settings (DOMAIN.md §8) as an append-only history of revisions, API keys (only a hash is kept) and the records that
//! make every mutating call idempotent.

use sea_orm_migration::prelude::*;

use crate::columns::{
    create_all, drop_all, flag, id, index, instant, int, label, opt_day, opt_id, opt_instant,
    opt_text, table, tenant, text,
};

pub struct Migration;

const TABLES: &[&str] = &[
    "tenants",
    "tenant_settings",
    "api_keys",
    "idempotency_records",
];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000001_tenants"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "tenants",
                vec![
                    tenant(),
                    text("name"),
                    flag("disabled", false),
                    instant("created_at"),
                ],
                &["tenant_id"],
            ),
            table(
                "tenant_settings",
                vec![
                    tenant(),
                    text("company_logo_url"),
                    text("declaration_type_id"),
                    int("points_scale"),
                    label("stacking_mode"),
                    flag("offline_lines_earn", true),
                    int("lock_days"),
                    int("expiry_months"),
                    int("reservation_ttl_seconds"),
                    text("time_zone"),
                    int("day_close_grace_minutes"),
                    int("expiring_window_days"),
                    // Comma-separated document kinds, e.g. "INVOICE,CORRECTION".
                    text("sync_document_kinds"),
                    opt_day("sync_from_date"),
                    int("sync_interval_seconds"),
                    // Append-only: every change is a new revision; the highest is in force.
                    int("revision"),
                    opt_id("request_id"),
                    opt_id("changed_by_key_id"),
                    instant("updated_at"),
                ],
                &["tenant_id", "revision"],
            ),
            table(
                "api_keys",
                vec![
                    tenant(),
                    id("key_id"),
                    // SHA-256 of the whole key, hex; keys are 256-bit random, so a fast hash is
                    // enough and makes the lookup an index probe.
                    id("key_hash"),
                    // Comma-separated role names.
                    text("roles"),
                    text("label"),
                    instant("created_at"),
                    opt_instant("revoked_at"),
                ],
                &["tenant_id", "key_id"],
            ),
            table(
                "idempotency_records",
                vec![
                    tenant(),
                    id("request_id"),
                    // The RPC, e.g. "SettingsService/UpdateSettings".
                    text("operation"),
                    // SHA-256 of the canonical request payload.
                    id("request_hash"),
                    // What the first call produced (an id or a revision), replayed to retries.
                    opt_text("result_ref"),
                    instant("created_at"),
                ],
                &["tenant_id", "request_id"],
            ),
        ];
        let indexes = vec![index("api_keys", "ux_api_keys_hash", &["key_hash"], true)];
        create_all(manager, tables, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
