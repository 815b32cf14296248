//! A document's lines and an event's per-line calculation are kept in the row they belong to,
//! as a JSON array in the column `lines` (text, the same on both backends), instead of one row
//! each in `document_lines` and `ledger_event_lines`. An earn of a 10-line invoice wrote 24 rows
//! and about 32 index entries, the baseline's ideal earn 12 rows; it now writes 4 rows (the
//! document, the event, the lot, the balance). The lines are only ever read with their
//! document or event, never searched by, so the rows and their keys bought nothing.
//!
//! `document_lines` and `ledger_event_lines` become views over the arrays, with the tables'
//! columns and types, so that an auditor's SQL reads every line as before. The lines already stored move
//! into the arrays, in line order. On PostgreSQL `loyalty_earn` is the one of
//! `m20261206_000017_earn_basis` with the two lines' inserts taken out and `lines` written with
//! the document and the event; the unit tests below check that it is.

use sea_orm_migration::prelude::*;

use crate::m20261122_000003_documents::document_lines_table;
use crate::m20261122_000006_ledger::ledger_event_lines_table;
use crate::m20261206_000017_earn_basis::earn_function_checked;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261207_000020_lines_in_their_rows"
    }
}

/// Where the earn function writes the event's and the document's last columns; `lines` follows.
const EVENT_LAST_COLUMN: &str = "r.actor_user_id, r.stacking_mode\n";
const DOCUMENT_LAST_COLUMN: &str = "r.received_at, r.processed_at\n";
/// The two inserts of lines, from their start to the next part of the statement.
const LINE_INSERTS: [(&str, &str); 2] = [
    ("    ), document_line AS (\n", "    ), lot AS (\n"),
    (
        "    ), event_line AS (\n",
        "    )\n    SELECT event_id INTO v_event",
    ),
];

fn earn_function_with_lines_in_rows() -> String {
    let mut function = earn_function_checked()
        .replacen(
            EVENT_LAST_COLUMN,
            "r.actor_user_id, r.stacking_mode, r.lines\n",
            1,
        )
        .replacen(
            DOCUMENT_LAST_COLUMN,
            "r.received_at, r.processed_at, r.lines\n",
            1,
        );
    for (start, next) in LINE_INSERTS {
        if let (Some(from), Some(to)) = (function.find(start), function.find(next)) {
            function.replace_range(from..to, "");
        }
    }
    function
}

const POSTGRES_UP: &[&str] = &[
    "ALTER TABLE documents ADD COLUMN lines text NOT NULL DEFAULT '[]'",
    "ALTER TABLE ledger_events ADD COLUMN lines text",
    r"UPDATE documents d SET lines = l.lines
    FROM (SELECT tenant_id, document_id,
            json_agg(json_build_object('line_no', line_no, 'product_id', product_id,
                'quantity', quantity, 'order_number', order_number,
                'corrected_line_no', corrected_line_no) ORDER BY line_no)::text AS lines
        FROM document_lines GROUP BY tenant_id, document_id) l
    WHERE d.tenant_id = l.tenant_id AND d.document_id = l.document_id",
    r"UPDATE ledger_events e SET lines = l.lines
    FROM (SELECT tenant_id, event_id,
            json_agg(json_build_object('line_no', line_no, 'product_id', product_id,
                'quantity', quantity, 'channel', channel, 'order_number', order_number,
                'pricing_date', pricing_date, 'base_points', base_points,
                'multiplier', multiplier, 'segment_id', segment_id,
                'segment_rate', segment_rate, 'unrounded_points', unrounded_points,
                'points', points, 'rules', rules::json, 'note', note) ORDER BY line_no)::text
                AS lines
        FROM ledger_event_lines GROUP BY tenant_id, event_id) l
    WHERE e.tenant_id = l.tenant_id AND e.event_id = l.event_id",
    "DROP TABLE document_lines",
    "DROP TABLE ledger_event_lines",
    r"CREATE VIEW document_lines AS
    SELECT d.tenant_id, d.document_id, l.line_no, l.product_id, l.quantity, l.order_number,
        l.corrected_line_no
    FROM documents d CROSS JOIN LATERAL jsonb_to_recordset(d.lines::jsonb) AS l(
        line_no integer, product_id varchar(128), quantity bigint, order_number varchar(128),
        corrected_line_no integer)",
    r"CREATE VIEW ledger_event_lines AS
    SELECT e.tenant_id, e.event_id, l.line_no, l.product_id, l.quantity, l.channel,
        l.order_number, l.pricing_date, l.base_points, l.multiplier, l.segment_id,
        l.segment_rate, l.unrounded_points, l.points, l.rules, l.note
    FROM ledger_events e CROSS JOIN LATERAL jsonb_to_recordset(e.lines::jsonb) AS l(
        line_no integer, product_id varchar(128), quantity bigint, channel varchar(32),
        order_number varchar(128), pricing_date date, base_points bigint, multiplier text,
        segment_id varchar(128), segment_rate text, unrounded_points text, points bigint,
        rules text, note text)
    WHERE e.lines IS NOT NULL",
];

const SQLITE_UP: &[&str] = &[
    "ALTER TABLE documents ADD COLUMN lines text NOT NULL DEFAULT '[]'",
    "ALTER TABLE ledger_events ADD COLUMN lines text",
    r"UPDATE documents SET lines = (
        SELECT json_group_array(json_object('line_no', line_no, 'product_id', product_id,
            'quantity', quantity, 'order_number', order_number,
            'corrected_line_no', corrected_line_no) ORDER BY line_no)
        FROM document_lines l
        WHERE l.tenant_id = documents.tenant_id AND l.document_id = documents.document_id)
    WHERE EXISTS (SELECT 1 FROM document_lines l
        WHERE l.tenant_id = documents.tenant_id AND l.document_id = documents.document_id)",
    r"UPDATE ledger_events SET lines = (
        SELECT json_group_array(json_object('line_no', line_no, 'product_id', product_id,
            'quantity', quantity, 'channel', channel, 'order_number', order_number,
            'pricing_date', pricing_date, 'base_points', base_points,
            'multiplier', multiplier, 'segment_id', segment_id,
            'segment_rate', segment_rate, 'unrounded_points', unrounded_points,
            'points', points, 'rules', json(rules), 'note', note) ORDER BY line_no)
        FROM ledger_event_lines l
        WHERE l.tenant_id = ledger_events.tenant_id AND l.event_id = ledger_events.event_id)
    WHERE EXISTS (SELECT 1 FROM ledger_event_lines l
        WHERE l.tenant_id = ledger_events.tenant_id AND l.event_id = ledger_events.event_id)",
    "DROP TABLE document_lines",
    "DROP TABLE ledger_event_lines",
    r"CREATE VIEW document_lines AS
    SELECT d.tenant_id, d.document_id,
        json_extract(l.value, '$.line_no') AS line_no,
        json_extract(l.value, '$.product_id') AS product_id,
        json_extract(l.value, '$.quantity') AS quantity,
        json_extract(l.value, '$.order_number') AS order_number,
        json_extract(l.value, '$.corrected_line_no') AS corrected_line_no
    FROM documents d, json_each(d.lines) l",
    r"CREATE VIEW ledger_event_lines AS
    SELECT e.tenant_id, e.event_id,
        json_extract(l.value, '$.line_no') AS line_no,
        json_extract(l.value, '$.product_id') AS product_id,
        json_extract(l.value, '$.quantity') AS quantity,
        json_extract(l.value, '$.channel') AS channel,
        json_extract(l.value, '$.order_number') AS order_number,
        json_extract(l.value, '$.pricing_date') AS pricing_date,
        json_extract(l.value, '$.base_points') AS base_points,
        json_extract(l.value, '$.multiplier') AS multiplier,
        json_extract(l.value, '$.segment_id') AS segment_id,
        json_extract(l.value, '$.segment_rate') AS segment_rate,
        json_extract(l.value, '$.unrounded_points') AS unrounded_points,
        json_extract(l.value, '$.points') AS points,
        json_extract(l.value, '$.rules') AS rules,
        json_extract(l.value, '$.note') AS note
    FROM ledger_events e, json_each(e.lines) l
    WHERE e.lines IS NOT NULL",
];

/// What `down` does once the tables are back: the views' rows into them, then the columns gone.
const DOWN_AFTER_TABLES: &[&str] = &[
    "INSERT INTO document_lines SELECT * FROM document_lines_kept",
    "INSERT INTO ledger_event_lines SELECT * FROM ledger_event_lines_kept",
    "DROP TABLE document_lines_kept",
    "DROP TABLE ledger_event_lines_kept",
    "ALTER TABLE documents DROP COLUMN lines",
    "ALTER TABLE ledger_events DROP COLUMN lines",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            crate::run_in_order(manager, POSTGRES_UP).await?;
            crate::run_in_order(manager, &[&earn_function_with_lines_in_rows()]).await
        } else {
            crate::run_in_order(manager, SQLITE_UP).await
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The earlier function writes the lines' tables: it goes back first.
        crate::on_postgres_only(manager, &[&earn_function_checked()]).await?;
        // The lines as the views read them, kept while the views make way for the tables.
        crate::run_in_order(
            manager,
            &[
                "CREATE TABLE document_lines_kept AS SELECT * FROM document_lines",
                "CREATE TABLE ledger_event_lines_kept AS SELECT * FROM ledger_event_lines",
                "DROP VIEW document_lines",
                "DROP VIEW ledger_event_lines",
            ],
        )
        .await?;
        manager.create_table(document_lines_table()).await?;
        manager.create_table(ledger_event_lines_table()).await?;
        crate::run_in_order(manager, DOWN_AFTER_TABLES).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earn_function_writes_the_lines_with_their_rows_and_no_line_rows() {
        let earlier = earn_function_checked();
        assert_eq!(earlier.matches("INSERT INTO document_lines").count(), 1);
        assert_eq!(earlier.matches("INSERT INTO ledger_event_lines").count(), 1);
        let function = earn_function_with_lines_in_rows();
        assert!(!function.contains("document_lines"));
        assert!(!function.contains("ledger_event_lines"));
        assert!(function.contains("r.actor_user_id, r.stacking_mode, r.lines\n"));
        assert!(function.contains("r.received_at, r.processed_at, r.lines\n"));
        // Everything else is as it was: the basis check, the balance, the event, the document,
        // the lot, and the event's id returned.
        assert!(function.contains("USING ERRCODE = 'LY004'"));
        for part in [
            "WITH bal AS (",
            "), event AS (",
            "), document AS (",
            "), lot AS (",
        ] {
            assert_eq!(function.matches(part).count(), 1, "{part}");
        }
        assert!(function.ends_with(
            "    SELECT event_id INTO v_event FROM bal;\n    RETURN v_event;\nEND;\n$$"
        ));
    }
}
