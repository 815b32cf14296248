//! SeaORM implementation of [`ReservationRepository`]. Reserving moves points from the
//! balance's available part to its reserved part (no ledger event: the total does not change);
//! committing writes the Use event that takes them out of the reserved part; releasing moves them
//! back. Each change of state is a conditional update on the reservation's status, so a
//! reservation is committed or released once, whoever races for it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::ReservationRepository;
use super::entities::{balances, reservations};
use super::error::{RepoError, classify};
use super::idempotency::{insert_record, set_result_ref};
use super::ledger::{append_in, ensure_balance_row};
use crate::domain::clock::Clock;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::ledger::NewLedgerEvent;
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::redemption::{Reservation, ReservationStatus};
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaReservationRepository {
    db: DatabaseConnection,
    clock: std::sync::Arc<dyn Clock>,
}

impl SeaReservationRepository {
    /// `clock` decides what has expired and stamps the rows.
    pub fn new(db: DatabaseConnection, clock: std::sync::Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }
}

#[async_trait]
impl ReservationRepository for SeaReservationRepository {
    async fn reserve(
        &self,
        tenant: &TenantId,
        reservation: &Reservation,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError> {
        let now = self.clock.now();
        let points = to_minor_units(reservation.points)?;
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        let available = ensure_balance_row(&txn, tenant, &reservation.client_id, now)
            .await?
            .available;
        if available < points {
            return Err(RepoError::Precondition(format!(
                "not enough available points: {} available, {} needed",
                from_minor_units(available),
                reservation.points
            )));
        }
        move_reserved(&txn, tenant, &reservation.client_id, points, now).await?;
        reservations::Entity::insert(to_row(tenant, reservation)?)
            .exec(&txn)
            .await
            .map_err(classify)?;
        set_result_ref(
            &txn,
            tenant,
            &request.request_id,
            &reservation.reservation_id,
        )
        .await?;
        txn.commit().await.map_err(classify)
    }

    async fn get(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
    ) -> Result<Option<Reservation>, RepoError> {
        find(&self.db, tenant, reservation_id).await
    }

    async fn commit(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
        order_number: &str,
        spend: &NewLedgerEvent,
        request: &IdempotencyRecord,
    ) -> Result<Reservation, RepoError> {
        let now = self.clock.now();
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        let settled = reservations::Entity::update_many()
            .col_expr(
                reservations::Column::Status,
                Expr::value(ReservationStatus::Committed.as_str()),
            )
            .col_expr(reservations::Column::OrderNumber, Expr::value(order_number))
            .col_expr(
                reservations::Column::SettledAt,
                Expr::value(now.fixed_offset()),
            )
            .filter(reservations::Column::TenantId.eq(tenant.as_str()))
            .filter(reservations::Column::ReservationId.eq(reservation_id))
            .filter(reservations::Column::Status.eq(ReservationStatus::Held.as_str()))
            .filter(reservations::Column::ExpiresAt.gt(now.fixed_offset()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        if settled.rows_affected != 1 {
            return Err(not_held(&txn, tenant, reservation_id).await);
        }
        let used = append_in(&txn, tenant, spend, &[], now).await?;
        reservations::Entity::update_many()
            .col_expr(reservations::Column::UseEventId, Expr::value(used.event_id))
            .filter(reservations::Column::TenantId.eq(tenant.as_str()))
            .filter(reservations::Column::ReservationId.eq(reservation_id))
            .exec(&txn)
            .await
            .map_err(classify)?;
        set_result_ref(&txn, tenant, &request.request_id, reservation_id).await?;
        let reservation = find(&txn, tenant, reservation_id)
            .await?
            .ok_or_else(vanished)?;
        txn.commit().await.map_err(classify)?;
        Ok(reservation)
    }

    async fn release<'r>(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
        status: ReservationStatus,
        request: Option<&'r IdempotencyRecord>,
    ) -> Result<Reservation, RepoError> {
        let now = self.clock.now();
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        if let Some(record) = request {
            insert_record(&txn, tenant, record).await?;
        }
        let mut held = reservations::Entity::update_many()
            .col_expr(reservations::Column::Status, Expr::value(status.as_str()))
            .col_expr(
                reservations::Column::SettledAt,
                Expr::value(now.fixed_offset()),
            )
            .filter(reservations::Column::TenantId.eq(tenant.as_str()))
            .filter(reservations::Column::ReservationId.eq(reservation_id))
            .filter(reservations::Column::Status.eq(ReservationStatus::Held.as_str()));
        if status == ReservationStatus::Expired {
            held = held.filter(reservations::Column::ExpiresAt.lte(now.fixed_offset()));
        }
        let settled = held.exec(&txn).await.map_err(classify)?;
        if settled.rows_affected != 1 {
            return Err(not_held(&txn, tenant, reservation_id).await);
        }
        let reservation = find(&txn, tenant, reservation_id)
            .await?
            .ok_or_else(vanished)?;
        let points = to_minor_units(reservation.points)?;
        ensure_balance_row(&txn, tenant, &reservation.client_id, now).await?;
        move_reserved(&txn, tenant, &reservation.client_id, -points, now).await?;
        if let Some(record) = request {
            set_result_ref(&txn, tenant, &record.request_id, reservation_id).await?;
        }
        txn.commit().await.map_err(classify)?;
        Ok(reservation)
    }

    async fn expired(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(TenantId, String)>, RepoError> {
        let rows: Vec<(String, String)> = reservations::Entity::find()
            .select_only()
            .column(reservations::Column::TenantId)
            .column(reservations::Column::ReservationId)
            .filter(reservations::Column::Status.eq(ReservationStatus::Held.as_str()))
            .filter(reservations::Column::ExpiresAt.lte(now.fixed_offset()))
            .order_by_asc(reservations::Column::ExpiresAt)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(classify)?;
        super::error::tenant_keyed(rows)
    }
}

fn vanished() -> RepoError {
    RepoError::Other("reservation vanished inside its transaction".into())
}

/// Moves `points` from available to reserved (negative: back).
async fn move_reserved(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_id: &str,
    points: i64,
    now: DateTime<Utc>,
) -> Result<(), RepoError> {
    balances::Entity::update_many()
        .col_expr(
            balances::Column::Available,
            Expr::col(balances::Column::Available).sub(points),
        )
        .col_expr(
            balances::Column::Reserved,
            Expr::col(balances::Column::Reserved).add(points),
        )
        .col_expr(balances::Column::UpdatedAt, Expr::value(now.fixed_offset()))
        .filter(balances::Column::TenantId.eq(tenant.as_str()))
        .filter(balances::Column::ClientId.eq(client_id))
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// Why a reservation could not change state: unknown, settled already, or its time ran out.
async fn not_held(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    reservation_id: &str,
) -> RepoError {
    match find(conn, tenant, reservation_id).await {
        Ok(None) => RepoError::Precondition(format!("reservation {reservation_id} does not exist")),
        Ok(Some(r)) if r.status == ReservationStatus::Held => RepoError::Precondition(format!(
            "reservation {reservation_id} expired at {}",
            r.expires_at.to_rfc3339()
        )),
        Ok(Some(r)) => RepoError::Precondition(format!(
            "reservation {reservation_id} is {} already",
            r.status.as_str()
        )),
        Err(e) => e,
    }
}

async fn find(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    reservation_id: &str,
) -> Result<Option<Reservation>, RepoError> {
    reservations::Entity::find_by_id((tenant.as_str().to_owned(), reservation_id.to_owned()))
        .one(conn)
        .await
        .map_err(classify)?
        .map(from_row)
        .transpose()
}

fn to_row(tenant: &TenantId, r: &Reservation) -> Result<reservations::ActiveModel, RepoError> {
    Ok(reservations::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        reservation_id: Set(r.reservation_id.clone()),
        request_id: Set(r.request_id.clone()),
        client_id: Set(r.client_id.clone()),
        user_id: Set(r.user_id.clone()),
        basket_id: Set(r.basket_id.clone()),
        points: Set(to_minor_units(r.points)?),
        status: Set(r.status.as_str().to_owned()),
        expires_at: Set(r.expires_at.fixed_offset()),
        order_number: Set(r.order_number.clone()),
        use_event_id: Set(r.use_event_id),
        created_at: Set(r.created_at.fixed_offset()),
        settled_at: Set(r.settled_at.map(|t| t.fixed_offset())),
    })
}

fn from_row(row: reservations::Model) -> Result<Reservation, RepoError> {
    Ok(Reservation {
        status: ReservationStatus::parse(&row.status)
            .ok_or_else(|| RepoError::Corrupt(format!("reservations.status {:?}", row.status)))?,
        reservation_id: row.reservation_id,
        request_id: row.request_id,
        client_id: row.client_id,
        user_id: row.user_id,
        basket_id: row.basket_id,
        points: from_minor_units(row.points),
        expires_at: row.expires_at.to_utc(),
        order_number: row.order_number,
        use_event_id: row.use_event_id,
        created_at: row.created_at.to_utc(),
        settled_at: row.settled_at.map(|t| t.to_utc()),
    })
}
