//! Spending points (DOMAIN.md §5). This part: the offers a client sees on a day.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::domain::access::Caller;
use crate::domain::calendar::day_of;
use crate::domain::clock::Clock;
use crate::domain::coupons::{Coupon, OfferView};
use crate::persistence::{
    CouponRepository, DirectoryRepository, LedgerRepository, RepoError, SettingsRepository,
};

#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// → `NOT_FOUND`
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// What a client is offered on a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offers {
    pub offers: Vec<(Coupon, OfferView)>,
    pub available: Decimal,
    pub points_scale: u32,
    pub next: Option<String>,
}

pub struct RedeemService {
    coupons: Arc<dyn CouponRepository>,
    directory: Arc<dyn DirectoryRepository>,
    ledger: Arc<dyn LedgerRepository>,
    settings: Arc<dyn SettingsRepository>,
    clock: Arc<dyn Clock>,
}

impl RedeemService {
    pub fn new(
        coupons: Arc<dyn CouponRepository>,
        directory: Arc<dyn DirectoryRepository>,
        ledger: Arc<dyn LedgerRepository>,
        settings: Arc<dyn SettingsRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            coupons,
            directory,
            ledger,
            settings,
            clock,
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
        let client = self
            .directory
            .client(&caller.tenant, client_id)
            .await?
            .ok_or_else(|| RedeemError::NotFound(format!("client {client_id}")))?;
        let settings = self.settings.current(&caller.tenant).await?;
        let day = day.unwrap_or_else(|| day_of(settings.time_zone, self.clock.now()));
        let available = self
            .ledger
            .balance(&caller.tenant, client_id)
            .await?
            .map_or(Decimal::ZERO, |b| b.available);
        let redeemed = self
            .coupons
            .redeemed_by_client(&caller.tenant, client_id)
            .await?;
        let segments: BTreeSet<String> = client.segment_ids.into_iter().collect();
        let (coupons, tenant) = (&self.coupons, &caller.tenant);
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
}
