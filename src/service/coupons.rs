//! The reward catalogue an administrator maintains (DOMAIN.md §5), and the ONe coupon pools its
//! codes go to.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;

use crate::domain::access::Caller;
use crate::domain::calendar::day_of;
use crate::domain::clock::Clock;
use crate::domain::coupons::{Coupon, CouponSpec, CouponStatus, CouponType, SpecContext};
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::tenant::TenantId;
use crate::domain::validation::Invalid;
use crate::persistence::coupons::CouponPoolRecord;
use crate::persistence::{CouponRepository, IdempotencyRepository, RepoError, SettingsRepository};
use crate::service::idempotency::{IdempotencyError, RequestKey, prior_result};
use crate::service::promotions::PromotionsGateway;

#[derive(Debug, thiserror::Error)]
pub enum CouponError {
    /// → `INVALID_ARGUMENT`
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// → `NOT_FOUND`
    #[error("{0} not found")]
    NotFound(String),
    /// Another coupon has the name. → `ALREADY_EXISTS`
    #[error("a coupon named {0:?} exists already")]
    NameTaken(String),
    /// The coupon changed since the revision the caller saw. → `ABORTED`
    #[error("coupon {coupon_id} is at revision {actual}, not {expected}")]
    RevisionMismatch {
        coupon_id: String,
        expected: u32,
        actual: u32,
    },
    /// → `INVALID_ARGUMENT` / `ALREADY_EXISTS`
    #[error(transparent)]
    RequestId(IdempotencyError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

crate::request_id_error!(CouponError);

/// Which coupons to list.
#[derive(Debug, Clone, Default)]
pub struct CouponFilter {
    pub status: Option<CouponStatus>,
    pub coupon_type: Option<CouponType>,
    pub offered_on: Option<NaiveDate>,
}

pub struct CouponService {
    repo: Arc<dyn CouponRepository>,
    promotions: Arc<dyn PromotionsGateway>,
    settings: Arc<dyn SettingsRepository>,
    requests: Arc<dyn IdempotencyRepository>,
    clock: Arc<dyn Clock>,
}

impl CouponService {
    pub fn new(
        repo: Arc<dyn CouponRepository>,
        promotions: Arc<dyn PromotionsGateway>,
        settings: Arc<dyn SettingsRepository>,
        requests: Arc<dyn IdempotencyRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            repo,
            promotions,
            settings,
            requests,
            clock,
        }
    }

    /// Creates a coupon.
    ///
    /// # Errors
    /// Broken rules, a taken name, a reused request id, or the database.
    pub async fn create(
        &self,
        caller: &Caller,
        key: &RequestKey,
        spec: CouponSpec,
    ) -> Result<Coupon, CouponError> {
        const OP: &str = "CouponService/CreateCoupon";
        if let Some(id) = self.prior(caller, key, OP).await? {
            return self.get(caller, &id).await;
        }
        self.check(caller, &spec, None, 0).await?;
        let now = self.clock.now();
        let coupon = Coupon {
            coupon_id: format!("cpn_{}", super::random_id()),
            spec,
            status: CouponStatus::Active,
            redeemed_count: 0,
            revision: 1,
            created_at: now,
            updated_at: now,
        };
        self.save(caller, key, OP, &coupon, None).await?;
        Ok(coupon)
    }

    /// Replaces a coupon's fields; redemptions already made keep their terms.
    ///
    /// # Errors
    /// An unknown coupon, broken rules, a taken name, a stale revision, a reused request id, or
    /// the database.
    pub async fn update(
        &self,
        caller: &Caller,
        key: &RequestKey,
        coupon_id: &str,
        spec: CouponSpec,
        expected_revision: u32,
    ) -> Result<Coupon, CouponError> {
        const OP: &str = "CouponService/UpdateCoupon";
        if self.prior(caller, key, OP).await?.is_some() {
            return self.get(caller, coupon_id).await;
        }
        let current = self.get(caller, coupon_id).await?;
        if expected_revision != 0 && expected_revision != current.revision {
            return Err(CouponError::RevisionMismatch {
                coupon_id: coupon_id.into(),
                expected: expected_revision,
                actual: current.revision,
            });
        }
        self.check(
            caller,
            &spec,
            Some(current.spec.appearance_date),
            current.redeemed_count,
        )
        .await?;
        let coupon = Coupon {
            spec,
            revision: current.revision + 1,
            updated_at: self.clock.now(),
            ..current.clone()
        };
        self.save(caller, key, OP, &coupon, Some(current.revision))
            .await?;
        Ok(coupon)
    }

    /// Withdraws a coupon from the catalogue; codes issued stay valid. Idempotent.
    ///
    /// # Errors
    /// An unknown coupon, a reused request id, or the database.
    pub async fn archive(
        &self,
        caller: &Caller,
        key: &RequestKey,
        coupon_id: &str,
    ) -> Result<Coupon, CouponError> {
        const OP: &str = "CouponService/ArchiveCoupon";
        let current = self.get(caller, coupon_id).await?;
        if self.prior(caller, key, OP).await?.is_some() || current.status == CouponStatus::Archived
        {
            return Ok(current);
        }
        let coupon = Coupon {
            status: CouponStatus::Archived,
            revision: current.revision + 1,
            updated_at: self.clock.now(),
            ..current.clone()
        };
        self.save(caller, key, OP, &coupon, Some(current.revision))
            .await?;
        Ok(coupon)
    }

    /// One coupon.
    ///
    /// # Errors
    /// An unknown coupon, or the database.
    pub async fn get(&self, caller: &Caller, coupon_id: &str) -> Result<Coupon, CouponError> {
        self.repo
            .get(&caller.tenant, coupon_id)
            .await?
            .ok_or_else(|| CouponError::NotFound(format!("coupon {coupon_id}")))
    }

    /// A page of coupons matching the filter, and where the next page starts.
    ///
    /// # Errors
    /// The database.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &CouponFilter,
        after: Option<String>,
        page_size: u64,
    ) -> Result<(Vec<Coupon>, Option<String>), CouponError> {
        let (repo, tenant) = (&self.repo, &caller.tenant);
        let fetch = move |after| repo.page(tenant, after, page_size);
        let keep = |coupon: Coupon| {
            let wanted = filter.status.is_none_or(|s| coupon.status == s)
                && filter
                    .coupon_type
                    .is_none_or(|t| coupon.spec.coupon_type == t)
                && filter.offered_on.is_none_or(|d| coupon.offered_on(d));
            wanted.then_some(coupon)
        };
        Ok(super::filtered_page(
            page_size,
            after,
            fetch,
            |c: &Coupon| c.coupon_id.clone(),
            keep,
        )
        .await?)
    }

    /// A page of the tenant's ONe coupon pools. The first page asks ONe first and refreshes
    /// the local copy; when ONe cannot be asked, the copy from the last refresh (or from
    /// synchronization) is served.
    ///
    /// # Errors
    /// The database.
    pub async fn pools(
        &self,
        caller: &Caller,
        after: Option<String>,
        page_size: u64,
    ) -> Result<(Vec<CouponPoolRecord>, Option<String>), CouponError> {
        if after.is_none()
            && let Err(why) = self.refresh_pools(&caller.tenant).await?
        {
            tracing::warn!(tenant = %caller.tenant, %why, "pools served from the local copy");
        }
        let mut pools = self
            .repo
            .pools(&caller.tenant, after, page_size + 1)
            .await?;
        let size = usize::try_from(page_size).unwrap_or(usize::MAX);
        let next = (pools.len() > size).then(|| {
            pools.truncate(size);
            pools.last().map(|p| p.pool_id.clone())
        });
        Ok((pools, next.flatten()))
    }

    /// Reads every pool of the tenant from ONe into the local copy; a pool ONe no longer lists
    /// is kept as inactive (coupons name it). `Ok(Err(why))`: ONe could not be asked.
    async fn refresh_pools(&self, tenant: &TenantId) -> Result<Result<usize, String>, CouponError> {
        const PAGE: u32 = 500;
        // A bound on the pages read, so that a misbehaving ONe cannot keep us looping.
        const MAX_PAGES: u32 = 200;
        let mut seen = BTreeSet::new();
        for page_number in 1..=MAX_PAGES {
            let page = match self.promotions.list_pools(tenant, page_number, PAGE).await {
                Ok(page) => page,
                Err(why) => return Ok(Err(why)),
            };
            for pool in &page.pools {
                self.repo.save_pool(tenant, pool).await?;
                seen.insert(pool.pool_id.clone());
            }
            if !page.more {
                break;
            }
        }
        let mut after = None;
        loop {
            let batch = self.repo.pools(tenant, after, 500).await?;
            let Some(last) = batch.last().map(|p| p.pool_id.clone()) else {
                break;
            };
            for gone in batch
                .into_iter()
                .filter(|p| p.active && !seen.contains(&p.pool_id))
            {
                self.repo
                    .save_pool(
                        tenant,
                        &CouponPoolRecord {
                            active: false,
                            ..gone
                        },
                    )
                    .await?;
            }
            after = Some(last);
        }
        Ok(Ok(seen.len()))
    }

    /// Whether the pool is active in ONe: the local copy, refreshed from ONe when the copy does
    /// not know it (a pool created in ONe since the last refresh).
    async fn pool_active(&self, tenant: &TenantId, pool_id: &str) -> Result<bool, CouponError> {
        let known = |p: Option<CouponPoolRecord>| p.is_some_and(|p| p.active);
        if known(self.repo.pool(tenant, pool_id).await?) {
            return Ok(true);
        }
        if let Err(why) = self.refresh_pools(tenant).await? {
            tracing::warn!(%tenant, %why, "pool checked against the local copy only");
        }
        Ok(known(self.repo.pool(tenant, pool_id).await?))
    }

    async fn check(
        &self,
        caller: &Caller,
        spec: &CouponSpec,
        previous_appearance: Option<NaiveDate>,
        redeemed: u32,
    ) -> Result<(), CouponError> {
        let today = day_of(
            self.settings.current(&caller.tenant).await?.time_zone,
            self.clock.now(),
        );
        let pool_known = match &spec.pool_id {
            Some(pool) => self.pool_active(&caller.tenant, pool).await?,
            None => false,
        };
        spec.check(SpecContext {
            today,
            previous_appearance,
            pool_known,
            redeemed,
        })?;
        Ok(())
    }

    async fn save(
        &self,
        caller: &Caller,
        key: &RequestKey,
        operation: &str,
        coupon: &Coupon,
        previous: Option<u32>,
    ) -> Result<(), CouponError> {
        let record = IdempotencyRecord {
            request_id: key.request_id.clone(),
            operation: operation.to_owned(),
            request_hash: key.request_hash.clone(),
            result_ref: coupon.coupon_id.clone(),
        };
        match self
            .repo
            .save(&caller.tenant, coupon, previous, &record)
            .await
        {
            Ok(()) => Ok(()),
            Err(RepoError::Conflict(cause)) => {
                if self.prior(caller, key, operation).await?.is_some() {
                    Ok(())
                } else if self
                    .repo
                    .name_taken(&caller.tenant, &coupon.spec.name, &coupon.coupon_id)
                    .await?
                {
                    Err(CouponError::NameTaken(coupon.spec.name.clone()))
                } else {
                    Err(RepoError::Aborted(cause).into())
                }
            }
            Err(RepoError::Aborted(_)) => {
                let actual = self.get(caller, &coupon.coupon_id).await?.revision;
                Err(CouponError::RevisionMismatch {
                    coupon_id: coupon.coupon_id.clone(),
                    expected: previous.unwrap_or(0),
                    actual,
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn prior(
        &self,
        caller: &Caller,
        key: &RequestKey,
        operation: &str,
    ) -> Result<Option<String>, CouponError> {
        Ok(prior_result(
            self.requests.as_ref(),
            &caller.tenant,
            &key.request_id,
            operation,
            &key.request_hash,
        )
        .await?)
    }
}
