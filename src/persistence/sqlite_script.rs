//! SQLite only: a received invoice with its earn written in one script. Each statement sent to
//! SQLite is a hand-off to the connection's worker thread and back (two thread switches), and an
//! earn written statement by statement was ten of them (docs/PERFORMANCE.md); as one script it
//! is three: `BEGIN IMMEDIATE`, the script, `COMMIT`.
//!
//! The script's statements are built from the rows the transaction path builds (`event_row`,
//! `document_row`, `line_rows`, `lot_row`, the event lines' `row`) and bound as that path binds
//! them; only the values that the database decides are expressions: the event's id (SQLite's,
//! `last_insert_rowid()` right after the event is inserted, then the balance row's
//! `last_event_id`) and the running balance. The write lock taken by `BEGIN IMMEDIATE` keeps what
//! they read true until the commit. A statement that fails stops the script, and the transaction
//! is rolled back: a document stored before fails on its primary key and writes nothing.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, Func, InsertStatement, OnConflict, Query, QueryStatementBuilder,
    SelectStatement,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    IdenStatic, Iterable, QueryResult, Statement, StatementBuilder, Value,
};

use super::db::begin_write;
use super::documents::{document_row, line_rows};
use super::entities::{
    balances, document_lines, documents, earn_lots, ledger_event_lines, ledger_events,
};
use super::error::{RepoError, classify};
use super::event_lines::row as event_line_row;
use super::group_commit::BatchWriter;
use super::ledger::{empty_balance_row, entering_locked, event_row, lot_row};
use crate::domain::documents::DocumentRecord;
use crate::domain::engine::LineCalculation;
use crate::domain::ledger::NewLedgerEvent;
use crate::domain::points::to_minor_units;
use crate::domain::tenant::TenantId;

/// Rows per INSERT, below SQLite's bound-value limit.
const CHUNK: usize = 500;

/// A decided document with its earn (`few_statements::is_plain_earn`), ready for
/// [`EarnScriptWriter`]: its script.
#[derive(Debug)]
pub struct PreparedScriptEarn {
    script: Script,
}

impl PreparedScriptEarn {
    /// `stored`: the record as it stands once decided, with its earn `event` and `lines`.
    ///
    /// # Errors
    /// Points that do not fit the storage scale, or a row that cannot be encoded.
    pub fn new(
        tenant: &TenantId,
        stored: &DocumentRecord,
        event: &NewLedgerEvent,
        lines: &[LineCalculation],
        now: DateTime<Utc>,
    ) -> Result<Self, RepoError> {
        let mut script = Script::default();
        earn_script(&mut script, tenant, stored, event, lines, now)?;
        Ok(Self { script })
    }

    /// Writes the earn inside `txn`, in a savepoint of its own. The outer error: the
    /// transaction cannot go on (nothing in it may commit). The inner result is the earn's own,
    /// as [`outcome`] tells it; one that failed is undone.
    async fn write_in_savepoint(
        self,
        txn: &impl ConnectionTrait,
    ) -> Result<Result<Option<i64>, RepoError>, RepoError> {
        let mut script = Script::default();
        script.push_sql(&format!("SAVEPOINT {SAVEPOINT}"));
        script.append(self.script);
        script.push_sql(&format!("RELEASE {SAVEPOINT}"));
        let ran = script.run(txn).await;
        if ran.is_err() {
            // The script stopped at the statement that failed, inside its savepoint.
            txn.execute_unprepared(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"))
                .await
                .map_err(classify)?;
        }
        outcome(ran)
    }
}

/// The savepoint of each earn in a batch.
const SAVEPOINT: &str = "loyalty_earn";

/// What an earn's script came to. Inner: `Some(event id)`; `None` when the document was stored
/// before (its primary key: by an earlier delivery, another process, or earlier in the batch);
/// or what failed it. Outer: a script that ran but did not answer with the event's id, whose
/// writes must not commit.
fn outcome(
    ran: Result<Vec<QueryResult>, RepoError>,
) -> Result<Result<Option<i64>, RepoError>, RepoError> {
    match ran {
        Ok(rows) => match rows.first() {
            Some(row) => Ok(Ok(Some(
                row.try_get::<i64>("", "event_id").map_err(classify)?,
            ))),
            None => Err(RepoError::Other("the earn script answered nothing".into())),
        },
        Err(RepoError::Conflict(_)) => Ok(Ok(None)),
        Err(other) => Ok(Err(other)),
    }
}

/// Stores decided documents with their earns on SQLite: a lone earn, or those queued together
/// (group commit), in one transaction, one commit and one fsync; each earn in one script, and
/// in a batch in a savepoint of its own, so that one that fails (a document stored before)
/// leaves the others written. Each is answered once the transaction has committed.
#[derive(Debug)]
pub struct EarnScriptWriter {
    db: DatabaseConnection,
}

impl EarnScriptWriter {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn write_all(
        &self,
        mut items: Vec<PreparedScriptEarn>,
    ) -> Result<Vec<Result<Option<i64>, RepoError>>, RepoError> {
        let txn = begin_write(&self.db).await?;
        if items.len() == 1
            && let Some(alone) = items.pop()
        {
            // Alone in its transaction: one that fails is undone by the rollback, with no
            // savepoint to pay for.
            let written = outcome(alone.script.run(&*txn).await)?;
            if written.as_ref().is_ok_and(Option::is_some) {
                txn.commit().await.map_err(classify)?;
            }
            return Ok(vec![written]);
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(item.write_in_savepoint(&*txn).await?);
        }
        txn.commit().await.map_err(classify)?;
        Ok(outcomes)
    }
}

impl BatchWriter<PreparedScriptEarn, Option<i64>> for EarnScriptWriter {
    async fn write(&self, items: Vec<PreparedScriptEarn>) -> Vec<Result<Option<i64>, RepoError>> {
        let count = items.len();
        // A transaction that did not commit wrote none of them.
        self.write_all(items)
            .await
            .unwrap_or_else(|err| (0..count).map(|_| Err(err.clone())).collect())
    }
}

/// The statements of one earn, in order: the event (its running balance read from the balance
/// row as it stands), the balance row (created or added to; its `last_event_id` the event's),
/// the document with its lines, the lot, the event's lines, and last the event's id.
fn earn_script(
    script: &mut Script,
    tenant: &TenantId,
    stored: &DocumentRecord,
    event: &NewLedgerEvent,
    lines: &[LineCalculation],
    now: DateTime<Utc>,
) -> Result<(), RepoError> {
    let points = to_minor_units(event.points).map_err(|e| RepoError::Other(e.to_string()))?;
    let into_locked = entering_locked(event, points);
    let client = event.client_id.as_str();

    let total_before = Expr::expr(Func::coalesce([
        balance_column(tenant, client, balances::Column::Total),
        Expr::val(0),
    ]));
    script.push(&insert_rows(
        &[event_row(tenant, event, points, 0, now)],
        &[(
            ledger_events::Column::BalanceAfter,
            total_before.add(points),
        )],
    )?);

    let added = |column: balances::Column| {
        Expr::col((balances::Entity, column)).add(Expr::col((Alias::new("excluded"), column)))
    };
    // What the earn adds to the row; its id is the event's, given by SQLite just before.
    let balance = balances::ActiveModel {
        total: Set(points),
        available: Set(points - into_locked),
        locked: Set(into_locked),
        event_count: Set(1),
        last_event_id: NotSet,
        ..empty_balance_row(tenant, client, now)
    };
    let mut upsert = insert_rows(
        &[balance],
        &[(
            balances::Column::LastEventId,
            Expr::cust("last_insert_rowid()"),
        )],
    )?;
    upsert.on_conflict(
        OnConflict::columns([balances::Column::TenantId, balances::Column::ClientId])
            .value(balances::Column::Total, added(balances::Column::Total))
            .value(
                balances::Column::Available,
                added(balances::Column::Available),
            )
            .value(balances::Column::Locked, added(balances::Column::Locked))
            .value(
                balances::Column::EventCount,
                added(balances::Column::EventCount),
            )
            .update_columns([balances::Column::LastEventId, balances::Column::UpdatedAt])
            .to_owned(),
    );
    script.push(&upsert);

    let this_event = || balance_column(tenant, client, balances::Column::LastEventId);
    script.push(&insert_rows(
        &[document_row(tenant, stored)?],
        &[(documents::Column::EventId, this_event())],
    )?);
    for chunk in line_rows(tenant, &stored.document)?.chunks(CHUNK) {
        script.push(&insert_rows::<document_lines::ActiveModel>(chunk, &[])?);
    }
    if let (Some(terms), true) = (event.lot, points > 0) {
        script.push(&insert_rows(
            &[lot_row(tenant, client, 0, points, terms, now)],
            &[(earn_lots::Column::EventId, this_event())],
        )?);
    }
    let event_lines = lines
        .iter()
        .map(|l| event_line_row(tenant, 0, l))
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in event_lines.chunks(CHUNK) {
        script.push(&insert_rows(
            chunk,
            &[(ledger_event_lines::Column::EventId, this_event())],
        )?);
    }
    script.push(balance_row(tenant, client).expr_as(
        Expr::col(balances::Column::LastEventId),
        Alias::new("event_id"),
    ));
    Ok(())
}

/// The client's balance row, to select from.
fn balance_row(tenant: &TenantId, client: &str) -> SelectStatement {
    Query::select()
        .from(balances::Entity)
        .and_where(balances::Column::TenantId.eq(tenant.as_str()))
        .and_where(balances::Column::ClientId.eq(client))
        .to_owned()
}

/// `column` of the client's balance row, as a value.
fn balance_column(tenant: &TenantId, client: &str, column: balances::Column) -> Expr {
    let select = balance_row(tenant, client).column(column).to_owned();
    Expr::SubQuery(None, Box::new(select.into_sub_query_statement()))
}

/// An INSERT of `rows`: the columns the first row sets, each value bound as the row holds it,
/// but for the columns given with an expression of their own (the same for every row).
fn insert_rows<A: ActiveModelTrait>(
    rows: &[A],
    expressions: &[(<A::Entity as EntityTrait>::Column, Expr)],
) -> Result<InsertStatement, RepoError> {
    let given = |column: &<A::Entity as EntityTrait>::Column| {
        expressions
            .iter()
            .find(|(c, _)| c.as_str() == column.as_str())
            .map(|(_, e)| e.clone())
    };
    let first = rows
        .first()
        .ok_or_else(|| RepoError::Other("an insert of no rows".into()))?;
    let columns: Vec<_> = <A::Entity as EntityTrait>::Column::iter()
        .filter(|c| given(c).is_some() || first.get(*c).into_value().is_some())
        .collect();
    let mut insert = Query::insert();
    insert
        .into_table(A::Entity::default())
        .columns(columns.iter().copied());
    for row in rows {
        let values = columns
            .iter()
            .map(|c| match given(c) {
                Some(expression) => Ok(expression),
                None => row.get(*c).into_value().map(Expr::val).ok_or_else(|| {
                    RepoError::Other(format!("a row without the column {}", c.as_str()))
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        insert
            .values(values)
            .map_err(|e| RepoError::Other(e.to_string()))?;
    }
    Ok(insert)
}

/// Statements sent to SQLite as one, run in order by its connection's worker thread; the rows
/// they return, in order.
#[derive(Debug, Default)]
struct Script {
    sql: String,
    values: Vec<Value>,
}

impl Script {
    fn push(&mut self, statement: &impl StatementBuilder) {
        let built = DbBackend::Sqlite.build(statement);
        self.push_sql(&built.sql);
        self.values
            .extend(built.values.map(|v| v.0).unwrap_or_default());
    }

    /// `other`'s statements after these.
    fn append(&mut self, other: Self) {
        self.push_sql(&other.sql);
        self.values.extend(other.values);
    }

    /// A statement that binds no value.
    fn push_sql(&mut self, sql: &str) {
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        self.sql.push_str(sql);
    }

    async fn run(self, conn: &impl ConnectionTrait) -> Result<Vec<QueryResult>, RepoError> {
        conn.query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            self.sql,
            self.values,
        ))
        .await
        .map_err(classify)
    }
}
