//! SQLite only: the two hot writes in few scripts. Each statement sent to SQLite is a hand-off to
//! the connection's worker thread and back (two thread switches); written statement by
//! statement, an earn was ten of them and a redemption twelve and one per lot it spent
//! (docs/PERFORMANCE.md). A script is statements sent as one: sqlx-sqlite runs them in order in
//! its worker thread, binding the values statement by statement, and stops at the first that
//! fails. An earn is `BEGIN IMMEDIATE`, one script, `COMMIT`; a redemption is two scripts, what
//! it reads under the write lock and, once its checks pass, what it writes.
//!
//! The statements are built from the rows the transaction path builds (`event_row`,
//! `document_row`, `line_rows`, `lot_row`, the event lines' `row`, `record_row`, the
//! redemption's `to_row`, `outbox_row`) and bound as that path binds them; only the values the
//! database decides are expressions: the event's id (`last_insert_rowid()` right after the
//! event is inserted, then the balance row's `last_event_id`) and the running balance. The write
//! lock taken by `BEGIN IMMEDIATE` keeps what they read true until the commit.
//!
//! [`ScriptWriter`] writes them with group commit: those that arrive together in one transaction,
//! each in a savepoint of its own.

use std::future::Future;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    Alias, Asterisk, Expr, ExprTrait, InsertStatement, Query, QueryStatementBuilder,
    SelectStatement,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, IdenStatic, Iterable, QueryResult, QueryTrait, Statement,
    StatementBuilder, Value,
};

use super::RedeemPlan;
use super::db::begin_write;
use super::documents::{document_row, line_rows};
use super::entities::{
    balances, coupons, document_lines, documents, earn_lots, ledger_event_lines, ledger_events,
    redemptions,
};
use super::error::{RepoError, classify};
use super::event_lines::row as event_line_row;
use super::group_commit::BatchWriter;
use super::idempotency::record_row;
use super::ledger::{
    BalanceMove, balance_update, ensure_balance_statement, entering_locked, event_row, lot_row,
    spend_source,
};
use super::redemptions::{
    limit_reached, live_statuses, out_of_stock, outbox_row, stored_at, to_row,
};
use crate::domain::documents::DocumentRecord;
use crate::domain::engine::LineCalculation;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::ledger::NewLedgerEvent;
use crate::domain::points::to_minor_units;
use crate::domain::redemption::Redemption;
use crate::domain::tenant::TenantId;

/// Rows per INSERT, below SQLite's bound-value limit.
const CHUNK: usize = 500;

/// A write that [`ScriptWriter`] can put in a batch.
pub trait ScriptItem: Send + 'static {
    type Written: Send + 'static;

    /// Writes the item inside `txn`, in as few scripts as it can. With `savepoint`, its first
    /// script opens [`SAVEPOINT`] and its last releases it. An error may leave what ran of it in
    /// the transaction: the writer undoes it.
    fn write_in(
        self,
        txn: &DatabaseTransaction,
        savepoint: bool,
    ) -> impl Future<Output = Result<Self::Written, RepoError>> + Send;

    /// What an item's error, undone, means for its caller.
    fn settle(written: Result<Self::Written, RepoError>) -> Result<Self::Written, RepoError> {
        written
    }
}

/// The savepoint of each item in a batch.
const SAVEPOINT: &str = "loyalty_item";

/// Writes script items on SQLite: a lone item, or those queued together (group commit), in one
/// transaction, one commit and one fsync. In a batch each item is in a savepoint of its own, so
/// that one that fails is undone alone and the others are written; a lone item that fails is
/// undone by the rollback. Each is answered once the transaction has committed.
#[derive(Debug)]
pub struct ScriptWriter<T> {
    db: DatabaseConnection,
    items: PhantomData<fn(T)>,
}

impl<T: ScriptItem> ScriptWriter<T> {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            items: PhantomData,
        }
    }

    /// The outer error: the transaction did not commit, and none was written.
    async fn write_all(
        &self,
        mut items: Vec<T>,
    ) -> Result<Vec<Result<T::Written, RepoError>>, RepoError> {
        let txn = begin_write(&self.db).await?;
        if items.len() == 1
            && let Some(alone) = items.pop()
        {
            let written = alone.write_in(&txn, false).await;
            if written.is_ok() {
                txn.commit().await.map_err(classify)?;
            }
            return Ok(vec![T::settle(written)]);
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let written = item.write_in(&txn, true).await;
            if written.is_err() {
                txn.execute_unprepared(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"))
                    .await
                    .map_err(classify)?;
            }
            outcomes.push(T::settle(written));
        }
        txn.commit().await.map_err(classify)?;
        Ok(outcomes)
    }
}

impl<T: ScriptItem> BatchWriter<T, T::Written> for ScriptWriter<T> {
    async fn write(&self, items: Vec<T>) -> Vec<Result<T::Written, RepoError>> {
        let count = items.len();
        self.write_all(items)
            .await
            .unwrap_or_else(|err| (0..count).map(|_| Err(err.clone())).collect())
    }
}

/// A decided document with its earn (`few_statements::is_plain_earn`), ready for
/// [`ScriptWriter`]: its script.
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
        Ok(Self {
            script: earn_script(tenant, stored, event, lines, now)?,
        })
    }
}

impl ScriptItem for PreparedScriptEarn {
    /// `Some(event id)`, or `None` when the document was stored before.
    type Written = Option<i64>;

    async fn write_in(
        self,
        txn: &DatabaseTransaction,
        savepoint: bool,
    ) -> Result<Option<i64>, RepoError> {
        let rows = self.script.in_savepoint(savepoint).run(txn).await?;
        event_id(&rows).map(Some)
    }

    /// The document's primary key: stored before (by an earlier delivery, another process, or
    /// earlier in the batch), and nothing of this one was written.
    fn settle(written: Result<Option<i64>, RepoError>) -> Result<Option<i64>, RepoError> {
        match written {
            Err(RepoError::Conflict(_)) => Ok(None),
            other => other,
        }
    }
}

/// The event id a script answers with last.
fn event_id(rows: &[QueryResult]) -> Result<i64, RepoError> {
    rows.last()
        .ok_or_else(|| RepoError::Other("a script answered without the event's id".into()))?
        .try_get::<i64>("", "event_id")
        .map_err(classify)
}

/// A redemption (`few_statements::is_plain_redemption`), ready for [`ScriptWriter`]: what it
/// reads under the write lock (the request's record written first, so that a request id taken
/// fails before anything else), then what it writes once its limit, points and stock are checked.
#[derive(Debug)]
pub struct PreparedScriptRedemption {
    reads: Script,
    writes: Script,
    stored: Redemption,
    per_client_limit: Option<u32>,
    stock: Option<u32>,
    use_event: NewLedgerEvent,
    /// The Use event's points in minor units (negative).
    points: i64,
}

impl PreparedScriptRedemption {
    /// # Errors
    /// Points that do not fit the storage scale, or a row that cannot be encoded.
    pub fn new(
        tenant: &TenantId,
        plan: &RedeemPlan,
        record: &IdempotencyRecord,
        now: DateTime<Utc>,
    ) -> Result<Self, RepoError> {
        let event = &plan.use_event;
        let points = to_minor_units(event.points)?;
        let client = event.client_id.as_str();
        let stored = stored_at(plan, now);

        let reads = redemption_reads(
            tenant,
            client,
            &stored.coupon_id,
            record,
            plan.per_client_limit.is_some(),
        )?;
        let balance = |column: balances::Column| balance_column(tenant, client, column);
        let mut writes = Script::default();
        writes.push(&insert_rows(
            &[event_row(tenant, event, points, 0, now)],
            &[(
                ledger_events::Column::BalanceAfter,
                balance(balances::Column::Total).add(points),
            )],
        )?);
        // A plain redemption spends available points, none reserved or locked.
        writes.push(&balance_update(
            tenant,
            client,
            BalanceMove::new(points, 0, 0),
            Expr::cust("last_insert_rowid()"),
            now,
        ));
        // The client's unlocked lots, oldest first, each giving what is left to take.
        writes.push_with_values(
            "UPDATE earn_lots SET remaining = earn_lots.remaining - spend.take FROM ( \
               SELECT event_id, MIN(remaining, ? - (upto - remaining)) AS take FROM ( \
                 SELECT event_id, remaining, SUM(remaining) OVER ( \
                   ORDER BY earned_at, event_id ROWS UNBOUNDED PRECEDING) AS upto \
                 FROM earn_lots \
                 WHERE tenant_id = ? AND client_id = ? AND NOT locked AND remaining > 0) \
               WHERE upto - remaining < ?) AS spend \
             WHERE earn_lots.tenant_id = ? AND earn_lots.event_id = spend.event_id",
            [
                Value::from(-points),
                tenant.as_str().into(),
                client.into(),
                Value::from(-points),
                tenant.as_str().into(),
            ],
        );
        writes.push(&insert_rows(
            &[to_row(tenant, &stored)?],
            &[(
                redemptions::Column::UseEventId,
                balance(balances::Column::LastEventId),
            )],
        )?);
        writes.push(&insert_rows(&[outbox_row(tenant, plan, now)?], &[])?);
        writes.push(
            Query::update()
                .table(coupons::Entity)
                .value(
                    coupons::Column::RedeemedCount,
                    Expr::col(coupons::Column::RedeemedCount).add(1),
                )
                .and_where(coupons::Column::TenantId.eq(tenant.as_str()))
                .and_where(coupons::Column::CouponId.eq(stored.coupon_id.as_str())),
        );
        writes.push(balance_row(tenant, client).expr_as(
            Expr::col(balances::Column::LastEventId),
            Alias::new("event_id"),
        ));
        Ok(Self {
            reads,
            writes,
            stored,
            per_client_limit: plan.per_client_limit,
            stock: plan.stock,
            use_event: event.clone(),
            points,
        })
    }

    /// Refused, or not: the client's limit, its available points, the coupon's stock, as the
    /// transaction path checks them, from what was read under the write lock.
    fn check(&self, read: &QueryResult) -> Result<(), RepoError> {
        let column = |name: &str| read.try_get::<Option<i64>>("", name).map_err(classify);
        let coupon = &self.stored.coupon_id;
        if let Some(limit) = self.per_client_limit
            && column("held")?.unwrap_or_default() >= i64::from(limit)
        {
            return Err(limit_reached(coupon, limit));
        }
        spend_source(
            &self.use_event,
            self.points,
            column("available")?.unwrap_or_default(),
        )?;
        match (column("redeemed")?, self.stock) {
            (None, _) => Err(out_of_stock(coupon)),
            (Some(redeemed), Some(stock)) if redeemed >= i64::from(stock) => {
                Err(out_of_stock(coupon))
            }
            _ => Ok(()),
        }
    }
}

impl ScriptItem for PreparedScriptRedemption {
    /// The redemption as stored, with its Use event's id.
    type Written = Redemption;

    async fn write_in(
        mut self,
        txn: &DatabaseTransaction,
        savepoint: bool,
    ) -> Result<Redemption, RepoError> {
        let read = std::mem::take(&mut self.reads)
            .after_savepoint(savepoint)
            .run(txn)
            .await?;
        self.check(
            read.last().ok_or_else(|| {
                RepoError::Other("the redemption's reads answered nothing".into())
            })?,
        )?;
        let writes = std::mem::take(&mut self.writes).then_release(savepoint);
        let use_event_id = event_id(&writes.run(txn).await?)?;
        Ok(Redemption {
            use_event_id: Some(use_event_id),
            ..self.stored
        })
    }
}

/// What a redemption reads under the write lock, after writing the request's record (so that
/// a request id taken fails first): the client's available points, the coupon's redeemed
/// count and, with `count_held` (a per-client limit), the client's live redemptions of it.
fn redemption_reads(
    tenant: &TenantId,
    client: &str,
    coupon: &str,
    record: &IdempotencyRecord,
    count_held: bool,
) -> Result<Script, RepoError> {
    let mut reads = Script::default();
    reads.push(&insert_rows(&[record_row(tenant, record)], &[])?);
    let redeemed = Query::select()
        .column(coupons::Column::RedeemedCount)
        .from(coupons::Entity)
        .and_where(coupons::Column::TenantId.eq(tenant.as_str()))
        .and_where(coupons::Column::CouponId.eq(coupon))
        .to_owned();
    let mut read = Query::select();
    read.expr_as(
        balance_column(tenant, client, balances::Column::Available),
        Alias::new("available"),
    )
    .expr_as(sub_query(redeemed), Alias::new("redeemed"));
    if count_held {
        let held = Query::select()
            .expr(Expr::col(Asterisk).count())
            .from(redemptions::Entity)
            .and_where(redemptions::Column::TenantId.eq(tenant.as_str()))
            .and_where(redemptions::Column::CouponId.eq(coupon))
            .and_where(redemptions::Column::ClientId.eq(client))
            .and_where(redemptions::Column::Status.is_in(live_statuses()))
            .to_owned();
        read.expr_as(sub_query(held), Alias::new("held"));
    }
    reads.push(&read);
    Ok(reads)
}

/// A SELECT as a value.
fn sub_query(select: SelectStatement) -> Expr {
    Expr::SubQuery(None, Box::new(select.into_sub_query_statement()))
}

/// The statements of one earn, in order: the event (its running balance read from the balance
/// row as it stands), the balance row (created or added to; its `last_event_id` the event's),
/// the document with its lines, the lot, the event's lines, and last the event's id.
fn earn_script(
    tenant: &TenantId,
    stored: &DocumentRecord,
    event: &NewLedgerEvent,
    lines: &[LineCalculation],
    now: DateTime<Utc>,
) -> Result<Script, RepoError> {
    let points = to_minor_units(event.points)?;
    let client = event.client_id.as_str();
    let mut script = Script::default();
    // As the transaction path appends it: the balance row created or touched, the event with
    // the running balance, then the row moved and named after the event, whose id SQLite has
    // just given.
    script.push(&ensure_balance_statement(tenant, client, now).into_query());
    script.push(&insert_rows(
        &[event_row(tenant, event, points, 0, now)],
        &[(
            ledger_events::Column::BalanceAfter,
            balance_column(tenant, client, balances::Column::Total).add(points),
        )],
    )?);
    script.push(&balance_update(
        tenant,
        client,
        BalanceMove::new(points, entering_locked(event, points), 0),
        Expr::cust("last_insert_rowid()"),
        now,
    ));

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
    Ok(script)
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
    sub_query(balance_row(tenant, client).column(column).to_owned())
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

    /// A statement written as SQL, with its values.
    fn push_with_values(&mut self, sql: &str, values: impl IntoIterator<Item = Value>) {
        self.push_sql(sql);
        self.values.extend(values);
    }

    /// These statements, inside [`SAVEPOINT`] if `savepoint`.
    fn in_savepoint(self, savepoint: bool) -> Self {
        self.after_savepoint(savepoint).then_release(savepoint)
    }

    /// These statements, after opening [`SAVEPOINT`] if `savepoint`.
    fn after_savepoint(self, savepoint: bool) -> Self {
        if !savepoint {
            return self;
        }
        let mut opened = Self::default();
        opened.push_sql(&format!("SAVEPOINT {SAVEPOINT}"));
        opened.append(self);
        opened
    }

    /// These statements, then releasing [`SAVEPOINT`] if `savepoint`.
    fn then_release(mut self, savepoint: bool) -> Self {
        if savepoint {
            self.push_sql(&format!("RELEASE {SAVEPOINT}"));
        }
        self
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
