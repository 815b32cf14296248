//! The tonic client of the ONe core services. A lazily connected channel with connect and
//! request timeouts; the tenant travels as `one-tenant` metadata and the configured token as a
//! bearer credential.

use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::config::CoreSettings;
use crate::domain::redemption::DeliveryOutcome;
use crate::domain::tenant::TenantId;
use crate::persistence::coupons::CouponPoolRecord;
use crate::proto::core::v1 as core;
use crate::service::promotions::{PoolPage, PromotionsGateway};

/// The ONe core over gRPC; `None` channel when no endpoint is configured.
#[derive(Debug, Clone)]
pub struct CoreClient {
    channel: Option<Channel>,
    token: String,
}

impl CoreClient {
    /// A client of `settings.endpoint`; it connects on first use and reconnects by itself.
    ///
    /// # Errors
    /// A malformed endpoint.
    pub fn new(settings: &CoreSettings) -> Result<Self, tonic::transport::Error> {
        let channel = if settings.endpoint.trim().is_empty() {
            None
        } else {
            Some(
                Endpoint::from_shared(settings.endpoint.trim().to_owned())?
                    .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
                    .timeout(Duration::from_millis(settings.request_timeout_ms))
                    .connect_lazy(),
            )
        };
        Ok(Self {
            channel,
            token: settings.token.clone(),
        })
    }

    fn request<T>(&self, tenant: &TenantId, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = tenant.as_str().parse() {
            request.metadata_mut().insert("one-tenant", value);
        }
        if !self.token.is_empty()
            && let Ok(value) = format!("Bearer {}", self.token).parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

#[async_trait]
impl PromotionsGateway for CoreClient {
    async fn add_code(
        &self,
        tenant: &TenantId,
        pool_id: &str,
        code: &str,
        valid_until: NaiveDate,
        reference: &str,
    ) -> DeliveryOutcome {
        let Some(channel) = &self.channel else {
            return DeliveryOutcome::Transient("no ONe core endpoint is configured".into());
        };
        let mut client =
            core::promotion_service_client::PromotionServiceClient::new(channel.clone());
        let request = self.request(
            tenant,
            core::AddCouponCodesRequest {
                pool_id: pool_id.to_owned(),
                codes: vec![core::CouponCode {
                    code: code.to_owned(),
                    valid_until: valid_until.to_string(),
                    reference: reference.to_owned(),
                }],
            },
        );
        match client.add_coupon_codes(request).await {
            Ok(reply) => code_outcome(code, &reply.into_inner()),
            Err(status) => status_outcome(&status),
        }
    }

    async fn list_pools(
        &self,
        tenant: &TenantId,
        page_number: u32,
        page_size: u32,
    ) -> Result<PoolPage, String> {
        let Some(channel) = &self.channel else {
            return Err("no ONe core endpoint is configured".into());
        };
        let mut client =
            core::promotion_service_client::PromotionServiceClient::new(channel.clone());
        let request = self.request(
            tenant,
            core::ListCouponPoolsRequest {
                page_number,
                page_size,
            },
        );
        let reply = client
            .list_coupon_pools(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        // ONe may serve smaller pages than asked for; its own page size counts.
        let served_size = reply
            .page
            .as_ref()
            .map_or(page_size, |p| p.page_size)
            .max(1);
        let seen = u64::from(page_number.saturating_sub(1)) * u64::from(served_size)
            + reply.pools.len() as u64;
        let more = match &reply.page {
            Some(page) if page.total_count > 0 => seen < page.total_count,
            _ => reply.pools.len() == usize::try_from(page_size).unwrap_or(usize::MAX),
        };
        Ok(PoolPage {
            pools: reply
                .pools
                .into_iter()
                .map(|p| CouponPoolRecord {
                    pool_id: p.id,
                    name: p.name,
                    campaign_id: p.campaign_id,
                    campaign_name: p.campaign_name,
                    active: p.active,
                })
                .collect(),
            more,
        })
    }
}

/// ONe's verdict on the one code sent.
fn code_outcome(code: &str, reply: &core::AddCouponCodesResponse) -> DeliveryOutcome {
    let Some(result) = reply.results.iter().find(|r| r.code == code) else {
        return DeliveryOutcome::Transient(format!("ONe did not report on code {code}"));
    };
    match core::CodeOutcome::try_from(result.outcome) {
        Ok(core::CodeOutcome::Added | core::CodeOutcome::AlreadyPresent) => {
            DeliveryOutcome::Delivered
        }
        Ok(core::CodeOutcome::Rejected) => DeliveryOutcome::Rejected(if result.reason.is_empty() {
            "code rejected".into()
        } else {
            result.reason.clone()
        }),
        _ => DeliveryOutcome::Transient(format!("unknown outcome {} for code", result.outcome)),
    }
}

/// A failed call: a refusal of the request itself is permanent; an outage, a timeout, or a
/// credentials problem (an operator can fix it) is worth retrying.
fn status_outcome(status: &tonic::Status) -> DeliveryOutcome {
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::OutOfRange => {
            DeliveryOutcome::Rejected(text)
        }
        _ => DeliveryOutcome::Transient(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(outcome: core::CodeOutcome, reason: &str) -> core::AddCouponCodesResponse {
        core::AddCouponCodesResponse {
            results: vec![core::CodeResult {
                code: "C1".into(),
                outcome: outcome as i32,
                reason: reason.into(),
            }],
        }
    }

    #[test]
    fn added_and_already_present_are_delivered_rejected_is_final() {
        assert_eq!(
            code_outcome("C1", &reply(core::CodeOutcome::Added, "")),
            DeliveryOutcome::Delivered
        );
        assert_eq!(
            code_outcome("C1", &reply(core::CodeOutcome::AlreadyPresent, "")),
            DeliveryOutcome::Delivered
        );
        assert_eq!(
            code_outcome("C1", &reply(core::CodeOutcome::Rejected, "pool closed")),
            DeliveryOutcome::Rejected("pool closed".into())
        );
        assert!(matches!(
            code_outcome("other", &reply(core::CodeOutcome::Added, "")),
            DeliveryOutcome::Transient(_)
        ));
    }

    #[test]
    fn outages_are_retried_refusals_are_not() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
        ] {
            assert!(matches!(
                status_outcome(&tonic::Status::new(code, "x")),
                DeliveryOutcome::Transient(_)
            ));
        }
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
        ] {
            assert!(matches!(
                status_outcome(&tonic::Status::new(code, "x")),
                DeliveryOutcome::Rejected(_)
            ));
        }
    }
}
