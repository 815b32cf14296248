//! Loyalty agreement versions, users' consent events (idempotent by event id) and each client's
//! eligibility intervals, kept as a derived table so that "was client C agreed on day D" is one
//! index probe.

use sea_orm_migration::prelude::*;

use crate::columns::{
    create_all, drop_all, id, index, instant, int, label, opt_instant, table, tenant, text,
};

pub struct Migration;

const TABLES: &[&str] = &["agreement_versions", "consent_events", "client_eligibility"];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000004_agreements"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "agreement_versions",
                vec![
                    tenant(),
                    id("declaration_type_id"),
                    int("version"),
                    instant("published_at"),
                    text("title"),
                    text("content_url"),
                    instant("recorded_at"),
                ],
                &["tenant_id", "declaration_type_id", "version"],
            ),
            table(
                "consent_events",
                vec![
                    tenant(),
                    id("event_id"),
                    id("user_id"),
                    id("client_id"),
                    // ACCEPT or WITHDRAW.
                    label("action"),
                    instant("occurred_at"),
                    id("declaration_type_id"),
                    int("agreement_version"),
                    text("source"),
                    instant("recorded_at"),
                ],
                &["tenant_id", "event_id"],
            ),
            // Derived from consents, users, clients and versions, rewritten in the transaction
            // that changes any of them; per declaration type, so that changing the configured
            // type needs no recomputation.
            table(
                "client_eligibility",
                vec![
                    tenant(),
                    id("declaration_type_id"),
                    id("client_id"),
                    // Half-open [valid_from, valid_until); an open end is NULL.
                    instant("valid_from"),
                    opt_instant("valid_until"),
                ],
                &[
                    "tenant_id",
                    "declaration_type_id",
                    "client_id",
                    "valid_from",
                ],
            ),
        ];
        let indexes = vec![
            index(
                "consent_events",
                "ix_consent_events_user",
                &["tenant_id", "user_id", "occurred_at"],
                false,
            ),
            index(
                "consent_events",
                "ix_consent_events_client",
                &["tenant_id", "client_id", "declaration_type_id"],
                false,
            ),
        ];
        create_all(manager, tables, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
