//! The indexes on an optional key hold only the rows that have one, on both backends.
//!
//! Both backends put a row whose key is NULL into a plain index. Such an entry makes no key
//! unique and is never looked up, but it is written and kept all the same. Most rows had one:
//!
//! - `ux_ledger_events_request`: every earn's event has no request id (a document names it);
//! - `ux_ledger_events_document`: no redemption's or adjustment's event has a document;
//! - `ix_documents_corrected`: only a correction names the document it corrects;
//! - `ux_redemptions_code`: a redemption delivered without a code has none.
//!
//! So an earn wrote two needless index entries and a redemption one. On SQLite each is also a page
//! of its own in the write-ahead log at every commit. Measured on copies of one database with the
//! indexes as they were and as they are now (docs/PERFORMANCE.md, fourteenth session): an earn with
//! 8 callers took 1.05x the calls per second on both backends.
//!
//! Uniqueness is unchanged: NULLs never conflicted. A look-up by one of these keys compares it
//! with `=`, which implies `IS NOT NULL`, so both planners still use the partial index for it.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261207_000021_optional_keys_indexed_where_set"
    }
}

/// Same SQL on both backends.
const UP: &[&str] = &[
    "DROP INDEX ux_ledger_events_request",
    "CREATE UNIQUE INDEX ux_ledger_events_request ON ledger_events (tenant_id, request_id) \
     WHERE request_id IS NOT NULL",
    "DROP INDEX ux_ledger_events_document",
    "CREATE UNIQUE INDEX ux_ledger_events_document ON ledger_events (tenant_id, document_id) \
     WHERE document_id IS NOT NULL",
    "DROP INDEX ix_documents_corrected",
    "CREATE INDEX ix_documents_corrected ON documents (tenant_id, corrected_document_id) \
     WHERE corrected_document_id IS NOT NULL",
    "DROP INDEX ux_redemptions_code",
    "CREATE UNIQUE INDEX ux_redemptions_code ON redemptions (tenant_id, code) \
     WHERE code IS NOT NULL",
];

/// The indexes of `m20261122_000003`, `m20261122_000006` and `m20261122_000007`, as they were.
const DOWN: &[&str] = &[
    "DROP INDEX ux_redemptions_code",
    "CREATE UNIQUE INDEX ux_redemptions_code ON redemptions (tenant_id, code)",
    "DROP INDEX ix_documents_corrected",
    "CREATE INDEX ix_documents_corrected ON documents (tenant_id, corrected_document_id)",
    "DROP INDEX ux_ledger_events_document",
    "CREATE UNIQUE INDEX ux_ledger_events_document ON ledger_events (tenant_id, document_id)",
    "DROP INDEX ux_ledger_events_request",
    "CREATE UNIQUE INDEX ux_ledger_events_request ON ledger_events (tenant_id, request_id)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_in_order(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_in_order(manager, DOWN).await
    }
}
