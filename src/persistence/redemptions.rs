//! SeaORM implementation of [`RedemptionRepository`]. A redemption is one transaction: the
//! request's record, the client's balance row (locked first, so that one client's redemptions
//! run one after the other), the per-client count, the coupon's stock (a conditional update that
//! locks the coupon row), the Use event, the redemption and its outbox message. The lock order is
//! always balance, then coupon.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query, SelectStatement};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::entities::{clients, coupons, outbox, redemptions, users};
use super::error::{RepoError, classify};
use super::few_statements::{self, PreparedRedemption, RedemptionWriter};
use super::group_commit::GroupCommit;
use super::idempotency::{insert_record, set_result_ref};
use super::ledger::{append_in, append_locked, ensure_balance_row};
use super::sqlite_script::{PreparedScriptRedemption, ScriptWriter};
use super::{RedeemPlan, RedemptionFilter, RedemptionRepository, RefundPlan};
use crate::config::DEFAULT_WRITE_BATCH_MAX;
use crate::domain::clock::Clock;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::redemption::{Delivery, OutboxMessage, Redemption, RedemptionStatus};
use crate::domain::tenant::TenantId;

const PENDING: &str = "PENDING";
const DELIVERED: &str = "DELIVERED";
const REJECTED: &str = "REJECTED";
/// A delivery withdrawn because its redemption was cancelled first.
const WITHDRAWN: &str = "WITHDRAWN";

#[derive(Debug, Clone)]
pub struct SeaRedemptionRepository {
    db: DatabaseConnection,
    clock: Arc<dyn Clock>,
    /// Plain redemptions in few round trips: on PostgreSQL in one function call each, those
    /// that arrive together in one (`few_statements::RedemptionWriter`); on SQLite in two
    /// scripts each, those that arrive together in one transaction
    /// (`sqlite_script::ScriptWriter`).
    few_statements: bool,
    writes: Arc<GroupCommit<PreparedRedemption, Redemption, RedemptionWriter>>,
    script_writes: Arc<
        GroupCommit<PreparedScriptRedemption, Redemption, ScriptWriter<PreparedScriptRedemption>>,
    >,
}

impl SeaRedemptionRepository {
    /// `clock` stamps the rows.
    pub fn new(db: DatabaseConnection, clock: Arc<dyn Clock>) -> Self {
        Self {
            writes: GroupCommit::shared(RedemptionWriter::new(db.clone()), DEFAULT_WRITE_BATCH_MAX),
            script_writes: GroupCommit::shared(
                ScriptWriter::new(db.clone()),
                DEFAULT_WRITE_BATCH_MAX,
            ),
            db,
            clock,
            few_statements: true,
        }
    }

    /// At most `max` writes together (group commit); 1 writes each alone.
    #[must_use]
    pub fn with_write_batch_max(self, max: usize) -> Self {
        Self {
            writes: GroupCommit::shared(RedemptionWriter::new(self.db.clone()), max),
            script_writes: GroupCommit::shared(ScriptWriter::new(self.db.clone()), max),
            ..self
        }
    }

    /// The same, writing every redemption statement by statement, in a transaction: the path
    /// the few-round-trip ones are compared with.
    #[must_use]
    pub fn statement_by_statement(self) -> Self {
        Self {
            few_statements: false,
            ..self
        }
    }
}

#[async_trait]
impl RedemptionRepository for SeaRedemptionRepository {
    async fn redeem(
        &self,
        tenant: &TenantId,
        plan: &RedeemPlan,
        request: &IdempotencyRecord,
    ) -> Result<Redemption, RepoError> {
        let now = self.clock.now();
        let r = &plan.redemption;
        // The redemption id is known before anything is written: the record names it at once.
        let request = IdempotencyRecord {
            result_ref: r.redemption_id.clone(),
            ..request.clone()
        };
        if self.few_statements && few_statements::is_plain_redemption(plan) {
            if self.db.get_database_backend() == DbBackend::Sqlite {
                let prepared = PreparedScriptRedemption::new(tenant, plan, &request, now)?;
                return self.script_writes.write(prepared).await;
            }
            let prepared = PreparedRedemption::new(tenant, plan, &request, now)?;
            return self.writes.write(prepared).await;
        }
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, &request).await?;
        // The client's balance row is locked first, so that the limit below is counted alone.
        let locked = ensure_balance_row(&txn, tenant, &r.client_id, now).await?;
        check_basis(&txn, tenant, plan).await?;
        if let Some(limit) = plan.per_client_limit {
            let held = redemptions::Entity::find()
                .filter(redemptions::Column::TenantId.eq(tenant.as_str()))
                .filter(redemptions::Column::CouponId.eq(r.coupon_id.as_str()))
                .filter(redemptions::Column::ClientId.eq(r.client_id.as_str()))
                .filter(redemptions::Column::Status.is_in(live_statuses()))
                .count(&txn)
                .await
                .map_err(classify)?;
            if held >= u64::from(limit) {
                return Err(limit_reached(&r.coupon_id, limit));
            }
        }
        let spent = append_locked(&txn, tenant, &plan.use_event, &[], &locked, now).await?;
        let stored = Redemption {
            use_event_id: Some(spent.event_id),
            ..stored_at(plan, now)
        };
        redemptions::Entity::insert(to_row(tenant, &stored)?)
            .exec(&txn)
            .await
            .map_err(classify)?;
        outbox::Entity::insert(outbox_row(tenant, plan, now)?)
            .exec(&txn)
            .await
            .map_err(classify)?;
        // The count is what the catalogue shows; with a stock, it is also the guard. Last, so that
        // the coupon's row, which every redemption of it updates, is locked only until the commit.
        let mut count = coupons::Entity::update_many()
            .col_expr(
                coupons::Column::RedeemedCount,
                Expr::col(coupons::Column::RedeemedCount).add(1),
            )
            .filter(coupons::Column::TenantId.eq(tenant.as_str()))
            .filter(coupons::Column::CouponId.eq(r.coupon_id.as_str()));
        if let Some(stock) = plan.stock {
            count = count.filter(coupons::Column::RedeemedCount.lt(i64::from(stock)));
        }
        if count.exec(&txn).await.map_err(classify)?.rows_affected != 1 {
            return Err(out_of_stock(&r.coupon_id));
        }
        txn.commit().await.map_err(classify)?;
        Ok(stored)
    }

    async fn get(
        &self,
        tenant: &TenantId,
        redemption_id: &str,
    ) -> Result<Option<Redemption>, RepoError> {
        find(&self.db, tenant, redemption_id).await
    }

    async fn page(
        &self,
        tenant: &TenantId,
        filter: &RedemptionFilter,
        before: Option<String>,
        limit: u64,
    ) -> Result<Vec<Redemption>, RepoError> {
        let mut query =
            redemptions::Entity::find().filter(redemptions::Column::TenantId.eq(tenant.as_str()));
        if let Some(client) = &filter.client_id {
            query = query.filter(redemptions::Column::ClientId.eq(client.as_str()));
        }
        if let Some(coupon) = &filter.coupon_id {
            query = query.filter(redemptions::Column::CouponId.eq(coupon.as_str()));
        }
        if let Some(status) = filter.status {
            query = query.filter(redemptions::Column::Status.eq(status.as_str()));
        }
        if let Some(before) = before {
            query = query.filter(redemptions::Column::RedemptionId.lt(before));
        }
        query
            .order_by_desc(redemptions::Column::RedemptionId)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(classify)?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn refund<'r>(
        &self,
        tenant: &TenantId,
        plan: &RefundPlan,
        request: Option<&'r IdempotencyRecord>,
    ) -> Result<Redemption, RepoError> {
        let now = self.clock.now();
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        if let Some(record) = request {
            insert_record(&txn, tenant, record).await?;
        }
        if let Some((message_id, owner)) = &plan.rejected_message {
            let rejected = outbox::Entity::update_many()
                .col_expr(outbox::Column::Status, Expr::value(REJECTED))
                .col_expr(
                    outbox::Column::Attempts,
                    Expr::col(outbox::Column::Attempts).add(1),
                )
                .col_expr(outbox::Column::LastError, Expr::value(plan.reason.clone()))
                .col_expr(outbox::Column::LeaseOwner, Expr::value(None::<String>))
                .filter(outbox::Column::MessageId.eq(*message_id))
                .filter(outbox::Column::LeaseOwner.eq(owner.as_str()))
                .filter(outbox::Column::Status.eq(PENDING))
                .exec(&txn)
                .await
                .map_err(classify)?;
            if rejected.rows_affected != 1 {
                return Err(RepoError::Precondition(format!(
                    "outbox message {message_id} is no longer leased to {owner}"
                )));
            }
        }
        // The conditional update is the guard: of two refunds, one changes the row.
        let settled = redemptions::Entity::update_many()
            .col_expr(
                redemptions::Column::Status,
                Expr::value(plan.status.as_str()),
            )
            .col_expr(
                redemptions::Column::Reason,
                Expr::value(plan.reason.clone()),
            )
            .col_expr(
                redemptions::Column::UpdatedAt,
                Expr::value(now.fixed_offset()),
            )
            .filter(redemptions::Column::TenantId.eq(tenant.as_str()))
            .filter(redemptions::Column::RedemptionId.eq(plan.redemption_id.as_str()))
            .filter(redemptions::Column::Status.is_in(live_statuses()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        if settled.rows_affected != 1 {
            return Err(RepoError::Precondition(format!(
                "redemption {} is already failed or cancelled",
                plan.redemption_id
            )));
        }
        let refund = append_in(&txn, tenant, &plan.refund, &[], now).await?;
        redemptions::Entity::update_many()
            .col_expr(
                redemptions::Column::RefundEventId,
                Expr::value(refund.event_id),
            )
            .filter(redemptions::Column::TenantId.eq(tenant.as_str()))
            .filter(redemptions::Column::RedemptionId.eq(plan.redemption_id.as_str()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        // A delivery not made yet is withdrawn with the redemption.
        outbox::Entity::update_many()
            .col_expr(outbox::Column::Status, Expr::value(WITHDRAWN))
            .filter(outbox::Column::TenantId.eq(tenant.as_str()))
            .filter(outbox::Column::AggregateId.eq(plan.redemption_id.as_str()))
            .filter(outbox::Column::Status.eq(PENDING))
            .exec(&txn)
            .await
            .map_err(classify)?;
        let redemption = find(&txn, tenant, &plan.redemption_id)
            .await?
            .ok_or_else(|| RepoError::Other("redemption vanished inside its transaction".into()))?;
        {
            coupons::Entity::update_many()
                .col_expr(
                    coupons::Column::RedeemedCount,
                    Expr::col(coupons::Column::RedeemedCount).sub(1),
                )
                .filter(coupons::Column::TenantId.eq(tenant.as_str()))
                .filter(coupons::Column::CouponId.eq(redemption.coupon_id.as_str()))
                .filter(coupons::Column::RedeemedCount.gt(0))
                .exec(&txn)
                .await
                .map_err(classify)?;
        }
        if let Some(record) = request {
            set_result_ref(&txn, tenant, &record.request_id, &plan.redemption_id).await?;
        }
        txn.commit().await.map_err(classify)?;
        Ok(redemption)
    }

    async fn lease_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u64,
    ) -> Result<Vec<OutboxMessage>, RepoError> {
        let at = now.fixed_offset();
        let until = (now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX))
            .fixed_offset();
        let free = || {
            sea_orm::Condition::any()
                .add(outbox::Column::LeaseUntil.is_null())
                .add(outbox::Column::LeaseUntil.lt(at))
        };
        let due = outbox::Entity::find()
            .filter(outbox::Column::Status.eq(PENDING))
            .filter(outbox::Column::NextAttemptAt.lte(at))
            .filter(free())
            .order_by_asc(outbox::Column::NextAttemptAt)
            .order_by_asc(outbox::Column::MessageId)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(classify)?;
        let mut leased = Vec::with_capacity(due.len());
        for row in due {
            // The conditional update is the lease: of two replicas, one changes the row.
            let taken = outbox::Entity::update_many()
                .col_expr(outbox::Column::LeaseOwner, Expr::value(owner))
                .col_expr(outbox::Column::LeaseUntil, Expr::value(until))
                .filter(outbox::Column::MessageId.eq(row.message_id))
                .filter(outbox::Column::Status.eq(PENDING))
                .filter(free())
                .exec(&self.db)
                .await
                .map_err(classify)?;
            if taken.rows_affected == 1 {
                leased.push(message_from_row(row)?);
            }
        }
        Ok(leased)
    }

    async fn delivered(
        &self,
        message: &OutboxMessage,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        let done = outbox::Entity::update_many()
            .col_expr(outbox::Column::Status, Expr::value(DELIVERED))
            .col_expr(
                outbox::Column::Attempts,
                Expr::col(outbox::Column::Attempts).add(1),
            )
            .col_expr(outbox::Column::DeliveredAt, Expr::value(now.fixed_offset()))
            .col_expr(outbox::Column::LeaseOwner, Expr::value(None::<String>))
            .col_expr(
                outbox::Column::LeaseUntil,
                Expr::value(None::<DateTime<chrono::FixedOffset>>),
            )
            .filter(outbox::Column::MessageId.eq(message.message_id))
            .filter(outbox::Column::LeaseOwner.eq(owner))
            .filter(outbox::Column::Status.eq(PENDING))
            .exec(&txn)
            .await
            .map_err(classify)?;
        if done.rows_affected != 1 {
            return Ok(false);
        }
        redemptions::Entity::update_many()
            .col_expr(
                redemptions::Column::Status,
                Expr::value(RedemptionStatus::Issued.as_str()),
            )
            .col_expr(
                redemptions::Column::UpdatedAt,
                Expr::value(now.fixed_offset()),
            )
            .filter(redemptions::Column::TenantId.eq(message.tenant.as_str()))
            .filter(redemptions::Column::RedemptionId.eq(message.redemption_id.as_str()))
            .filter(redemptions::Column::Status.eq(RedemptionStatus::Pending.as_str()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn retry_delivery(
        &self,
        message: &OutboxMessage,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), RepoError> {
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::Attempts,
                Expr::col(outbox::Column::Attempts).add(1),
            )
            .col_expr(
                outbox::Column::NextAttemptAt,
                Expr::value(next_attempt_at.fixed_offset()),
            )
            .col_expr(outbox::Column::LastError, Expr::value(error))
            .col_expr(outbox::Column::LeaseOwner, Expr::value(None::<String>))
            .col_expr(
                outbox::Column::LeaseUntil,
                Expr::value(None::<DateTime<chrono::FixedOffset>>),
            )
            .filter(outbox::Column::MessageId.eq(message.message_id))
            .filter(outbox::Column::LeaseOwner.eq(owner))
            .filter(outbox::Column::Status.eq(PENDING))
            .exec(&self.db)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// A redemption refused because the client holds as many of the coupon as its limit allows.
pub(super) fn limit_reached(coupon_id: &str, limit: u32) -> RepoError {
    RepoError::Precondition(format!(
        "the client has redeemed coupon {coupon_id} as often as its limit ({limit}) allows"
    ))
}

/// Refuses a plan made from what no longer holds: the client not known or the user it names not
/// an active user of it (when the plan was made without reading them), or the coupon at another
/// revision than the plan's.
async fn check_basis(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    plan: &RedeemPlan,
) -> Result<(), RepoError> {
    let r = &plan.redemption;
    let (client, coupon) = (r.client_id.as_str(), r.coupon_id.as_str());
    let answers = |select: SelectStatement| async move {
        txn.query_one(&select)
            .await
            .map(|row| row.is_some())
            .map_err(classify)
    };
    if plan.client_unread {
        if !answers(known_client(tenant, client)).await? {
            return Err(RepoError::Stale(client_not_known(client)));
        }
        if let Some(user) = &r.user_id
            && !answers(active_user(tenant, user, client)).await?
        {
            return Err(RepoError::Stale(user_not_active(user, client)));
        }
    }
    if let Some(revision) = plan.coupon_revision {
        let current =
            coupons::Entity::find_by_id((tenant.as_str().to_owned(), r.coupon_id.clone()))
                .select_only()
                .column(coupons::Column::Revision)
                .into_tuple::<i32>()
                .one(txn)
                .await
                .map_err(classify)?;
        if current.map(i64::from) != Some(i64::from(revision)) {
            return Err(RepoError::Stale(coupon_changed(coupon)));
        }
    }
    Ok(())
}

/// A row if the client is known.
pub(super) fn known_client(tenant: &TenantId, client_id: &str) -> SelectStatement {
    Query::select()
        .expr(Expr::val(1))
        .from(clients::Entity)
        .and_where(clients::Column::TenantId.eq(tenant.as_str()))
        .and_where(clients::Column::ClientId.eq(client_id))
        .to_owned()
}

/// A row if `user_id` is an active user of the client.
pub(super) fn active_user(tenant: &TenantId, user_id: &str, client_id: &str) -> SelectStatement {
    Query::select()
        .expr(Expr::val(1))
        .from(users::Entity)
        .and_where(users::Column::TenantId.eq(tenant.as_str()))
        .and_where(users::Column::UserId.eq(user_id))
        .and_where(users::Column::ClientId.eq(client_id))
        .and_where(users::Column::Active.eq(true))
        .to_owned()
}

// Why a plan made from what no longer holds is refused (`RepoError::Stale`), as both the
// statement path and SQLite's script say it.

pub(super) fn client_not_known(client_id: &str) -> String {
    format!("client {client_id} is not known")
}

pub(super) fn user_not_active(user_id: &str, client_id: &str) -> String {
    format!("user {user_id} is not an active user of client {client_id}")
}

pub(super) fn coupon_changed(coupon_id: &str) -> String {
    format!("coupon {coupon_id} changed")
}

/// A redemption refused because the coupon's stock is gone.
pub(super) fn out_of_stock(coupon_id: &str) -> RepoError {
    RepoError::Precondition(format!("coupon {coupon_id} is out of stock"))
}

/// A new redemption as stored at `now`, but for its Use event's id.
pub(super) fn stored_at(plan: &RedeemPlan, now: DateTime<Utc>) -> Redemption {
    Redemption {
        created_at: now,
        updated_at: now,
        ..plan.redemption.clone()
    }
}

/// The outbox message that delivers a new redemption; its id is the database's to give.
pub(super) fn outbox_row(
    tenant: &TenantId,
    plan: &RedeemPlan,
    now: DateTime<Utc>,
) -> Result<outbox::ActiveModel, RepoError> {
    Ok(outbox::ActiveModel {
        message_id: NotSet,
        tenant_id: Set(tenant.as_str().to_owned()),
        kind: Set(plan.delivery.kind().as_str().to_owned()),
        aggregate_id: Set(plan.redemption.redemption_id.clone()),
        payload: Set(serde_json::to_string(&plan.delivery)
            .map_err(|e| RepoError::Other(format!("outbox payload: {e}")))?),
        status: Set(PENDING.into()),
        attempts: Set(0),
        next_attempt_at: Set(now.fixed_offset()),
        lease_owner: Set(None),
        lease_until: Set(None),
        last_error: Set(None),
        created_at: Set(now.fixed_offset()),
        delivered_at: Set(None),
    })
}

pub(super) fn live_statuses() -> [&'static str; 2] {
    [
        RedemptionStatus::Pending.as_str(),
        RedemptionStatus::Issued.as_str(),
    ]
}

async fn find(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    redemption_id: &str,
) -> Result<Option<Redemption>, RepoError> {
    redemptions::Entity::find_by_id((tenant.as_str().to_owned(), redemption_id.to_owned()))
        .one(conn)
        .await
        .map_err(classify)?
        .map(from_row)
        .transpose()
}

pub(super) fn to_row(
    tenant: &TenantId,
    r: &Redemption,
) -> Result<redemptions::ActiveModel, RepoError> {
    Ok(redemptions::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        redemption_id: Set(r.redemption_id.clone()),
        request_id: Set(r.request_id.clone()),
        client_id: Set(r.client_id.clone()),
        user_id: Set(r.user_id.clone()),
        coupon_id: Set(r.coupon_id.clone()),
        coupon_name: Set(r.coupon_name.clone()),
        points: Set(to_minor_units(r.points)?),
        status: Set(r.status.as_str().to_owned()),
        code: Set(r.code.clone()),
        valid_until: Set(r.valid_until),
        use_event_id: Set(r.use_event_id),
        refund_event_id: Set(r.refund_event_id),
        reason: Set(r.reason.clone()),
        created_at: Set(r.created_at.fixed_offset()),
        updated_at: Set(r.updated_at.fixed_offset()),
    })
}

fn from_row(row: redemptions::Model) -> Result<Redemption, RepoError> {
    Ok(Redemption {
        status: RedemptionStatus::parse(&row.status)
            .ok_or_else(|| RepoError::Corrupt(format!("redemptions.status {:?}", row.status)))?,
        redemption_id: row.redemption_id,
        request_id: row.request_id,
        client_id: row.client_id,
        user_id: row.user_id,
        coupon_id: row.coupon_id,
        coupon_name: row.coupon_name,
        points: from_minor_units(row.points),
        code: row.code,
        valid_until: row.valid_until,
        use_event_id: row.use_event_id,
        refund_event_id: row.refund_event_id,
        reason: row.reason,
        created_at: row.created_at.to_utc(),
        updated_at: row.updated_at.to_utc(),
    })
}

fn message_from_row(row: outbox::Model) -> Result<OutboxMessage, RepoError> {
    let delivery: Delivery = serde_json::from_str(&row.payload).map_err(|e| {
        RepoError::Corrupt(format!("outbox message {} payload: {e}", row.message_id))
    })?;
    Ok(OutboxMessage {
        message_id: row.message_id,
        tenant: super::error::stored_tenant(&row.tenant_id)?,
        redemption_id: row.aggregate_id,
        delivery,
        attempts: u32::try_from(row.attempts).unwrap_or(0),
    })
}
