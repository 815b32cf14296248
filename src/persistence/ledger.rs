//! SeaORM implementation of [`LedgerRepository`]. Appending an event updates the client's
//! balance row first (which serializes concurrent appends for one client), then inserts the event
//! with the running balance, all in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query, UpdateStatement};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, Insert, Iterable,
    QueryFilter, QueryOrder, QuerySelect, Select,
};

use super::LedgerRepository;
use super::entities::{balances, earn_lots, ledger_events};
use super::error::{RepoError, classify};
use super::event_lines::stored as stored_lines;
use super::idempotency::{insert_record, set_result_ref};
use crate::domain::clock::Clock;
use crate::domain::engine::LineCalculation;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::ledger::{
    Balance, ClientLedgerAudit, DueLot, EventType, HistoryQuery, LedgerEvent, NewLedgerEvent,
};
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaLedgerRepository {
    db: DatabaseConnection,
    clock: Arc<dyn Clock>,
}

impl SeaLedgerRepository {
    /// `clock` stamps `recorded_at`.
    pub fn new(db: DatabaseConnection, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }
}

#[async_trait]
impl LedgerRepository for SeaLedgerRepository {
    async fn append<'r>(
        &self,
        tenant: &TenantId,
        event: &NewLedgerEvent,
        request: Option<&'r IdempotencyRecord>,
    ) -> Result<LedgerEvent, RepoError> {
        let now = self.clock.now();
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        if let Some(record) = request {
            insert_record(&txn, tenant, record).await?;
        }
        let appended = append_in(&txn, tenant, event, &[], now).await?;
        if let Some(record) = request {
            set_result_ref(
                &txn,
                tenant,
                &record.request_id,
                &appended.event_id.to_string(),
            )
            .await?;
        }
        txn.commit().await.map_err(classify)?;
        Ok(appended)
    }

    async fn balance(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<Option<Balance>, RepoError> {
        let row = balances::Entity::find_by_id((tenant.as_str().to_owned(), client_id.to_owned()))
            .one(&self.db)
            .await
            .map_err(classify)?;
        Ok(row.map(|b| Balance {
            client_id: b.client_id,
            total: from_minor_units(b.total),
            available: from_minor_units(b.available),
            locked: from_minor_units(b.locked),
            reserved: from_minor_units(b.reserved),
            last_event_id: b.last_event_id,
            updated_at: b.updated_at.to_utc(),
        }))
    }

    async fn event(
        &self,
        tenant: &TenantId,
        event_id: i64,
    ) -> Result<Option<LedgerEvent>, RepoError> {
        events_without_lines()
            .filter(the_event(tenant, event_id))
            .one(&self.db)
            .await
            .map_err(classify)?
            .map(event_from_row)
            .transpose()
    }

    async fn event_detail(
        &self,
        tenant: &TenantId,
        event_id: i64,
    ) -> Result<Option<(LedgerEvent, Vec<LineCalculation>)>, RepoError> {
        let Some(row) = ledger_events::Entity::find()
            .filter(the_event(tenant, event_id))
            .one(&self.db)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        let mut lines = super::event_lines::from_stored(event_id, row.lines.as_deref())?;
        let event = event_from_row(row)?;
        if let Some(mode) = event.event.stacking_mode {
            for line in &mut lines {
                line.stacking_mode = mode;
            }
        }
        Ok(Some((event, lines)))
    }

    async fn history(
        &self,
        tenant: &TenantId,
        query: &HistoryQuery,
    ) -> Result<Vec<LedgerEvent>, RepoError> {
        let mut select = events_without_lines()
            .filter(ledger_events::Column::TenantId.eq(tenant.as_str()))
            .filter(ledger_events::Column::ClientId.eq(query.client_id.as_str()));
        if !query.types.is_empty() {
            select = select.filter(
                ledger_events::Column::EventType.is_in(query.types.iter().map(|t| t.as_str())),
            );
        }
        if let Some(from) = query.from {
            select = select.filter(ledger_events::Column::RecordedAt.gte(from.fixed_offset()));
        }
        if let Some(to) = query.to {
            select = select.filter(ledger_events::Column::RecordedAt.lt(to.fixed_offset()));
        }
        if let Some(before) = query.before_event_id {
            select = select.filter(ledger_events::Column::EventId.lt(before));
        }
        let rows = select
            .order_by_desc(ledger_events::Column::EventId)
            .limit(query.limit)
            .all(&self.db)
            .await
            .map_err(classify)?;
        rows.into_iter().map(event_from_row).collect()
    }

    async fn due_lots(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<DueLot>, RepoError> {
        let rows = lots_due(now, limit).all(&self.db).await.map_err(classify)?;
        rows.into_iter()
            .map(|r| {
                Ok(DueLot {
                    tenant: super::error::stored_tenant(&r.tenant_id)?,
                    event_id: r.event_id,
                    client_id: r.client_id,
                    remaining: from_minor_units(r.remaining),
                    locked: r.locked,
                    unlocks_at: r.unlocks_at.map(|t| t.to_utc()),
                    expires_at: r.expires_at.map(|t| t.to_utc()),
                })
            })
            .collect()
    }

    async fn unlock_lot(&self, tenant: &TenantId, event_id: i64) -> Result<bool, RepoError> {
        let now = self.clock.now();
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        // The conditional update is the lease: of two runs, one changes the row.
        let unlocked = earn_lots::Entity::update_many()
            .col_expr(earn_lots::Column::Locked, Expr::value(false))
            .filter(earn_lots::Column::TenantId.eq(tenant.as_str()))
            .filter(earn_lots::Column::EventId.eq(event_id))
            .filter(earn_lots::Column::Locked.eq(true))
            .exec(&txn)
            .await
            .map_err(classify)?;
        if unlocked.rows_affected != 1 {
            return Ok(false);
        }
        let lot = earn_lots::Entity::find_by_id((tenant.as_str().to_owned(), event_id))
            .one(&txn)
            .await
            .map_err(classify)?
            .ok_or_else(|| {
                RepoError::Other(format!("lot {event_id} vanished inside its transaction"))
            })?;
        balances::Entity::update_many()
            .col_expr(
                balances::Column::Locked,
                Expr::col(balances::Column::Locked).sub(lot.remaining),
            )
            .col_expr(
                balances::Column::Available,
                Expr::col(balances::Column::Available).add(lot.remaining),
            )
            .col_expr(balances::Column::UpdatedAt, Expr::value(now.fixed_offset()))
            .filter(balances::Column::TenantId.eq(tenant.as_str()))
            .filter(balances::Column::ClientId.eq(lot.client_id.as_str()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn expiring(
        &self,
        tenant: &TenantId,
        client_id: &str,
        until: DateTime<Utc>,
    ) -> Result<Decimal, RepoError> {
        let sum: Option<i64> = lots_expiring(tenant, client_id, until)
            .select_only()
            .column_as(
                Expr::cust("CAST(COALESCE(SUM(remaining), 0) AS BIGINT)"),
                "expiring",
            )
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(classify)?;
        Ok(from_minor_units(sum.unwrap_or(0)))
    }

    async fn audit(&self, tenant: &TenantId) -> Result<Vec<ClientLedgerAudit>, RepoError> {
        let sums: Vec<(String, i64, i64, i64)> = ledger_events::Entity::find()
            .select_only()
            .column(ledger_events::Column::ClientId)
            .column_as(Expr::cust("CAST(SUM(points) AS BIGINT)"), "events_sum")
            .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "event_count")
            .column_as(Expr::cust("MAX(event_id)"), "last_event_id")
            .filter(ledger_events::Column::TenantId.eq(tenant.as_str()))
            .group_by(ledger_events::Column::ClientId)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(classify)?;
        let last_ids: Vec<i64> = sums.iter().map(|s| s.3).collect();
        let last_balances: BTreeMap<i64, i64> = ledger_events::Entity::find()
            .select_only()
            .column(ledger_events::Column::EventId)
            .column(ledger_events::Column::BalanceAfter)
            .filter(ledger_events::Column::TenantId.eq(tenant.as_str()))
            .filter(ledger_events::Column::EventId.is_in(last_ids))
            .into_tuple::<(i64, i64)>()
            .all(&self.db)
            .await
            .map_err(classify)?
            .into_iter()
            .collect();
        let mut audits: BTreeMap<String, ClientLedgerAudit> = balances::Entity::find()
            .filter(balances::Column::TenantId.eq(tenant.as_str()))
            .all(&self.db)
            .await
            .map_err(classify)?
            .into_iter()
            .map(|b| {
                let audit = ClientLedgerAudit {
                    client_id: b.client_id.clone(),
                    balance_total: from_minor_units(b.total),
                    events_sum: 0.into(),
                    last_balance_after: 0.into(),
                    event_count: 0,
                    balance_event_count: u64::try_from(b.event_count).unwrap_or(u64::MAX),
                    balance_parts: from_minor_units(b.available + b.locked + b.reserved),
                };
                (b.client_id, audit)
            })
            .collect();
        for (client_id, sum, count, last_id) in sums {
            let audit = audits
                .entry(client_id.clone())
                .or_insert_with(|| ClientLedgerAudit {
                    client_id,
                    balance_total: 0.into(),
                    events_sum: 0.into(),
                    last_balance_after: 0.into(),
                    event_count: 0,
                    balance_event_count: 0,
                    balance_parts: 0.into(),
                });
            audit.events_sum = from_minor_units(sum);
            audit.event_count = u64::try_from(count).unwrap_or(u64::MAX);
            audit.last_balance_after =
                from_minor_units(last_balances.get(&last_id).copied().unwrap_or_default());
        }
        Ok(audits.into_values().collect())
    }
}

/// Event `event_id` of the tenant.
fn the_event(tenant: &TenantId, event_id: i64) -> Condition {
    Condition::all()
        .add(ledger_events::Column::TenantId.eq(tenant.as_str()))
        .add(ledger_events::Column::EventId.eq(event_id))
}

/// Events read as a list or one by one: every column but the calculation's lines, which only
/// `event_detail` gives (an earn's are about 2 KB for 10 lines), read as NULL.
fn events_without_lines() -> Select<ledger_events::Entity> {
    ledger_events::Entity::find()
        .select_only()
        .columns(
            ledger_events::Column::iter().filter(|c| !matches!(c, ledger_events::Column::Lines)),
        )
        .column_as(
            Expr::cust("CAST(NULL AS TEXT)"),
            ledger_events::Column::Lines,
        )
}

/// Appends an event (with the calculation of its `lines`, if any) inside the caller's
/// transaction: the balance row first (its row lock orders concurrent appends for one client),
/// then the event with the running balance.
pub(crate) async fn append_in(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    event: &NewLedgerEvent,
    lines: &[LineCalculation],
    now: DateTime<Utc>,
) -> Result<LedgerEvent, RepoError> {
    let locked = ensure_balance_row(conn, tenant, &event.client_id, now).await?;
    append_locked(conn, tenant, event, lines, &locked, now).await
}

/// Appends an event, with the calculation of its `lines` if it has any, for a client whose
/// balance row this transaction has locked already; `locked` is what the row held then. The lock
/// keeps it true until the commit, so the running balance is computed here and the row is
/// written once.
pub(crate) async fn append_locked(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    event: &NewLedgerEvent,
    lines: &[LineCalculation],
    locked: &balances::Model,
    now: DateTime<Utc>,
) -> Result<LedgerEvent, RepoError> {
    let points = to_minor_units(event.points)?;
    let from_reserved = spend_source(event, points, locked.available)?;
    // Points that enter (a locked earn) or leave (taken from a locked lot) the locked part.
    let mut into_locked = entering_locked(event, points);
    match take_from_lot(conn, tenant, event, points, locked.available).await? {
        Some(taken_from_locked) => into_locked = -taken_from_locked,
        None if points < 0 => {
            consume_oldest_lots(conn, tenant, &event.client_id, -points).await?;
        }
        None => {}
    }
    let balance_after = locked.total + points;
    let row = event_row(
        tenant,
        event,
        stored_lines(lines)?,
        points,
        balance_after,
        now,
    );
    let event_id = ledger_events::Entity::insert(row)
        .exec(conn)
        .await
        .map_err(classify)?
        .last_insert_id;
    let moved = BalanceMove::new(points, into_locked, from_reserved);
    let updated = conn
        .execute(&balance_update(
            tenant,
            &event.client_id,
            moved,
            Expr::value(event_id),
            now,
        ))
        .await
        .map_err(classify)?;
    if updated.rows_affected() != 1 {
        return Err(RepoError::Other(
            "balance row vanished inside its transaction".into(),
        ));
    }
    if let (Some(terms), true) = (event.lot, points > 0) {
        // The lot an earn (or a refund) forms: what later spends, penalties and expiry take from.
        let lot = lot_row(tenant, &event.client_id, event_id, points, terms, now);
        earn_lots::Entity::insert(lot)
            .exec(conn)
            .await
            .map_err(classify)?;
    }
    Ok(LedgerEvent {
        event_id,
        event: event.clone(),
        balance_after: from_minor_units(balance_after),
        recorded_at: now,
    })
}

/// Points of an event that enter the locked part of the balance: a positive event that forms a
/// locked lot (an earn with a lock period).
pub(crate) fn entering_locked(event: &NewLedgerEvent, points: i64) -> i64 {
    if event.lot.is_some_and(|l| l.locked()) && points > 0 {
        points
    } else {
        0
    }
}

/// The row of an event (`points` in minor units) with the running balance after it and its
/// `lines` as [`stored_lines`] gives them; its id is the database's to give.
pub(crate) fn event_row(
    tenant: &TenantId,
    event: &NewLedgerEvent,
    lines: Option<String>,
    points: i64,
    balance_after: i64,
    now: DateTime<Utc>,
) -> ledger_events::ActiveModel {
    ledger_events::ActiveModel {
        event_id: NotSet,
        tenant_id: Set(tenant.as_str().to_owned()),
        client_id: Set(event.client_id.clone()),
        event_type: Set(event.event_type.as_str().to_owned()),
        points: Set(points),
        balance_after: Set(balance_after),
        occurred_at: Set(event.occurred_at.fixed_offset()),
        recorded_at: Set(now.fixed_offset()),
        document_id: Set(event.document_id.clone()),
        redemption_id: Set(event.redemption_id.clone()),
        reservation_id: Set(event.reservation_id.clone()),
        related_event_id: Set(event.related_event_id),
        request_id: Set(event.request_id.clone()),
        reason_code: Set(event.reason_code.clone()),
        reason: Set(event.reason.clone()),
        actor_key_id: Set(event.actor_key_id.clone()),
        actor_user_id: Set(event.actor_user_id.clone()),
        stacking_mode: Set(event.stacking_mode.map(|m| m.as_str().to_owned())),
        lines: Set(lines),
    }
}

/// The lot an earn of `points` (minor units) forms under `terms`.
pub(crate) fn lot_row(
    tenant: &TenantId,
    client_id: &str,
    event_id: i64,
    points: i64,
    terms: crate::domain::ledger::LotTerms,
    now: DateTime<Utc>,
) -> earn_lots::ActiveModel {
    earn_lots::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        event_id: Set(event_id),
        client_id: Set(client_id.to_owned()),
        points: Set(points),
        remaining: Set(points),
        locked: Set(terms.locked()),
        unlocks_at: Set(terms.unlocks_at.map(|t| t.fixed_offset())),
        expires_at: Set(terms.expires_at.map(|t| t.fixed_offset())),
        earned_at: Set(now.fixed_offset()),
    }
}

/// Checks a spend against the locked balance row's `available` points: a Use must be covered
/// by them. Returns how much of it comes out of the reserved part (a committed reservation's
/// points were set aside when reserved).
pub(crate) fn spend_source(
    event: &NewLedgerEvent,
    points: i64,
    available: i64,
) -> Result<i64, RepoError> {
    if event.spends_available() && available < -points {
        return Err(RepoError::Precondition(format!(
            "not enough available points: {} available, {} needed",
            from_minor_units(available),
            from_minor_units(-points)
        )));
    }
    Ok(
        if event.reservation_id.is_some() && event.event_type == EventType::Use {
            -points
        } else {
            0
        },
    )
}

/// The statement that creates the client's balance row at zero if it has none, or, when it
/// exists, touches it (the conflict update), which on PostgreSQL locks it.
pub(crate) fn ensure_balance_statement(
    tenant: &TenantId,
    client_id: &str,
    now: DateTime<Utc>,
) -> Insert<balances::ActiveModel> {
    let empty = balances::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        client_id: Set(client_id.to_owned()),
        total: Set(0),
        available: Set(0),
        locked: Set(0),
        reserved: Set(0),
        last_event_id: Set(None),
        event_count: Set(0),
        updated_at: Set(now.fixed_offset()),
    };
    balances::Entity::insert(empty).on_conflict(
        OnConflict::columns([balances::Column::TenantId, balances::Column::ClientId])
            .update_column(balances::Column::UpdatedAt)
            .to_owned(),
    )
}

/// Creates the client's balance row at zero if it has none, and locks it for the transaction.
/// Returns what the row holds.
pub(crate) async fn ensure_balance_row(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_id: &str,
    now: DateTime<Utc>,
) -> Result<balances::Model, RepoError> {
    // One statement creates the row or, when it exists, locks it, before any lot is read:
    // concurrent appends for one client then run one after the other (PostgreSQL row lock;
    // SQLite serializes writers anyway).
    ensure_balance_statement(tenant, client_id, now)
        .exec_with_returning(conn)
        .await
        .map_err(classify)
}

/// What one event moves in its client's balance row, in minor units.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BalanceMove {
    total: i64,
    available: i64,
    reserved: i64,
    locked: i64,
}

impl BalanceMove {
    /// An event of `points`, of which `into_locked` enter the locked part (negative: leave it)
    /// and `from_reserved` come out of the reserved part (a committed reservation's).
    pub(crate) fn new(points: i64, into_locked: i64, from_reserved: i64) -> Self {
        Self {
            total: points,
            available: points - into_locked + from_reserved,
            reserved: -from_reserved,
            locked: into_locked,
        }
    }
}

/// The update of the client's balance row by one event: what it moves, one more event, and
/// `last_event_id` the event's.
pub(crate) fn balance_update(
    tenant: &TenantId,
    client_id: &str,
    moved: BalanceMove,
    last_event_id: Expr,
    now: DateTime<Utc>,
) -> UpdateStatement {
    let mut update = Query::update();
    update.table(balances::Entity);
    for (column, amount) in [
        (balances::Column::Total, moved.total),
        (balances::Column::Available, moved.available),
        (balances::Column::Reserved, moved.reserved),
        (balances::Column::Locked, moved.locked),
        (balances::Column::EventCount, 1),
    ] {
        update.value(column, Expr::col(column).add(amount));
    }
    update
        .value(balances::Column::LastEventId, last_event_id)
        .value(balances::Column::UpdatedAt, now.fixed_offset())
        .and_where(balances::Column::TenantId.eq(tenant.as_str()))
        .and_where(balances::Column::ClientId.eq(client_id))
        .to_owned()
}

/// A client's lots that points can be spent from now, in the order they are spent: oldest first.
pub fn lots_spendable(tenant: &TenantId, client_id: &str) -> Select<earn_lots::Entity> {
    earn_lots::Entity::find()
        .filter(earn_lots::Column::TenantId.eq(tenant.as_str()))
        .filter(earn_lots::Column::ClientId.eq(client_id))
        .filter(lot_is_locked().not())
        .filter(lot_has_points_left())
        .order_by_asc(earn_lots::Column::EarnedAt)
        .order_by_asc(earn_lots::Column::EventId)
}

/// Up to `limit` lots, of every tenant, due to unlock or to expire at `now`; oldest first.
pub fn lots_due(now: DateTime<Utc>, limit: u64) -> Select<earn_lots::Entity> {
    let at = now.fixed_offset();
    earn_lots::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(
                    sea_orm::Condition::all()
                        .add(lot_is_locked())
                        .add(earn_lots::Column::UnlocksAt.lte(at)),
                )
                .add(
                    sea_orm::Condition::all()
                        .add(lot_has_points_left())
                        .add(earn_lots::Column::ExpiresAt.lte(at)),
                ),
        )
        .order_by_asc(earn_lots::Column::EventId)
        .limit(limit)
}

/// A client's lots with points left that expire by `until`.
pub fn lots_expiring(
    tenant: &TenantId,
    client_id: &str,
    until: DateTime<Utc>,
) -> Select<earn_lots::Entity> {
    earn_lots::Entity::find()
        .filter(earn_lots::Column::TenantId.eq(tenant.as_str()))
        .filter(earn_lots::Column::ClientId.eq(client_id))
        .filter(lot_has_points_left())
        .filter(earn_lots::Column::ExpiresAt.lte(until.fixed_offset()))
}

/// A lot with points left to spend or expire. Written as a literal, not a bound value: the lot
/// indexes hold only such lots (`m20261205_000015`), and a planner uses a partial index only for a
/// condition it can see implies the index's.
fn lot_has_points_left() -> Expr {
    Expr::cust("earn_lots.remaining > 0")
}

/// A locked lot (waiting to unlock); a literal for the same reason as [`lot_has_points_left`].
fn lot_is_locked() -> Expr {
    Expr::cust("earn_lots.locked")
}

/// Points that leave without naming a lot (a penalty, a spend) come out of the client's unlocked
/// lots, oldest first, so that what later expires is only what is left. Points beyond the lots
/// leave nothing to consume.
pub(crate) async fn consume_oldest_lots(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_id: &str,
    mut amount: i64,
) -> Result<(), RepoError> {
    while amount > 0 {
        let lots = lots_spendable(tenant, client_id)
            .limit(64)
            .all(conn)
            .await
            .map_err(classify)?;
        if lots.is_empty() {
            return Ok(());
        }
        for lot in lots {
            let take = std::cmp::min(lot.remaining, amount);
            let update = earn_lots::Entity::update_many()
                .col_expr(
                    earn_lots::Column::Remaining,
                    Expr::col(earn_lots::Column::Remaining).sub(take),
                )
                .filter(earn_lots::Column::TenantId.eq(tenant.as_str()))
                .filter(earn_lots::Column::EventId.eq(lot.event_id))
                .filter(earn_lots::Column::Remaining.gte(take))
                .exec(conn)
                .await
                .map_err(classify)?;
            if update.rows_affected != 1 {
                return Err(RepoError::Conflict(format!(
                    "lot {} changed concurrently",
                    lot.event_id
                )));
            }
            amount -= take;
            if amount == 0 {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A Lose or Expire that names an earn event takes its points from that event's lot first.
/// Returns how much came out of the lot's locked points (`None` when no lot was touched). An
/// Expire must take exactly what the lot still holds, or it is stale (`Conflict`).
async fn take_from_lot(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    event: &NewLedgerEvent,
    points: i64,
    available: i64,
) -> Result<Option<i64>, RepoError> {
    let takes = matches!(event.event_type, EventType::Lose | EventType::Expire) && points < 0;
    let Some(lot_id) = event.related_event_id.filter(|_| takes) else {
        return Ok(None);
    };
    let Some(lot) = earn_lots::Entity::find_by_id((tenant.as_str().to_owned(), lot_id))
        .one(conn)
        .await
        .map_err(classify)?
    else {
        return Ok(None);
    };
    if event.event_type == EventType::Expire && lot.remaining != -points {
        return Err(RepoError::Conflict(format!(
            "lot {lot_id} changed since its expiry was planned"
        )));
    }
    let take = std::cmp::min(lot.remaining, -points);
    if take <= 0 {
        return Ok(None);
    }
    if event.event_type == EventType::Expire && !lot.locked {
        // Reserved points stay in their lots until the reservation is committed or released;
        // expiring them now could take the available part below zero. The next run retries.
        if available < take {
            return Err(RepoError::Conflict(format!(
                "lot {lot_id}: {take} to expire but only {available} available (reserved); later"
            )));
        }
    }
    let update = earn_lots::Entity::update_many()
        .col_expr(
            earn_lots::Column::Remaining,
            Expr::col(earn_lots::Column::Remaining).sub(take),
        )
        .filter(earn_lots::Column::TenantId.eq(tenant.as_str()))
        .filter(earn_lots::Column::EventId.eq(lot_id))
        .filter(earn_lots::Column::Remaining.gte(take))
        .filter(earn_lots::Column::Locked.eq(lot.locked))
        .exec(conn)
        .await
        .map_err(classify)?;
    if update.rows_affected != 1 {
        return Err(RepoError::Conflict(format!(
            "lot {lot_id} changed concurrently"
        )));
    }
    Ok(Some(if lot.locked { take } else { 0 }))
}

fn event_from_row(row: ledger_events::Model) -> Result<LedgerEvent, RepoError> {
    let event_type = EventType::parse(&row.event_type).ok_or_else(|| {
        RepoError::Corrupt(format!("ledger_events.event_type {:?}", row.event_type))
    })?;
    Ok(LedgerEvent {
        event_id: row.event_id,
        event: NewLedgerEvent {
            client_id: row.client_id,
            event_type,
            points: from_minor_units(row.points),
            occurred_at: row.occurred_at.to_utc(),
            document_id: row.document_id,
            request_id: row.request_id,
            reason_code: row.reason_code,
            reason: row.reason,
            actor_key_id: row.actor_key_id,
            actor_user_id: row.actor_user_id,
            related_event_id: row.related_event_id,
            redemption_id: row.redemption_id,
            reservation_id: row.reservation_id,
            lot: None,
            stacking_mode: row
                .stacking_mode
                .as_deref()
                .and_then(crate::domain::settings::StackingMode::parse),
        },
        balance_after: from_minor_units(row.balance_after),
        recorded_at: row.recorded_at.to_utc(),
    })
}
