//! Rate limits per API key and per tenant (GCRA token buckets, `governor`), and a bound on each
//! tenant's calls in flight, checked by the auth layer once the caller is known: a flood from
//! one key or tenant is refused with `RESOURCE_EXHAUSTED` before it reaches a service or the
//! database, so other keys and tenants keep their latency.

use std::num::NonZeroU32;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::config::LimitSettings;
use crate::domain::access::Caller;

pub struct CallLimits {
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    per_tenant: Option<DefaultKeyedRateLimiter<String>>,
    /// Calls in flight per tenant and per key (0: unbounded).
    tenant_concurrency: u32,
    key_concurrency: u32,
    /// One semaphore per tenant ("t:" id) and per key ("k:" id).
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl std::fmt::Debug for CallLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallLimits")
            .field("per_key", &self.per_key.is_some())
            .field("per_tenant", &self.per_tenant.is_some())
            .field("tenant_concurrency", &self.tenant_concurrency)
            .field("key_concurrency", &self.key_concurrency)
            .finish_non_exhaustive()
    }
}

/// A keyed limiter of `per_second` calls with bursts of `burst`; `None` when `per_second` is 0.
fn limiter(per_second: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl CallLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            per_key: limiter(settings.per_key_per_second, settings.per_key_burst),
            per_tenant: limiter(settings.per_tenant_per_second, settings.per_tenant_burst),
            tenant_concurrency: settings.per_tenant_concurrency,
            key_concurrency: settings.per_key_concurrency,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Places among the key's and the tenant's calls in flight, held until the call ends.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when the key or the tenant has as many calls in flight as it may.
    pub fn enter(&self, caller: &Caller) -> Result<Vec<OwnedSemaphorePermit>, Status> {
        let mut held = Vec::with_capacity(2);
        for (slot, bound, who) in [
            (format!("k:{}", caller.key_id), self.key_concurrency, "key"),
            (
                format!("t:{}", caller.tenant.as_str()),
                self.tenant_concurrency,
                "tenant",
            ),
        ] {
            if bound == 0 {
                continue;
            }
            let semaphore = {
                let mut in_flight = self
                    .in_flight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Arc::clone(
                    in_flight
                        .entry(slot)
                        .or_insert_with(|| Arc::new(Semaphore::new(bound as usize))),
                )
            };
            held.push(semaphore.try_acquire_owned().map_err(|_| {
                Status::resource_exhausted(format!(
                    "this {who} has too many calls in flight; retry later"
                ))
            })?);
        }
        Ok(held)
    }

    /// Takes one call from the caller's key and tenant allowances.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when either is used up.
    pub fn admit(&self, caller: &Caller) -> Result<(), Status> {
        if let Some(limiter) = &self.per_key
            && limiter.check_key(&caller.key_id).is_err()
        {
            return Err(Status::resource_exhausted(
                "this key's rate limit is reached; retry later",
            ));
        }
        if let Some(limiter) = &self.per_tenant
            && limiter
                .check_key(&caller.tenant.as_str().to_owned())
                .is_err()
        {
            return Err(Status::resource_exhausted(
                "this tenant's rate limit is reached; retry later",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenant::TenantId;

    fn caller(tenant: &str, key: &str) -> Caller {
        Caller {
            tenant: TenantId::parse(tenant).expect("tenant"),
            key_id: key.into(),
            roles: vec![],
            acting_for: None,
        }
    }

    #[test]
    fn a_key_gets_its_burst_then_is_refused_while_others_are_not() {
        let limits = CallLimits::new(&LimitSettings {
            per_key_per_second: 1,
            per_key_burst: 3,
            per_tenant_per_second: 0,
            per_tenant_burst: 0,
            per_tenant_concurrency: 0,
            per_key_concurrency: 0,
        });
        let flood = caller("demo", "k1");
        assert!((0..3).all(|_| limits.admit(&flood).is_ok()));
        assert_eq!(
            limits.admit(&flood).expect_err("over").code(),
            tonic::Code::ResourceExhausted
        );
        assert!(limits.admit(&caller("demo", "k2")).is_ok(), "another key");
        assert!(
            limits.admit(&caller("acme", "k3")).is_ok(),
            "another tenant"
        );
        let off = CallLimits::new(&LimitSettings::default());
        assert!(
            (0..1_000).all(|_| off.admit(&flood).is_ok()),
            "0 turns limits off"
        );
    }

    #[test]
    fn a_tenant_has_at_most_its_bound_of_calls_in_flight() {
        let limits = CallLimits::new(&LimitSettings {
            per_tenant_concurrency: 2,
            ..LimitSettings::default()
        });
        let demo = caller("demo", "k1");
        let first = limits.enter(&demo).expect("first");
        assert_eq!(first.len(), 1, "only the tenant is bounded here");
        let second = limits.enter(&demo).expect("second");
        assert_eq!(
            limits.enter(&demo).expect_err("third").code(),
            tonic::Code::ResourceExhausted
        );
        assert!(
            limits.enter(&caller("acme", "k2")).is_ok(),
            "another tenant"
        );
        drop(first);
        assert!(limits.enter(&demo).is_ok(), "a call ended, a place is free");
        drop(second);
    }

    #[test]
    fn a_key_has_at_most_its_bound_of_calls_in_flight() {
        let limits = CallLimits::new(&LimitSettings {
            per_key_concurrency: 1,
            ..LimitSettings::default()
        });
        let held = limits.enter(&caller("demo", "k1")).expect("first");
        assert!(limits.enter(&caller("demo", "k1")).is_err(), "the same key");
        assert!(
            limits.enter(&caller("demo", "k2")).is_ok(),
            "another key of the tenant"
        );
        drop(held);
        assert!(limits.enter(&caller("demo", "k1")).is_ok());
    }
}
