//! Spending points (DOMAIN.md §5): the offers a client sees on a day, redeeming a coupon,
//! cancelling a redemption, and points as credit (reserve, commit, release).
//!
//! Every check that a concurrent call could invalidate (available points, stock, the client's
//! limit, a reservation still held) is made again by the repository under the database's locks;
//! the checks here only give early, precise answers.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::domain::access::Caller;
use crate::domain::calendar::day_of;
use crate::domain::clock::Clock;
use crate::domain::coupons::{Coupon, CouponType, OfferView};
use crate::domain::directory::ClientRecord;
use crate::domain::idempotency::{IdempotencyRecord, valid_request_id};
use crate::domain::ledger::{EventType, LotTerms, NewLedgerEvent};
use crate::domain::redemption::{
    CodeFormat, Delivery, Redemption, RedemptionStatus, Reservation, ReservationStatus,
};
use crate::domain::tenant::TenantId;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::persistence::{
    ClientAndCoupon, CouponRepository, DirectoryRepository, IdempotencyRepository,
    LedgerRepository, RedeemPlan, RedemptionFilter, RedemptionRepository, RefundPlan, RepoError,
    ReservationRepository, SettingsRepository,
};
use crate::service::idempotency::{IdempotencyError, RequestKey, prior_result};
use crate::service::seen::Seen;

const REDEEM: &str = "RedeemService/RedeemCoupon";
const CANCEL: &str = "RedeemService/CancelRedemption";
const RESERVE: &str = "RedeemService/ReservePoints";
const COMMIT: &str = "RedeemService/CommitReservation";
const RELEASE: &str = "RedeemService/ReleaseReservation";
/// Fresh codes tried when a generated one is taken (a 1 in 2^59 event).
const CODE_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// → `INVALID_ARGUMENT`
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// → `NOT_FOUND`
    #[error("{0} not found")]
    NotFound(String),
    /// Not enough points, out of stock, the client's limit, not on offer, not held any more.
    /// → `FAILED_PRECONDITION`
    #[error("{0}")]
    Refused(String),
    /// → `INVALID_ARGUMENT` / `ALREADY_EXISTS`
    #[error(transparent)]
    RequestId(IdempotencyError),
    #[error(transparent)]
    Repo(RepoError),
}

crate::request_id_error!(RedeemError);

impl From<RepoError> for RedeemError {
    fn from(err: RepoError) -> Self {
        match err {
            RepoError::Precondition(why) => Self::Refused(why),
            other => Self::Repo(other),
        }
    }
}

/// What a client is offered on a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offers {
    pub offers: Vec<(Coupon, OfferView)>,
    pub available: Decimal,
    pub points_scale: u32,
    pub next: Option<String>,
}

/// A client's user buying a coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemRequest {
    pub client_id: String,
    pub coupon_id: String,
    pub user_id: Option<String>,
}

/// Points to hold for a basket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    pub client_id: String,
    pub basket_id: String,
    pub points: Decimal,
    pub user_id: Option<String>,
}

pub struct RedeemDependencies {
    pub coupons: Arc<dyn CouponRepository>,
    pub redemptions: Arc<dyn RedemptionRepository>,
    pub reservations: Arc<dyn ReservationRepository>,
    pub directory: Arc<dyn DirectoryRepository>,
    pub ledger: Arc<dyn LedgerRepository>,
    pub settings: Arc<dyn SettingsRepository>,
    pub requests: Arc<dyn IdempotencyRepository>,
    pub clock: Arc<dyn Clock>,
    pub codes: CodeFormat,
}

/// Coupons as this replica last read them, by tenant and id: only those a redemption can be
/// planned from without the client ([`Coupon::plannable_without_client`]).
type CouponsSeen = Seen<(TenantId, String), Coupon>;

/// Coupons kept at most.
const COUPONS_SEEN: usize = 4096;

pub struct RedeemService {
    deps: RedeemDependencies,
    /// The coupons redemptions have read, as they read them.
    coupons_seen: CouponsSeen,
}

impl RedeemService {
    pub fn new(deps: RedeemDependencies) -> Self {
        Self {
            deps,
            coupons_seen: CouponsSeen::new(COUPONS_SEEN),
        }
    }

    /// The coupons the client can have on `day` (today when `None`), a page at a time.
    ///
    /// # Errors
    /// An unknown client, or the database.
    pub async fn offers(
        &self,
        caller: &Caller,
        client_id: &str,
        day: Option<NaiveDate>,
        affordable_only: bool,
        after: Option<String>,
        page_size: u64,
    ) -> Result<Offers, RedeemError> {
        let segments: BTreeSet<String> = self
            .client(caller, client_id)
            .await?
            .segment_ids
            .into_iter()
            .collect();
        let settings = self.deps.settings.current(&caller.tenant).await?;
        let day = day.unwrap_or_else(|| day_of(settings.time_zone, self.deps.clock.now()));
        let available = self.available(caller, client_id).await?;
        let redeemed = self
            .deps
            .coupons
            .redeemed_by_client(&caller.tenant, client_id)
            .await?;
        let (coupons, tenant) = (&self.deps.coupons, &caller.tenant);
        let fetch = move |after| coupons.page(tenant, after, page_size);
        let keep = |coupon: Coupon| {
            let used = redeemed.get(&coupon.coupon_id).copied().unwrap_or(0);
            let view = coupon
                .offer_for(day, &segments, available, used)
                .filter(|v| v.affordable || !affordable_only)?;
            Some((coupon, view))
        };
        let (offers, next) = super::filtered_page(
            page_size,
            after,
            fetch,
            |c: &Coupon| c.coupon_id.clone(),
            keep,
        )
        .await?;
        Ok(Offers {
            offers,
            available,
            points_scale: settings.points_scale,
            next,
        })
    }

    /// Buys a coupon with the client's available points: one Use event, the redemption, and the
    /// delivery of its code (or e-mail) queued in the outbox, in one transaction. A retry with
    /// the same request id answers with the first redemption and spends nothing more.
    ///
    /// # Errors
    /// Bad fields, an unknown client, user or coupon, a refusal (not on offer, not enough
    /// points, out of stock, the client's limit), a reused request id, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %key.request_id))]
    pub async fn redeem(
        &self,
        caller: &Caller,
        key: &RequestKey,
        request: &RedeemRequest,
    ) -> Result<Redemption, RedeemError> {
        if !valid_request_id(&key.request_id) {
            return Err(IdempotencyError::InvalidRequestId.into());
        }
        // A retry answers with the first redemption, whatever refuses a new one now. Retries are
        // rare: the request id is looked up only when a new redemption is not written (its
        // record's key is taken by then, or something refused it).
        match self.redeem_new(caller, key, request).await {
            Ok(redemption) => Ok(redemption),
            Err(err) => match self.prior(caller, key, REDEEM).await? {
                Some(id) => self.redemption(caller, &id).await,
                None => Err(err),
            },
        }
    }

    /// A new redemption, as [`Self::redeem`] describes it.
    ///
    /// A coupon this replica has read before, that no segment restricts and that is delivered
    /// as a pool code, is redeemed as it was read, without reading the client, the user it names
    /// or the coupon first: the write checks, under its locks, that the client is known, that the
    /// user is an active user of it and that the coupon is still at that revision. If any of
    /// these fails, or anything else would refuse the redemption before its write, it is read
    /// and judged in full, so that every answer is the one the full path gives.
    async fn redeem_new(
        &self,
        caller: &Caller,
        key: &RequestKey,
        request: &RedeemRequest,
    ) -> Result<Redemption, RedeemError> {
        let mut found = required(&request.client_id, "client_id");
        found.extend(required(&request.coupon_id, "coupon_id"));
        Invalid::check(found)?;
        if let Some(coupon) = self
            .coupons_seen
            .get(&(caller.tenant.clone(), request.coupon_id.clone()))
            && coupon.plannable_without_client()
            && let Some(written) = self.redeem_as_seen(caller, key, request, &coupon).await
        {
            return written;
        }
        // Read side by side (one call's latency is the longest read), then judged in order.
        // The client and the coupon come in one read (one round trip fewer per redemption).
        let (client_and_coupon, user) = tokio::join!(
            self.deps
                .coupons
                .with_client(&caller.tenant, &request.coupon_id, &request.client_id),
            self.check_user(caller, request.user_id.as_deref(), &request.client_id),
        );
        let ClientAndCoupon { client, coupon } =
            client_and_coupon?.ok_or_else(|| unknown_client(&request.client_id))?;
        user?;
        let coupon =
            coupon.ok_or_else(|| RedeemError::NotFound(format!("coupon {}", request.coupon_id)))?;
        if coupon.plannable_without_client() {
            self.coupons_seen.remember(
                (caller.tenant.clone(), coupon.coupon_id.clone()),
                coupon.clone(),
            );
        }
        let settings = self.deps.settings.current(&caller.tenant).await?;
        let segments: BTreeSet<String> = client.segment_ids.into_iter().collect();
        coupon
            .redeemable_on(day_of(settings.time_zone, self.deps.clock.now()), &segments)
            .map_err(|refusal| RedeemError::Refused(refusal.to_string()))?;
        self.write_redemption(caller, key, request, &coupon, &settings, Some(&client.name))
            .await
    }

    /// A redemption of a coupon as this replica last read it ([`Self::redeem_new`]); `None`
    /// where it must be read and judged in full instead. The write's own refusals (the points,
    /// the client's limit, the stock) stand: it refuses them only once it has found the client
    /// known, the user one of its active users and the coupon at the revision read, as the full
    /// path would have.
    async fn redeem_as_seen(
        &self,
        caller: &Caller,
        key: &RequestKey,
        request: &RedeemRequest,
        coupon: &Coupon,
    ) -> Option<Result<Redemption, RedeemError>> {
        let settings = self.deps.settings.current(&caller.tenant).await.ok()?;
        coupon
            .redeemable_on(
                day_of(settings.time_zone, self.deps.clock.now()),
                &BTreeSet::new(),
            )
            .ok()?;
        match self
            .write_redemption(caller, key, request, coupon, &settings, None)
            .await
        {
            Err(RedeemError::Repo(RepoError::Stale(cause))) => {
                // The client or the user, not the coupon, may be what failed: the coupon is read
                // again with them all the same, as only a refused write costs it.
                tracing::debug!(%cause, "the plan as read no longer holds; reading it again");
                self.coupons_seen
                    .forget(|(tenant, id)| *tenant == caller.tenant && *id == coupon.coupon_id);
                None
            }
            written => Some(written),
        }
    }

    /// Writes a redemption of `coupon` planned for a client named `client_name` (`None`: not
    /// read, so the write checks it is known), drawing another code while the drawn one is taken.
    async fn write_redemption(
        &self,
        caller: &Caller,
        key: &RequestKey,
        request: &RedeemRequest,
        coupon: &Coupon,
        settings: &crate::domain::settings::TenantSettings,
        client_name: Option<&str>,
    ) -> Result<Redemption, RedeemError> {
        let record = IdempotencyRecord {
            request_id: key.request_id.clone(),
            operation: REDEEM.into(),
            request_hash: key.request_hash.clone(),
            result_ref: String::new(),
        };
        let mut last_conflict = String::new();
        for _ in 0..CODE_ATTEMPTS {
            let plan = self.plan_redemption(caller, key, request, coupon, settings, client_name);
            match self
                .deps
                .redemptions
                .redeem(&caller.tenant, &plan, &record)
                .await
            {
                Ok(redemption) => return Ok(redemption),
                Err(RepoError::Conflict(cause)) => {
                    if let Some(id) = self.prior(caller, key, REDEEM).await? {
                        return self.redemption(caller, &id).await;
                    }
                    // Not the request id: the code was taken. Draw another.
                    last_conflict = cause;
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(RedeemError::Repo(RepoError::Aborted(last_conflict)))
    }

    /// A redemption of `coupon` with a fresh id and code, its Use event and its delivery.
    fn plan_redemption(
        &self,
        caller: &Caller,
        key: &RequestKey,
        request: &RedeemRequest,
        coupon: &Coupon,
        settings: &crate::domain::settings::TenantSettings,
        client_name: Option<&str>,
    ) -> RedeemPlan {
        let now = self.deps.clock.now();
        let redemption_id = super::time_ordered_id("rdm", now);
        let code = coupon
            .spec
            .coupon_type
            .uses_pool()
            .then(|| self.deps.codes.generate(&mut rand::rng()));
        let redemption = Redemption {
            redemption_id: redemption_id.clone(),
            request_id: key.request_id.clone(),
            client_id: request.client_id.clone(),
            user_id: request.user_id.clone(),
            coupon_id: coupon.coupon_id.clone(),
            coupon_name: coupon.spec.name.clone(),
            points: coupon.spec.point_value,
            status: RedemptionStatus::Pending,
            code: code.clone(),
            valid_until: coupon.spec.redemption_deadline,
            use_event_id: None,
            refund_event_id: None,
            reason: None,
            created_at: now,
            updated_at: now,
        };
        let delivery = match (&coupon.spec.coupon_type, &code) {
            (CouponType::Special, _) | (_, None) => Delivery::SendSpecialEmail {
                to: coupon.spec.email.clone().unwrap_or_default(),
                client_id: request.client_id.clone(),
                client_name: client_name.unwrap_or_default().to_owned(),
                user_id: request.user_id.clone(),
                coupon_name: coupon.spec.name.clone(),
                points: crate::domain::points::format_points(
                    coupon.spec.point_value,
                    settings.points_scale,
                ),
                redeemed_at: now,
                company_logo_url: settings.company_logo_url.clone(),
                redemption_id: redemption_id.clone(),
            },
            (_, Some(code)) => Delivery::AddPoolCode {
                pool_id: coupon.spec.pool_id.clone().unwrap_or_default(),
                code: code.clone(),
                valid_until: coupon.spec.redemption_deadline,
                reference: redemption_id.clone(),
            },
        };
        RedeemPlan {
            use_event: NewLedgerEvent {
                client_id: request.client_id.clone(),
                event_type: EventType::Use,
                points: -coupon.spec.point_value,
                occurred_at: now,
                document_id: None,
                request_id: Some(key.request_id.clone()),
                reason_code: Some("COUPON_REDEEMED".into()),
                reason: Some(format!("redeemed coupon {:?}", coupon.spec.name)),
                actor_key_id: Some(caller.key_id.clone()),
                actor_user_id: request.user_id.clone(),
                related_event_id: None,
                redemption_id: Some(redemption_id),
                reservation_id: None,
                stacking_mode: None,
                lot: None,
            },
            redemption,
            stock: coupon.spec.stock,
            per_client_limit: coupon.spec.per_client_limit,
            delivery,
            coupon_revision: Some(coupon.revision),
            client_unread: client_name.is_none(),
        }
    }

    /// # Errors
    /// An unknown redemption, or the database.
    pub async fn redemption(
        &self,
        caller: &Caller,
        redemption_id: &str,
    ) -> Result<Redemption, RedeemError> {
        self.deps
            .redemptions
            .get(&caller.tenant, redemption_id)
            .await?
            .ok_or_else(|| RedeemError::NotFound(format!("redemption {redemption_id}")))
    }

    /// Redemptions, newest first.
    ///
    /// # Errors
    /// The database.
    pub async fn redemptions(
        &self,
        caller: &Caller,
        filter: &RedemptionFilter,
        before: Option<String>,
        page_size: u64,
    ) -> Result<(Vec<Redemption>, Option<String>), RedeemError> {
        let page_size = page_size.max(1);
        let page = self
            .deps
            .redemptions
            .page(&caller.tenant, filter, before, page_size)
            .await?;
        let next = (page.len() as u64 == page_size)
            .then(|| page.last().map(|r| r.redemption_id.clone()))
            .flatten();
        Ok((page, next))
    }

    /// An administrator cancels a live redemption: a Refund event gives the points back, the
    /// coupon's stock gets the unit back, and a delivery not made yet is withdrawn. A code
    /// already in the ONe pool stays there (ONe offers no removal).
    ///
    /// # Errors
    /// No reason, an unknown redemption, one already failed or cancelled, a reused request id,
    /// or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %key.request_id))]
    pub async fn cancel(
        &self,
        caller: &Caller,
        key: &RequestKey,
        redemption_id: &str,
        reason: &str,
    ) -> Result<Redemption, RedeemError> {
        if self.prior(caller, key, CANCEL).await?.is_some() {
            return self.redemption(caller, redemption_id).await;
        }
        let mut found = required(redemption_id, "redemption_id");
        found.extend(required(reason, "reason"));
        if reason.len() > 500 {
            found.push(FieldViolation::new(
                "reason",
                "must be at most 500 characters",
            ));
        }
        Invalid::check(found)?;
        let record = IdempotencyRecord {
            request_id: key.request_id.clone(),
            operation: CANCEL.into(),
            request_hash: key.request_hash.clone(),
            result_ref: String::new(),
        };
        let refunded = self
            .refund(
                caller,
                redemption_id,
                RedemptionStatus::Cancelled,
                format!("cancelled: {}", reason.trim()),
                Some(&key.request_id),
                None,
                Some(&record),
            )
            .await;
        match refunded {
            Err(RedeemError::Repo(RepoError::Conflict(cause))) => {
                match self.prior(caller, key, CANCEL).await? {
                    Some(_) => self.redemption(caller, redemption_id).await,
                    None => Err(RedeemError::Repo(RepoError::Aborted(cause))),
                }
            }
            other => other,
        }
    }

    /// Gives a live redemption's points back (cancelled by an administrator, or failed because
    /// ONe refused its code for good).
    ///
    /// # Errors
    /// An unknown redemption, one no longer live, or the database.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn refund(
        &self,
        caller: &Caller,
        redemption_id: &str,
        status: RedemptionStatus,
        reason: String,
        request_id: Option<&str>,
        rejected_message: Option<(i64, String)>,
        record: Option<&IdempotencyRecord>,
    ) -> Result<Redemption, RedeemError> {
        let redemption = self.redemption(caller, redemption_id).await?;
        if !redemption.status.holds_the_coupon() {
            return Err(RedeemError::Refused(format!(
                "redemption {redemption_id} is {} already",
                redemption.status.as_str()
            )));
        }
        let settings = self.deps.settings.current(&caller.tenant).await?;
        let now = self.deps.clock.now();
        let reason_code = match status {
            RedemptionStatus::Failed => "DELIVERY_REJECTED",
            _ => "REDEMPTION_CANCELLED",
        };
        let plan = RefundPlan {
            redemption_id: redemption_id.to_owned(),
            status,
            reason: reason.clone(),
            refund: NewLedgerEvent {
                client_id: redemption.client_id.clone(),
                event_type: EventType::Refund,
                points: redemption.points,
                occurred_at: now,
                document_id: None,
                request_id: request_id.map(str::to_owned),
                reason_code: Some(reason_code.into()),
                reason: Some(format!("redemption {redemption_id} {reason}")),
                actor_key_id: Some(caller.key_id.clone()),
                actor_user_id: None,
                related_event_id: redemption.use_event_id,
                redemption_id: Some(redemption_id.to_owned()),
                reservation_id: None,
                stacking_mode: None,
                // Points given back are spendable at once and expire like newly earned ones.
                lot: Some(LotTerms::new(now, 0, settings.expiry_months)),
            },
            rejected_message,
        };
        Ok(self
            .deps
            .redemptions
            .refund(&caller.tenant, &plan, record)
            .await?)
    }

    /// Holds points for a basket for the tenant's reservation time-to-live.
    ///
    /// # Errors
    /// Bad fields, an unknown client or user, not enough available points, a reused request
    /// id, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %key.request_id))]
    pub async fn reserve(
        &self,
        caller: &Caller,
        key: &RequestKey,
        request: &ReserveRequest,
    ) -> Result<Reservation, RedeemError> {
        if let Some(id) = self.prior(caller, key, RESERVE).await? {
            return self.reservation(caller, &id).await;
        }
        let settings = self.deps.settings.current(&caller.tenant).await?;
        let mut found = required(&request.client_id, "client_id");
        found.extend(required(&request.basket_id, "basket_id"));
        if request.points <= Decimal::ZERO {
            found.push(FieldViolation::new("points", "must be greater than 0"));
        } else if request.points.normalize().scale() > settings.points_scale {
            found.push(FieldViolation::new(
                "points",
                format!(
                    "must have at most {} decimals (the tenant's points scale)",
                    settings.points_scale
                ),
            ));
        }
        Invalid::check(found)?;
        self.client(caller, &request.client_id).await?;
        self.check_user(caller, request.user_id.as_deref(), &request.client_id)
            .await?;
        let now = self.deps.clock.now();
        let reservation = Reservation {
            reservation_id: super::time_ordered_id("rsv", now),
            request_id: key.request_id.clone(),
            client_id: request.client_id.clone(),
            user_id: request.user_id.clone(),
            basket_id: request.basket_id.trim().to_owned(),
            points: request.points,
            status: ReservationStatus::Held,
            expires_at: now
                + chrono::Duration::seconds(i64::from(settings.reservation_ttl_seconds.max(1))),
            order_number: None,
            use_event_id: None,
            created_at: now,
            settled_at: None,
        };
        let record = IdempotencyRecord {
            request_id: key.request_id.clone(),
            operation: RESERVE.into(),
            request_hash: key.request_hash.clone(),
            result_ref: String::new(),
        };
        match self
            .deps
            .reservations
            .reserve(&caller.tenant, &reservation, &record)
            .await
        {
            Ok(()) => Ok(reservation),
            Err(err) => {
                let id = self.winner(caller, key, RESERVE, err).await?;
                self.reservation(caller, &id).await
            }
        }
    }

    /// Spends a held reservation on an order: a Use event bound to the reservation.
    ///
    /// # Errors
    /// Bad fields, an unknown reservation, one not held any more or expired, a reused request
    /// id, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %key.request_id))]
    pub async fn commit(
        &self,
        caller: &Caller,
        key: &RequestKey,
        reservation_id: &str,
        order_number: &str,
    ) -> Result<Reservation, RedeemError> {
        if self.prior(caller, key, COMMIT).await?.is_some() {
            return self.reservation(caller, reservation_id).await;
        }
        let mut found = required(reservation_id, "reservation_id");
        found.extend(required(order_number, "order_number"));
        Invalid::check(found)?;
        let held = self.reservation(caller, reservation_id).await?;
        let spend = NewLedgerEvent {
            client_id: held.client_id.clone(),
            event_type: EventType::Use,
            points: -held.points,
            occurred_at: self.deps.clock.now(),
            document_id: None,
            request_id: Some(key.request_id.clone()),
            reason_code: Some("ORDER_PAID_WITH_POINTS".into()),
            reason: Some(format!(
                "order {} (basket {})",
                order_number.trim(),
                held.basket_id
            )),
            actor_key_id: Some(caller.key_id.clone()),
            actor_user_id: held.user_id.clone(),
            related_event_id: None,
            redemption_id: None,
            reservation_id: Some(held.reservation_id.clone()),
            stacking_mode: None,
            lot: None,
        };
        let record = IdempotencyRecord {
            request_id: key.request_id.clone(),
            operation: COMMIT.into(),
            request_hash: key.request_hash.clone(),
            result_ref: String::new(),
        };
        match self
            .deps
            .reservations
            .commit(
                &caller.tenant,
                reservation_id,
                order_number.trim(),
                &spend,
                &record,
            )
            .await
        {
            Ok(committed) => Ok(committed),
            Err(err) => {
                let id = self.winner(caller, key, COMMIT, err).await?;
                self.reservation(caller, &id).await
            }
        }
    }

    /// Gives a held reservation's points back.
    ///
    /// # Errors
    /// An unknown reservation, one not held any more, a reused request id, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %key.request_id))]
    pub async fn release(
        &self,
        caller: &Caller,
        key: &RequestKey,
        reservation_id: &str,
    ) -> Result<Reservation, RedeemError> {
        if self.prior(caller, key, RELEASE).await?.is_some() {
            return self.reservation(caller, reservation_id).await;
        }
        Invalid::check(required(reservation_id, "reservation_id"))?;
        self.reservation(caller, reservation_id).await?;
        let record = IdempotencyRecord {
            request_id: key.request_id.clone(),
            operation: RELEASE.into(),
            request_hash: key.request_hash.clone(),
            result_ref: String::new(),
        };
        match self
            .deps
            .reservations
            .release(
                &caller.tenant,
                reservation_id,
                ReservationStatus::Released,
                Some(&record),
            )
            .await
        {
            Ok(released) => Ok(released),
            Err(err) => {
                let id = self.winner(caller, key, RELEASE, err).await?;
                self.reservation(caller, &id).await
            }
        }
    }

    /// # Errors
    /// An unknown reservation, or the database.
    pub async fn reservation(
        &self,
        caller: &Caller,
        reservation_id: &str,
    ) -> Result<Reservation, RedeemError> {
        self.deps
            .reservations
            .get(&caller.tenant, reservation_id)
            .await?
            .ok_or_else(|| RedeemError::NotFound(format!("reservation {reservation_id}")))
    }

    /// Releases the held reservations whose time ran out, in every tenant. Two replicas may run
    /// it at once: each reservation is released once (a conditional update). Returns how many.
    ///
    /// # Errors
    /// The database.
    pub async fn release_expired(&self, limit: u64) -> Result<usize, RedeemError> {
        let now = self.deps.clock.now();
        let mut released = 0;
        for (tenant, reservation_id) in self.deps.reservations.expired(now, limit).await? {
            match self
                .deps
                .reservations
                .release(&tenant, &reservation_id, ReservationStatus::Expired, None)
                .await
            {
                Ok(_) => released += 1,
                // Committed, released or expired by another call meanwhile.
                Err(RepoError::Precondition(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Ok(released)
    }

    /// The tenant's points scale, for rendering.
    ///
    /// # Errors
    /// The database.
    pub async fn points_scale(&self, caller: &Caller) -> Result<u32, RedeemError> {
        Ok(self
            .deps
            .settings
            .current(&caller.tenant)
            .await?
            .points_scale)
    }

    /// The redemption repository, for the outbox dispatcher.
    pub(crate) fn redemption_repository(&self) -> &Arc<dyn RedemptionRepository> {
        &self.deps.redemptions
    }

    async fn available(&self, caller: &Caller, client_id: &str) -> Result<Decimal, RedeemError> {
        Ok(self
            .deps
            .ledger
            .balance(&caller.tenant, client_id)
            .await?
            .map_or(Decimal::ZERO, |b| b.available))
    }

    /// The client; `NotFound` for an unknown client.
    async fn client(&self, caller: &Caller, client_id: &str) -> Result<ClientRecord, RedeemError> {
        self.deps
            .directory
            .client(&caller.tenant, client_id)
            .await?
            .ok_or_else(|| unknown_client(client_id))
    }

    /// A named user must be an active user of the client.
    async fn check_user(
        &self,
        caller: &Caller,
        user_id: Option<&str>,
        client_id: &str,
    ) -> Result<(), RedeemError> {
        let Some(user_id) = user_id else {
            return Ok(());
        };
        match self.deps.directory.user(&caller.tenant, user_id).await? {
            None => Err(RedeemError::NotFound(format!("user {user_id}"))),
            Some(user) if user.client_id != client_id || !user.active => Err(Invalid::field(
                "user_id",
                format!("user {user_id} is not an active user of client {client_id}"),
            )
            .into()),
            Some(_) => Ok(()),
        }
    }

    async fn prior(
        &self,
        caller: &Caller,
        key: &RequestKey,
        operation: &str,
    ) -> Result<Option<String>, RedeemError> {
        Ok(prior_result(
            self.deps.requests.as_ref(),
            &caller.tenant,
            &key.request_id,
            operation,
            &key.request_hash,
        )
        .await?)
    }

    /// After a failed write: a `Conflict` on the request id means a concurrent call with the
    /// same id won; its result id is returned so that this call answers as a retry would.
    /// Anything else is the error.
    async fn winner(
        &self,
        caller: &Caller,
        key: &RequestKey,
        operation: &str,
        err: RepoError,
    ) -> Result<String, RedeemError> {
        let RepoError::Conflict(cause) = err else {
            return Err(err.into());
        };
        match self.prior(caller, key, operation).await? {
            Some(id) => Ok(id),
            None => Err(RedeemError::Repo(RepoError::Aborted(cause))),
        }
    }
}

fn unknown_client(client_id: &str) -> RedeemError {
    RedeemError::NotFound(format!("client {client_id}"))
}

fn required(value: &str, field: &str) -> Vec<FieldViolation> {
    if value.trim().is_empty() {
        vec![FieldViolation::new(field, "is required")]
    } else if value.len() > 128 {
        vec![FieldViolation::new(field, "must be at most 128 characters")]
    } else {
        Vec::new()
    }
}
