//! The ONe promotions service as this plugin needs it: its coupon pools (a coupon's codes go to
//! one) and adding a code to a pool.

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::domain::redemption::DeliveryOutcome;
use crate::domain::tenant::TenantId;
use crate::persistence::coupons::CouponPoolRecord;

/// One page of a tenant's pools in ONe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPage {
    pub pools: Vec<CouponPoolRecord>,
    /// More pages follow.
    pub more: bool,
}

#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait PromotionsGateway: Send + Sync {
    /// Adds one code to a pool. ONe treats a code it already holds as delivered.
    async fn add_code(
        &self,
        tenant: &TenantId,
        pool_id: &str,
        code: &str,
        valid_until: NaiveDate,
        reference: &str,
    ) -> DeliveryOutcome;

    /// Page `page_number` (from 1) of the tenant's pools. `Err`: ONe cannot be asked now (not
    /// configured, down), in words.
    async fn list_pools(
        &self,
        tenant: &TenantId,
        page_number: u32,
        page_size: u32,
    ) -> Result<PoolPage, String>;
}
