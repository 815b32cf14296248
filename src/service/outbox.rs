//! Delivering what redemptions promise, through the outbox: codes into the coupons' ONe pools
//! and the SPECIAL coupons' alert e-mails.
//!
//! Delivery is at least once: a replica leases a message, delivers it, then marks it delivered.
//! If it dies in between, the lease runs out and another replica delivers again; ONe answers a
//! code it already holds with `ALREADY_PRESENT`, so the code lands once. A permanent refusal
//! fails the redemption and refunds its points; anything else is retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::access::Caller;
use crate::domain::clock::Clock;
use crate::domain::redemption::{
    AlertEmail, Backoff, Delivery, DeliveryOutcome, OutboxMessage, RedemptionStatus,
};
use crate::service::promotions::PromotionsGateway;
use crate::service::redeem::{RedeemError, RedeemService};
use async_trait::async_trait;

/// Sends e-mail.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, email: &AlertEmail) -> DeliveryOutcome;
}

/// What one dispatch run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchReport {
    pub delivered: usize,
    pub retried: usize,
    pub rejected: usize,
}

/// How the dispatcher paces itself.
#[derive(Debug, Clone, Copy)]
pub struct DispatchPolicy {
    /// How long a replica owns a message it is delivering.
    pub lease: Duration,
    pub backoff: Backoff,
}

pub struct OutboxDispatcher {
    redeem: Arc<RedeemService>,
    promotions: Arc<dyn PromotionsGateway>,
    mailer: Arc<dyn Mailer>,
    clock: Arc<dyn Clock>,
    policy: DispatchPolicy,
    /// This replica's name in leases.
    owner: String,
}

impl OutboxDispatcher {
    pub fn new(
        redeem: Arc<RedeemService>,
        promotions: Arc<dyn PromotionsGateway>,
        mailer: Arc<dyn Mailer>,
        clock: Arc<dyn Clock>,
        policy: DispatchPolicy,
    ) -> Self {
        Self {
            redeem,
            promotions,
            mailer,
            clock,
            policy,
            owner: format!("dispatcher-{}", super::random_id()),
        }
    }

    /// Leases up to `limit` due messages and delivers each once.
    ///
    /// # Errors
    /// The database.
    pub async fn run_once(&self, limit: u64) -> Result<DispatchReport, RedeemError> {
        let repo = self.redeem.redemption_repository();
        let leased = repo
            .lease_deliveries(&self.owner, self.clock.now(), self.policy.lease, limit)
            .await?;
        let mut report = DispatchReport::default();
        for message in leased {
            let outcome = self.deliver(&message).await;
            match outcome {
                DeliveryOutcome::Delivered => {
                    if repo
                        .delivered(&message, &self.owner, self.clock.now())
                        .await?
                    {
                        report.delivered += 1;
                    }
                }
                DeliveryOutcome::Transient(error) => {
                    let attempts = message.attempts + 1;
                    let delay = self.policy.backoff.jittered(attempts, &mut rand::rng());
                    let next = self.clock.now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    tracing::warn!(
                        message_id = message.message_id,
                        redemption_id = %message.redemption_id,
                        attempts,
                        %error,
                        retry_in_ms = delay.as_millis(),
                        "delivery failed; retrying later"
                    );
                    repo.retry_delivery(&message, &self.owner, next, &error)
                        .await?;
                    report.retried += 1;
                }
                DeliveryOutcome::Rejected(reason) => {
                    tracing::warn!(
                        message_id = message.message_id,
                        redemption_id = %message.redemption_id,
                        %reason,
                        "delivery refused for good; refunding the redemption"
                    );
                    let system = Caller {
                        tenant: message.tenant.clone(),
                        key_id: "system:outbox".into(),
                        roles: Vec::new(),
                        acting_for: None,
                    };
                    match self
                        .redeem
                        .refund(
                            &system,
                            &message.redemption_id,
                            RedemptionStatus::Failed,
                            format!("failed: ONe refused the delivery: {reason}"),
                            None,
                            Some((message.message_id, self.owner.clone())),
                            None,
                        )
                        .await
                    {
                        Ok(_) => report.rejected += 1,
                        // Cancelled meanwhile, or the lease was lost: nothing more to do here.
                        Err(RedeemError::Refused(why)) => {
                            tracing::info!(%why, "rejected delivery already settled");
                        }
                        Err(other) => return Err(other),
                    }
                }
            }
        }
        Ok(report)
    }

    async fn deliver(&self, message: &OutboxMessage) -> DeliveryOutcome {
        match &message.delivery {
            Delivery::AddPoolCode {
                pool_id,
                code,
                valid_until,
                reference,
            } => {
                self.promotions
                    .add_code(&message.tenant, pool_id, code, *valid_until, reference)
                    .await
            }
            delivery @ Delivery::SendSpecialEmail { .. } => match delivery.alert_email() {
                Some(email) => self.mailer.send(&email).await,
                None => DeliveryOutcome::Rejected("no e-mail to send".into()),
            },
        }
    }
}
