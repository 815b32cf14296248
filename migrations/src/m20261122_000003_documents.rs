//! Invoices and corrections with their lines, from synchronization, the API or an offline upload.
//! The primary key (tenant, document id) is what makes "one earn per document" hold.

use sea_orm_migration::prelude::*;

use crate::columns::{
    amount, create_all, day, drop_all, flag, id, index, instant, int, label, opt_big, opt_id,
    opt_instant, opt_int, opt_label, table, tenant, text,
};

pub struct Migration;

const TABLES: &[&str] = &["documents", "document_lines"];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000003_documents"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "documents",
                vec![
                    tenant(),
                    id("document_id"),
                    text("number"),
                    // INVOICE or CORRECTION.
                    label("kind"),
                    id("client_id"),
                    day("sale_date"),
                    opt_instant("issued_at"),
                    // JSON array of `customerPurchaseNumbers`.
                    text("customer_purchase_numbers"),
                    // VALUABLE or QUANTITATIVE, corrections only.
                    opt_label("correction_type"),
                    opt_id("corrected_document_id"),
                    flag("offline", false),
                    // SYNC, API or IMPORT.
                    label("source"),
                    // PENDING_DAY_CLOSE, WAITING_FOR_DATA, PROCESSED or NOT_EARNING.
                    label("status"),
                    opt_label("non_earning_reason"),
                    // Signed points of the event written for it (0 when none).
                    amount("points"),
                    opt_big("event_id"),
                    // When the earning job may take it: the close of its sale day plus grace.
                    opt_instant("earn_after"),
                    int("attempts"),
                    instant("received_at"),
                    opt_instant("processed_at"),
                ],
                &["tenant_id", "document_id"],
            ),
            document_lines_table(),
        ];
        let indexes = vec![
            index(
                "documents",
                "ix_documents_status",
                &["tenant_id", "status", "earn_after"],
                false,
            ),
            index(
                "documents",
                "ix_documents_client",
                &["tenant_id", "client_id", "sale_date"],
                false,
            ),
            index(
                "documents",
                "ix_documents_corrected",
                &["tenant_id", "corrected_document_id"],
                false,
            ),
        ];
        create_all(manager, tables, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}

/// The table of a document's lines as this migration made it: `m20261207_000020_lines_in_their_rows`
/// keeps the lines in the document's row, makes `document_lines` a view, and brings the table
/// back in its `down`.
pub(crate) fn document_lines_table() -> TableCreateStatement {
    table(
        "document_lines",
        vec![
            tenant(),
            id("document_id"),
            int("line_no"),
            id("product_id"),
            amount("quantity"),
            opt_id("order_number"),
            opt_int("corrected_line_no"),
        ],
        &["tenant_id", "document_id", "line_no"],
    )
}
