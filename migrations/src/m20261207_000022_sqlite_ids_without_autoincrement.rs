//! SQLite only: `ledger_events` and `outbox` give ids without `AUTOINCREMENT`.
//!
//! With `AUTOINCREMENT`, every insert into either table also updates that table's row in
//! `sqlite_sequence`, so each write transaction writes one more B-tree page to the write-ahead
//! log, and the update costs a look-up and a write of its own. Without it, SQLite gives the
//! largest id plus one. An id can then come back only if the row with the largest id is
//! deleted. Nothing deletes events or outbox messages: the ledger only grows, and a message
//! stays once delivered.
//!
//! Measured on copies of one database with and without the keyword, in turn (docs/PERFORMANCE.md,
//! fifteenth session): an earn with 8 callers took 1.16x the calls per second (higher in 7 of 7
//! rounds), and this migration against the build before it 1.04x to 1.13x on the earn and the
//! redemption.
//!
//! SQLite cannot drop the keyword in place, so each table is built again under its own
//! definition without it: the new table, its rows copied, the old one dropped, the new one
//! renamed, and the old one's indexes and triggers made again. Views that name the table
//! (`ledger_event_lines`) are dropped first and made again last, since a rename checks every
//! view. Every definition is read from `sqlite_master`, so what earlier migrations added (the
//! `lines` column, the partial indexes) comes through unchanged. The migration runs in one
//! transaction. PostgreSQL's ids come from sequences: nothing to do there.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261207_000022_sqlite_ids_without_autoincrement"
    }
}

const TABLES: [&str; 2] = ["ledger_events", "outbox"];
const WITH_SEQUENCE: &str = " PRIMARY KEY AUTOINCREMENT";
const WITHOUT_SEQUENCE: &str = " PRIMARY KEY";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            rebuild(manager, table, WITH_SEQUENCE, WITHOUT_SEQUENCE).await?;
        }
        Ok(())
    }

    /// The keyword back; copying the rows in sets `sqlite_sequence` to each table's largest id.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            rebuild(manager, table, WITHOUT_SEQUENCE, WITH_SEQUENCE).await?;
        }
        Ok(())
    }

    /// A failed rebuild must not leave a table dropped or a view missing.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// Builds `table` again on SQLite with its primary key's `from` made `to`; nothing elsewhere.
async fn rebuild(
    manager: &SchemaManager<'_>,
    table: &str,
    from: &str,
    to: &str,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let db = manager.get_connection();
    // (type, name, definition) of the schema objects a query names.
    let read = |sql: &'static str| async move {
        db.query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            [table.into()],
        ))
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get::<String>("", "type")?,
                row.try_get::<String>("", "name")?,
                row.try_get::<String>("", "sql")?,
            ))
        })
        .collect::<Result<Vec<_>, DbErr>>()
    };
    let (_, _, table_sql) =
        read("SELECT type, name, sql FROM sqlite_master WHERE type = 'table' AND name = ?")
            .await?
            .pop()
            .ok_or_else(|| DbErr::Migration(format!("no table {table}")))?;
    let rebuilt = format!("{table}_rebuilt");
    let new_table_sql = new_definition(&table_sql, table, &rebuilt, from, to)?;
    let own = read(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') \
         AND tbl_name = ? AND sql IS NOT NULL ORDER BY type, name",
    )
    .await?;
    // The views that name the table, then their triggers, which go with them.
    let views = read(
        "WITH naming AS (SELECT name FROM sqlite_master WHERE type = 'view' \
             AND sql LIKE '%' || ? || '%') \
         SELECT type, name, sql FROM sqlite_master WHERE name IN (SELECT name FROM naming) \
             OR (type = 'trigger' AND tbl_name IN (SELECT name FROM naming)) \
         ORDER BY type = 'trigger', name",
    )
    .await?;

    let mut statements: Vec<String> = views
        .iter()
        .filter(|(kind, _, _)| kind == "view")
        .map(|(_, view, _)| format!("DROP VIEW \"{view}\""))
        .collect();
    statements.extend([
        new_table_sql,
        // The same definition, so the same columns in the same order.
        format!("INSERT INTO \"{rebuilt}\" SELECT * FROM \"{table}\""),
        format!("DROP TABLE \"{table}\""),
        format!("ALTER TABLE \"{rebuilt}\" RENAME TO \"{table}\""),
    ]);
    statements.extend(own.into_iter().chain(views).map(|(_, _, sql)| sql));
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    crate::run_in_order(manager, &statements).await
}

/// `table`'s definition under the name `rebuilt`, with `from` made `to`: exactly one of each, or
/// an error (a definition this migration does not know).
fn new_definition(
    sql: &str,
    table: &str,
    rebuilt: &str,
    from: &str,
    to: &str,
) -> Result<String, DbErr> {
    let name = format!("CREATE TABLE \"{table}\" (");
    // " PRIMARY KEY" is a prefix of " PRIMARY KEY AUTOINCREMENT": the keyword is counted on its
    // own, once going up and not at all going down.
    let keyword_expected = usize::from(from == WITH_SEQUENCE);
    let found =
        sql.matches(WITH_SEQUENCE).count() == keyword_expected && sql.matches(from).count() == 1;
    if !sql.starts_with(&name) || !found {
        return Err(DbErr::Migration(format!(
            "{table} is not as the ledger's migrations made it: {sql}"
        )));
    }
    Ok(sql
        .replacen(&name, &format!("CREATE TABLE \"{rebuilt}\" ("), 1)
        .replacen(from, to, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEDGER: &str = "CREATE TABLE \"ledger_events\" ( \"event_id\" integer NOT NULL \
        PRIMARY KEY AUTOINCREMENT, \"tenant_id\" varchar(128) NOT NULL , lines text)";

    #[test]
    fn the_keyword_goes_and_comes_back_and_nothing_else_changes() {
        let without = new_definition(
            LEDGER,
            "ledger_events",
            "ledger_events",
            WITH_SEQUENCE,
            WITHOUT_SEQUENCE,
        )
        .expect("up");
        assert_eq!(without, LEDGER.replace(" AUTOINCREMENT", ""));
        let with = new_definition(
            &without,
            "ledger_events",
            "ledger_events",
            WITHOUT_SEQUENCE,
            WITH_SEQUENCE,
        )
        .expect("down");
        assert_eq!(with, LEDGER);
    }

    #[test]
    fn the_new_table_has_its_own_name() {
        let sql = new_definition(
            LEDGER,
            "ledger_events",
            "x",
            WITH_SEQUENCE,
            WITHOUT_SEQUENCE,
        )
        .expect("up");
        assert!(sql.starts_with("CREATE TABLE \"x\" ( \"event_id\" integer NOT NULL PRIMARY KEY,"));
    }

    #[test]
    fn a_definition_it_does_not_know_is_refused() {
        let twice = LEDGER.replace(", lines text", ", \"x\" integer PRIMARY KEY AUTOINCREMENT");
        for (sql, from, to) in [
            (
                LEDGER.replace(" AUTOINCREMENT", ""),
                WITH_SEQUENCE,
                WITHOUT_SEQUENCE,
            ),
            (twice, WITH_SEQUENCE, WITHOUT_SEQUENCE),
            (LEDGER.to_owned(), WITHOUT_SEQUENCE, WITH_SEQUENCE),
            (
                LEDGER.replace("ledger_events", "other"),
                WITH_SEQUENCE,
                WITHOUT_SEQUENCE,
            ),
        ] {
            assert!(
                new_definition(&sql, "ledger_events", "r", from, to).is_err(),
                "{sql}"
            );
        }
    }
}
