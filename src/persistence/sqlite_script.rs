//! SQLite only: the two hot writes in few scripts. Each statement sent to SQLite is a hand-off to
//! the connection's worker thread and back (two thread switches); written statement by
//! statement, an earn was ten of them and a redemption twelve and one per lot it spent
//! (docs/PERFORMANCE.md). A script is statements sent as one: sqlx-sqlite runs them in order in
//! its worker thread, binding the values statement by statement, and stops at the first that
//! fails. An earn is one script, and so is a redemption: what a write must check under the write
//! lock (an earn's basis; a redemption's plan, the client's limit, its points, the stock) is a
//! statement of its script that refuses it ([`refused_when`]), not a read answered to this
//! process between two scripts (a redemption was two until the tenth session). Written alone,
//! the script begins the transaction (`BEGIN IMMEDIATE`) and commits it, on a connection taken
//! from the pool for the write: no hand-off of their own for either (an earn was `BEGIN`, the
//! script and `COMMIT`).
//!
//! The statements are built from the rows the transaction path builds (`event_row` with its
//! lines, `document_row` with its lines, `lot_row`, `record_row`, the redemption's `to_row`,
//! `outbox_row`) and bound as that path binds them; only the values the
//! database decides are expressions: the event's id (`last_insert_rowid()` right after the
//! event is inserted, then the balance row's `last_event_id`) and the running balance. The write
//! lock taken by `BEGIN IMMEDIATE` keeps what they read true until the commit.
//!
//! [`ScriptWriter`] writes them with group commit: those that arrive together in one transaction,
//! each in a savepoint of its own ([`ScriptScope`]).

use std::future::Future;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Values;
use sea_orm::sea_query::{
    Alias, Asterisk, CaseStatement, Expr, ExprTrait, Func, InsertStatement, Query,
    QueryStatementBuilder, SelectStatement,
};
use sea_orm::sqlx::{self, Sqlite, pool::PoolConnection};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, IdenStatic, Iterable, QueryFilter, QueryResult, QuerySelect,
    QueryTrait, RuntimeErr, Statement, StatementBuilder, Value,
};
use sea_query_sqlx::SqlxValues;

use super::db::{WriteTurn, begin_write_in, write_turn};
use super::documents::{document_row, earn_basis_moved};
use super::entities::{
    balances, clients, coupons, documents, earn_lots, ledger_events, redemptions,
};
use super::error::{RepoError, classify, refusal_parts};
use super::event_lines::stored as stored_lines;
use super::few_statements::{
    LIMIT_REACHED, NOT_ENOUGH_POINTS, OUT_OF_STOCK, PlannedRedemption, STALE,
};
use super::group_commit::BatchWriter;
use super::idempotency::record_row;
use super::ledger::{
    BalanceMove, balance_update, ensure_balance_statement, entering_locked, event_row, lot_row,
    lots_spendable,
};
use super::redemptions::{
    active_user, client_not_known, coupon_changed, known_client, live_statuses, outbox_row, to_row,
    user_not_active,
};
use super::rules::pricing_revision_of;
use super::{EarnBasis, RedeemPlan};
use crate::domain::documents::DocumentRecord;
use crate::domain::engine::LineCalculation;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::ledger::NewLedgerEvent;
use crate::domain::points::to_minor_units;
use crate::domain::redemption::Redemption;
use crate::domain::tenant::TenantId;

/// A write that [`ScriptWriter`] can put in a batch.
pub trait ScriptItem: Send + 'static {
    type Written: Send + 'static;

    /// Writes the item in `scope`, in as few scripts as it can: its first script opens the
    /// scope and its last closes it ([`Script::opened`], [`Script::closed`]). An error may leave
    /// what ran of it in the transaction: the writer undoes it.
    fn write_in(
        self,
        scope: ScriptScope<'_>,
    ) -> impl Future<Output = Result<Self::Written, RepoError>> + Send;

    /// What an item's error, undone, means for its caller.
    fn settle(written: Result<Self::Written, RepoError>) -> Result<Self::Written, RepoError> {
        written
    }
}

/// The savepoint of each item in a batch.
const SAVEPOINT: &str = "loyalty_item";

/// Where an item's scripts run, and what its first script opens and its last closes.
pub enum ScriptScope<'a> {
    /// An item written alone, on a connection of its own: the transaction itself.
    Alone(&'a mut LoneConnection),
    /// An item of a batch, in the writer's transaction: a savepoint ([`SAVEPOINT`]).
    InBatch(&'a DatabaseTransaction),
}

impl ScriptScope<'_> {
    fn opening(&self) -> String {
        match self {
            Self::Alone(_) => "BEGIN IMMEDIATE".to_owned(),
            Self::InBatch(_) => format!("SAVEPOINT {SAVEPOINT}"),
        }
    }

    fn closing(&self) -> String {
        match self {
            Self::Alone(_) => "COMMIT".to_owned(),
            Self::InBatch(_) => format!("RELEASE {SAVEPOINT}"),
        }
    }

    async fn run(&mut self, script: Script) -> Result<Vec<QueryResult>, RepoError> {
        match self {
            Self::Alone(conn) => conn.run(script).await,
            Self::InBatch(txn) => script.run(*txn).await,
        }
    }
}

/// A pooled connection held for one write whose scripts begin and commit its transaction
/// themselves. Until a script that commits has run, a transaction may be open on it: unless
/// [`LoneConnection::end`] rolls it back, the connection is closed when dropped (SQLite rolls
/// back what a closed connection left open) rather than given back to the pool with it open, as
/// it would be if the write failed or its caller went away halfway.
pub struct LoneConnection {
    conn: PoolConnection<Sqlite>,
    may_be_open: bool,
}

impl LoneConnection {
    async fn acquire(db: &DatabaseConnection) -> Result<Self, RepoError> {
        let conn = db
            .get_sqlite_connection_pool()
            .acquire()
            .await
            .map_err(|e| classify(DbErr::Conn(RuntimeErr::SqlxError(e.into()))))?;
        Ok(Self {
            conn,
            may_be_open: false,
        })
    }

    async fn run(&mut self, script: Script) -> Result<Vec<QueryResult>, RepoError> {
        // Each script of a lone write runs in its transaction, the first one opening it.
        self.may_be_open = true;
        let rows = sqlx::query_with(
            sqlx::AssertSqlSafe(script.sql),
            SqlxValues(Values(script.values)),
        )
        .fetch_all(&mut *self.conn)
        .await
        .map_err(|e| classify(DbErr::Query(RuntimeErr::SqlxError(e.into()))))?;
        if script.closes {
            self.may_be_open = false;
        }
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    /// Rolls back what a write that did not commit left open; if even that fails, the
    /// connection is closed.
    async fn end(mut self) {
        if self.may_be_open
            && sqlx::raw_sql(sqlx::AssertSqlSafe("ROLLBACK"))
                .execute(&mut *self.conn)
                .await
                .is_ok()
        {
            self.may_be_open = false;
        }
    }
}

impl Drop for LoneConnection {
    fn drop(&mut self) {
        if self.may_be_open {
            self.conn.close_on_drop();
        }
    }
}

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
        turn: WriteTurn,
    ) -> Result<Vec<Result<T::Written, RepoError>>, RepoError> {
        if items.len() == 1
            && let Some(alone) = items.pop()
        {
            return Ok(vec![T::settle(self.write_alone(alone, turn).await?)]);
        }
        let txn = begin_write_in(&self.db, turn).await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let written = item.write_in(ScriptScope::InBatch(&txn)).await;
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

    /// One item in a transaction of its own, begun and committed by its scripts. The outer
    /// error: no connection to write on.
    async fn write_alone(
        &self,
        item: T,
        turn: WriteTurn,
    ) -> Result<Result<T::Written, RepoError>, RepoError> {
        let mut conn = LoneConnection::acquire(&self.db).await?;
        let written = item.write_in(ScriptScope::Alone(&mut conn)).await;
        conn.end().await;
        drop(turn);
        Ok(written)
    }
}

impl<T: ScriptItem> BatchWriter<T, T::Written> for ScriptWriter<T> {
    /// The file's turn: a writer task gathers its batch once it holds it.
    type Turn = WriteTurn;

    async fn turn(&self) -> Result<WriteTurn, RepoError> {
        write_turn(&self.db).await
    }

    async fn write(&self, items: Vec<T>, turn: WriteTurn) -> Vec<Result<T::Written, RepoError>> {
        let count = items.len();
        self.write_all(items, turn)
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
    /// `stored`: the record as it stands once decided, with its earn `event` and `lines`. With
    /// a `basis`, the script's first statement checks it ([`earn_basis_refusal`]), and the earn
    /// is refused as stale when the client or the tenant is no longer at the revision it was
    /// priced at.
    ///
    /// # Errors
    /// Points that do not fit the storage scale, or a row that cannot be encoded.
    pub fn new(
        tenant: &TenantId,
        stored: &DocumentRecord,
        event: &NewLedgerEvent,
        lines: &[LineCalculation],
        basis: Option<EarnBasis>,
        now: DateTime<Utc>,
    ) -> Result<Self, RepoError> {
        Ok(Self {
            script: earn_script(tenant, stored, event, lines, basis, now)?,
        })
    }
}

impl ScriptItem for PreparedScriptEarn {
    /// `Some(event id)`, or `None` when the document was stored before.
    type Written = Option<i64>;

    async fn write_in(self, mut scope: ScriptScope<'_>) -> Result<Option<i64>, RepoError> {
        let script = self.script.opened(&scope).closed(&scope);
        event_id(&scope.run(script).await?).map(Some)
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

/// A redemption (`few_statements::is_plain_redemption`), ready for [`ScriptWriter`]: its script,
/// which writes the request's record first (so that a request id taken fails before anything
/// else), then refuses the redemption if what it was planned from, the client's limit, its
/// available points or the coupon's stock say so ([`redemption_refusal`]), then writes it.
#[derive(Debug)]
pub struct PreparedScriptRedemption {
    script: Script,
    planned: PlannedRedemption,
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
        let planned = PlannedRedemption::new(plan, now)?;
        let (event, points, stored) = (&planned.use_event, planned.points, &planned.stored);
        let client = event.client_id.as_str();
        let mut script = Script::default();
        script.push(&insert_rows(&[record_row(tenant, record)], &[])?);
        script.push(&refused_when(redemption_refusal(tenant, plan, -points)));
        let balance = |column: balances::Column| balance_column(tenant, client, column);
        script.push(&insert_rows(
            &[event_row(tenant, event, None, points, 0, now)],
            &[(
                ledger_events::Column::BalanceAfter,
                balance(balances::Column::Total).add(points),
            )],
        )?);
        // A plain redemption spends available points, none reserved or locked.
        script.push(&balance_update(
            tenant,
            client,
            BalanceMove::new(points, 0, 0),
            Expr::cust("last_insert_rowid()"),
            now,
        ));
        script.push_statement(lots_spent_oldest_first(tenant, client, -points));
        script.push(&insert_rows(
            &[to_row(tenant, stored)?],
            &[(
                redemptions::Column::UseEventId,
                balance(balances::Column::LastEventId),
            )],
        )?);
        script.push(&insert_rows(&[outbox_row(tenant, plan, now)?], &[])?);
        script.push(
            Query::update()
                .table(coupons::Entity)
                .value(
                    coupons::Column::RedeemedCount,
                    Expr::col(coupons::Column::RedeemedCount).add(1),
                )
                .and_where(coupons::Column::TenantId.eq(tenant.as_str()))
                .and_where(coupons::Column::CouponId.eq(stored.coupon_id.as_str())),
        );
        script.push(balance_row(tenant, client).expr_as(
            Expr::col(balances::Column::LastEventId),
            Alias::new("event_id"),
        ));
        Ok(Self { script, planned })
    }
}

impl ScriptItem for PreparedScriptRedemption {
    /// The redemption as stored, with its Use event's id.
    type Written = Redemption;

    async fn write_in(self, mut scope: ScriptScope<'_>) -> Result<Redemption, RepoError> {
        let script = self.script.opened(&scope).closed(&scope);
        match scope.run(script).await {
            Ok(rows) => Ok(self.planned.written(event_id(&rows)?)),
            // The script's refusal: its code, then its detail (the available points).
            Err(RepoError::Precondition(refusal)) => {
                let (code, detail) = refusal_parts(&refusal);
                Err(self.planned.refused(code, detail, refusal.clone()))
            }
            Err(other) => Err(other),
        }
    }
}

/// The UPDATE that takes `points` (minor units, positive) from the lots [`lots_spendable`]
/// gives, in its order, each giving what is still to take.
///
/// It walks the lots one at a time through `ix_earn_lots_spendable` and stops at the lot that
/// covers the points, as PostgreSQL's function does: a running sum over the client's lots would
/// read every lot with points left at each redemption, however few it spends. The walk carries
/// each lot's rowid, and the update finds its lots by it: joined on the primary key instead,
/// SQLite 3.51 plans the update as a pass over every lot of the tenant, each probed in the walk.
#[must_use]
pub fn lots_spent_oldest_first(tenant: &TenantId, client: &str, points: i64) -> Statement {
    let rowid = || Expr::cust("earn_lots.rowid");
    let first = DbBackend::Sqlite.build(
        lots_spendable(tenant, client)
            .select_only()
            .expr(rowid())
            .columns([
                earn_lots::Column::EarnedAt,
                earn_lots::Column::EventId,
                earn_lots::Column::Remaining,
                earn_lots::Column::Remaining,
            ])
            .as_query(),
    );
    // The lot after the one walked last, sought in the index from it: the next lot earned at the
    // same instant, else the first one earned later. Asked as one row-value comparison,
    // `(earned_at, event_id) > (…)`, SQLite 3.51 seeks on `earned_at` alone and reads every lot
    // earned at that instant again at each step: a walk over 10,000 lots earned at one instant
    // (an import, a batch of earns) took 13 s (docs/PERFORMANCE.md).
    let next_after = |after: &'static str| {
        DbBackend::Sqlite.build(
            lots_spendable(tenant, client)
                .select_only()
                .expr(rowid())
                .filter(Expr::cust(after))
                .as_query(),
        )
    };
    let tied =
        next_after("earn_lots.earned_at = walk.earned_at AND earn_lots.event_id > walk.event_id");
    let later = next_after("earn_lots.earned_at > walk.earned_at");
    // Each look-up takes one lot, its LIMIT written out. Bound as a value (as `limit` binds it),
    // it ran the statement 10 times slower (80 against 8 µs, SQLite 3.51.1), most likely as a bound
    // LIMIT made SQLite prepare the statement again at each execution, as a build without the query
    // planner stability guarantee (.cargo/config.toml) still would.
    let sql = format!(
        "WITH RECURSIVE walk (lot, earned_at, event_id, remaining, upto) AS ( \
           SELECT * FROM ({} LIMIT 1) \
           UNION ALL \
           SELECT next.rowid, next.earned_at, next.event_id, next.remaining, \
             walk.upto + next.remaining \
           FROM walk JOIN earn_lots AS next ON next.rowid = COALESCE(({} LIMIT 1), ({} LIMIT 1)) \
           WHERE walk.upto < ?) \
         UPDATE earn_lots \
         SET remaining = earn_lots.remaining - MIN(walk.remaining, ? - (walk.upto - walk.remaining)) \
         FROM walk WHERE earn_lots.rowid = walk.lot",
        first.sql, tied.sql, later.sql
    );
    let values = [first.values, tied.values, later.values]
        .into_iter()
        .flat_map(|v| v.map(|v| v.0).unwrap_or_default())
        .chain([Value::from(points), Value::from(points)])
        .collect::<Vec<_>>();
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// What refuses a redemption, checked in its order as the PostgreSQL function checks it, under
/// the write lock: the client not known or the user it names not an active user of it (a plan
/// made without reading them), the coupon at another revision than the plan's (all three
/// [`STALE`]), the client's limit reached, fewer available points than its `cost` (the detail:
/// how many there are, in minor units), the coupon gone or out of stock.
fn redemption_refusal(tenant: &TenantId, plan: &RedeemPlan, cost: i64) -> CaseStatement {
    let r = &plan.redemption;
    let (client, coupon) = (r.client_id.as_str(), r.coupon_id.as_str());
    let of_coupon = |column: coupons::Column| {
        sub_query(
            Query::select()
                .column(column)
                .from(coupons::Entity)
                .and_where(coupons::Column::TenantId.eq(tenant.as_str()))
                .and_where(coupons::Column::CouponId.eq(coupon))
                .to_owned(),
        )
    };
    let mut refusal = CaseStatement::new();
    if plan.client_unread {
        refusal = refusal.case(
            Expr::exists(known_client(tenant, client)).not(),
            stale(&client_not_known(client)),
        );
        if let Some(user) = &r.user_id {
            refusal = refusal.case(
                Expr::exists(active_user(tenant, user, client)).not(),
                stale(&user_not_active(user, client)),
            );
        }
    }
    if let Some(revision) = plan.coupon_revision {
        refusal = refusal.case(
            of_coupon(coupons::Column::Revision).is_not(i64::from(revision)),
            stale(&coupon_changed(coupon)),
        );
    }
    if let Some(limit) = plan.per_client_limit {
        let held = Query::select()
            .expr(Expr::col(Asterisk).count())
            .from(redemptions::Entity)
            .and_where(redemptions::Column::TenantId.eq(tenant.as_str()))
            .and_where(redemptions::Column::CouponId.eq(coupon))
            .and_where(redemptions::Column::ClientId.eq(client))
            .and_where(redemptions::Column::Status.is_in(live_statuses()))
            .to_owned();
        refusal = refusal.case(sub_query(held).gte(i64::from(limit)), LIMIT_REACHED);
    }
    let available = Expr::expr(Func::coalesce([
        balance_column(tenant, client, balances::Column::Available),
        Expr::val(0),
    ]));
    refusal = refusal
        .case(
            available.clone().lt(cost),
            Expr::cust_with_exprs(
                "? || ?",
                [Expr::val(format!("{NOT_ENOUGH_POINTS} ")), available],
            ),
        )
        .case(
            of_coupon(coupons::Column::RedeemedCount).is_null(),
            OUT_OF_STOCK,
        );
    if let Some(stock) = plan.stock {
        refusal = refusal.case(
            of_coupon(coupons::Column::RedeemedCount).gte(i64::from(stock)),
            OUT_OF_STOCK,
        );
    }
    refusal
}

/// The refusal of a write whose plan no longer holds, saying `why`.
fn stale(why: &str) -> String {
    format!("{STALE} {why}")
}

/// The statement that refuses its script with the first of `refusals` that holds, and does
/// nothing when none does (the view `write_refusals` of migration `m20261206_000018`).
fn refused_when(refusals: CaseStatement) -> InsertStatement {
    Query::insert()
        .into_table(Alias::new("write_refusals"))
        .columns([Alias::new("refusal")])
        .values_panic([refusals.into()])
        .to_owned()
}

/// A SELECT as a value.
fn sub_query(select: SelectStatement) -> Expr {
    Expr::SubQuery(None, Box::new(select.into_sub_query_statement()))
}

/// The statements of one earn, in order: with a `basis`, its check; the event (its running
/// balance read from the balance row as it stands) with its lines, the balance row (created or
/// added to; its `last_event_id` the event's), the document with its lines, the lot, and last
/// the event's id.
fn earn_script(
    tenant: &TenantId,
    stored: &DocumentRecord,
    event: &NewLedgerEvent,
    lines: &[LineCalculation],
    basis: Option<EarnBasis>,
    now: DateTime<Utc>,
) -> Result<Script, RepoError> {
    let points = to_minor_units(event.points)?;
    let client = event.client_id.as_str();
    let mut script = Script::default();
    if let Some(basis) = basis {
        script.push(&refused_when(earn_basis_refusal(tenant, client, basis)));
    }
    // As the transaction path appends it: the balance row created or touched, the event with
    // the running balance, then the row moved and named after the event, whose id SQLite has
    // just given.
    script.push(&ensure_balance_statement(tenant, client, now).into_query());
    script.push(&insert_rows(
        &[event_row(
            tenant,
            event,
            stored_lines(lines)?,
            points,
            0,
            now,
        )],
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
    if let (Some(terms), true) = (event.lot, points > 0) {
        script.push(&insert_rows(
            &[lot_row(tenant, client, 0, points, terms, now)],
            &[(earn_lots::Column::EventId, this_event())],
        )?);
    }
    script.push(balance_row(tenant, client).expr_as(
        Expr::col(balances::Column::LastEventId),
        Alias::new("event_id"),
    ));
    Ok(script)
}

/// What refuses an earn priced from `basis` ([`STALE`]): the client not at its revision (or not
/// known), or the tenant not at its pricing revision (0 until its first).
fn earn_basis_refusal(tenant: &TenantId, client: &str, basis: EarnBasis) -> CaseStatement {
    let at_revision = Query::select()
        .expr(Expr::val(1))
        .from(clients::Entity)
        .and_where(clients::Column::TenantId.eq(tenant.as_str()))
        .and_where(clients::Column::ClientId.eq(client))
        .and_where(clients::Column::Revision.eq(basis.client_revision))
        .to_owned();
    Expr::case(
        Expr::exists(at_revision)
            .not()
            .or(Expr::expr(Func::coalesce([
                sub_query(pricing_revision_of(tenant)),
                Expr::val(0),
            ]))
            .ne(basis.pricing_revision)),
        stale(&earn_basis_moved(client)),
    )
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
    /// Ends with closing its scope.
    closes: bool,
}

impl Script {
    fn push(&mut self, statement: &impl StatementBuilder) {
        self.push_statement(DbBackend::Sqlite.build(statement));
    }

    /// A statement built for SQLite, with its values.
    fn push_statement(&mut self, statement: Statement) {
        self.push_sql(&statement.sql);
        self.values
            .extend(statement.values.map(|v| v.0).unwrap_or_default());
    }

    /// These statements, after opening `scope`.
    fn opened(mut self, scope: &ScriptScope<'_>) -> Self {
        let statements = std::mem::take(&mut self.sql);
        self.push_sql(&scope.opening());
        self.push_sql(&statements);
        self
    }

    /// These statements, then closing `scope`.
    fn closed(mut self, scope: &ScriptScope<'_>) -> Self {
        self.push_sql(&scope.closing());
        self.closes = true;
        self
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::db::test_sqlite;

    const POOL: u32 = 2;

    fn script(sql: &str) -> Script {
        let mut script = Script::default();
        script.push_sql(sql);
        script
    }

    /// Takes every connection of the pool at once: each must see exactly `committed` and take
    /// the write lock at once (none holds a transaction left open).
    async fn every_connection_sees_only(db: &DatabaseConnection, committed: &[i64]) {
        let pool = db.get_sqlite_connection_pool();
        let mut every = Vec::new();
        for _ in 0..POOL {
            every.push(pool.acquire().await.expect("a pooled connection"));
        }
        for conn in &mut every {
            let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t ORDER BY n")
                .fetch_all(&mut **conn)
                .await
                .expect("read");
            assert_eq!(rows, committed);
            sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
                .execute(&mut **conn)
                .await
                .expect("the write lock is free");
        }
    }

    /// A write dropped halfway (its caller went away) and one whose script failed leave no
    /// transaction open on a connection of the pool: every connection then sees only what was
    /// committed and can take the write lock at once. Each case is checked before the next runs,
    /// so that a later write cannot end a transaction an earlier one left open.
    #[tokio::test]
    async fn a_lone_write_cut_short_or_failed_gives_back_no_open_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = test_sqlite(&dir, POOL).await;
        db.execute_unprepared("CREATE TABLE t (n INTEGER NOT NULL)")
            .await
            .expect("table");

        let mut dropped = LoneConnection::acquire(&db).await.expect("acquire");
        let mut scope = ScriptScope::Alone(&mut dropped);
        let opened = script("INSERT INTO t VALUES (1)").opened(&scope);
        scope.run(opened).await.expect("first script");
        drop(dropped);
        every_connection_sees_only(&db, &[]).await;

        let mut failed = LoneConnection::acquire(&db).await.expect("acquire");
        let mut scope = ScriptScope::Alone(&mut failed);
        let whole = script("INSERT INTO t VALUES (2); INSERT INTO t VALUES (NULL)")
            .opened(&scope)
            .closed(&scope);
        assert!(scope.run(whole).await.is_err());
        failed.end().await;
        every_connection_sees_only(&db, &[]).await;

        let mut committed = LoneConnection::acquire(&db).await.expect("acquire");
        let mut scope = ScriptScope::Alone(&mut committed);
        let whole = script("INSERT INTO t VALUES (3)")
            .opened(&scope)
            .closed(&scope);
        scope.run(whole).await.expect("committed");
        committed.end().await;
        every_connection_sees_only(&db, &[3]).await;
    }

    /// What scripts rely on of sqlx-sqlite's worker thread, which sends a query's results over a
    /// channel of 50: every row comes back, in order, past the channel's size, and a script stops
    /// at its first failing statement, the statements after it not run.
    #[tokio::test]
    async fn a_script_answers_every_row_in_order_and_stops_at_its_first_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = test_sqlite(&dir, POOL).await;
        db.execute_unprepared("CREATE TABLE t (n INTEGER NOT NULL)")
            .await
            .expect("table");
        let pool = db.get_sqlite_connection_pool();
        let mut conn = pool.acquire().await.expect("a pooled connection");

        let counted: Vec<i64> = sqlx::query_scalar(
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000) \
             SELECT n FROM c",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("rows");
        assert_eq!(counted, (1..=1000).collect::<Vec<i64>>());

        let failed = sqlx::raw_sql(
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES (NULL); INSERT INTO t VALUES (3)",
        )
        .execute(&mut *conn)
        .await;
        assert!(failed.is_err(), "the NULL is refused");
        let stored: Vec<i64> = sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(&mut *conn)
            .await
            .expect("read");
        assert_eq!(
            stored,
            [1],
            "the statement after the failing one did not run"
        );
    }

    /// The walk's work grows with the lots it spends, not with their square, when they were all
    /// earned at one instant: SQLite's own count of the steps its statement ran (`sqlite_stmt`'s
    /// `nstep`, on the one connection) for 4 times the lots is about 4 times, not 16.
    #[tokio::test]
    async fn the_walk_over_lots_earned_at_one_instant_seeks_each_lot() {
        use chrono::TimeZone;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = test_sqlite(&dir, 1).await;
        crate::persistence::db::migrate(&db).await.expect("migrate");
        let tenant = TenantId::parse("t1").expect("tenant");
        let earned_at = Utc
            .with_ymd_and_hms(2026, 1, 2, 9, 0, 0)
            .single()
            .expect("an instant")
            .fixed_offset();
        let mut steps = Vec::new();
        for lots in [200_i64, 800] {
            earn_lots::Entity::delete_many()
                .exec(&db)
                .await
                .expect("clear");
            let rows = (1..=lots).map(|event_id| {
                earn_lots::ActiveModel::from(earn_lots::Model {
                    tenant_id: "t1".into(),
                    event_id,
                    client_id: "a".into(),
                    points: 1,
                    remaining: 1,
                    locked: false,
                    unlocks_at: None,
                    expires_at: None,
                    earned_at,
                })
            });
            earn_lots::Entity::insert_many(rows)
                .exec(&db)
                .await
                .expect("lots");
            let walk = lots_spent_oldest_first(&tenant, "a", lots);
            let sql = walk.sql.clone();
            let spent = db.execute_raw(walk).await.expect("the walk");
            assert_eq!(spent.rows_affected(), u64::try_from(lots).expect("lots"));
            let counted = db
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "SELECT nstep FROM sqlite_stmt WHERE sql = ?",
                    [sql.into()],
                ))
                .await
                .expect("sqlite_stmt")
                .expect("the walk, prepared on the connection");
            steps.push(counted.try_get_by_index::<i64>(0).expect("nstep"));
        }
        // The statement is the same text at both sizes: its count runs on.
        let (small, large) = (steps[0], steps[1] - steps[0]);
        assert!(
            large < small * 6,
            "{small} steps for 200 lots, {large} for 800: the walk reads the tied lots again"
        );
    }

    /// The walk over a client's lots takes what a plain loop would: oldest first by time then
    /// event, lots earned at the same moment included, locked and spent lots and other clients'
    /// lots untouched, and nothing once the points are covered (cases drawn at random).
    #[tokio::test]
    async fn the_walk_over_lots_spends_as_a_loop_over_them_would() {
        use chrono::TimeZone;
        use rand::{Rng, SeedableRng};
        use sea_orm::QueryOrder;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = test_sqlite(&dir, POOL).await;
        crate::persistence::db::migrate(&db).await.expect("migrate");
        let tenant = TenantId::parse("t1").expect("tenant");
        let mut random = rand::rngs::StdRng::seed_from_u64(26);
        for case in 0..300 {
            earn_lots::Entity::delete_many()
                .exec(&db)
                .await
                .expect("clear");
            let lots: Vec<earn_lots::Model> = (1..=random.random_range(0..12))
                .map(|event_id| earn_lots::Model {
                    tenant_id: "t1".into(),
                    event_id,
                    client_id: if random.random_bool(0.7) { "a" } else { "b" }.into(),
                    points: 100,
                    remaining: [0, 5, 50, 100][random.random_range(0..4)],
                    locked: random.random_bool(0.2),
                    unlocks_at: None,
                    expires_at: None,
                    earned_at: Utc
                        .with_ymd_and_hms(2026, 1, random.random_range(1..4), 0, 0, 0)
                        .single()
                        .expect("a date")
                        .fixed_offset(),
                })
                .collect();
            let points = random.random_range(1..400);
            let mut shuffled = lots.clone();
            shuffled.sort_by_key(|_| random.random::<u32>());
            for lot in shuffled {
                earn_lots::Entity::insert(earn_lots::ActiveModel::from(lot).reset_all())
                    .exec(&db)
                    .await
                    .expect("lot");
            }

            let mut expected = lots.clone();
            expected.sort_by_key(|l| (l.earned_at, l.event_id));
            let mut to_take = points;
            for lot in &mut expected {
                if lot.client_id == "a" && !lot.locked && to_take > 0 {
                    let take = Ord::min(lot.remaining, to_take);
                    lot.remaining -= take;
                    to_take -= take;
                }
            }
            expected.sort_by_key(|l| l.event_id);

            db.execute_raw(lots_spent_oldest_first(&tenant, "a", points))
                .await
                .expect("the walk");
            let left = earn_lots::Entity::find()
                .order_by_asc(earn_lots::Column::EventId)
                .all(&db)
                .await
                .expect("lots");
            assert_eq!(left, expected, "case {case}: {points} points from {lots:?}");
        }
    }
}
