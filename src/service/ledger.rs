//! A client's points: the balance (one row, never a sum of history), the history, one event, and
//! administrators' adjustments, idempotent by request id.

use std::sync::Arc;

use chrono::Duration;
use rust_decimal::Decimal;

use crate::domain::access::Caller;
use crate::domain::clock::Clock;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::ledger::{Balance, EventType, HistoryQuery, LedgerEvent, NewLedgerEvent};
use crate::domain::validation::{FieldViolation, Invalid};
use crate::persistence::{
    DirectoryRepository, IdempotencyRepository, LedgerRepository, RepoError, SettingsRepository,
};
use crate::service::idempotency::{IdempotencyError, RequestKey, prior_result};

const ADJUST: &str = "LedgerService/AdjustPoints";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// → `INVALID_ARGUMENT`
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// → `NOT_FOUND`
    #[error("{0} not found")]
    NotFound(String),
    /// → `INVALID_ARGUMENT` / `ALREADY_EXISTS`
    #[error(transparent)]
    RequestId(IdempotencyError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

crate::request_id_error!(LedgerError);

/// A balance as shown: the row, the points expiring soon and the scale to show them at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceView {
    pub balance: Balance,
    pub expiring: Decimal,
    pub expiring_within_days: u32,
    pub points_scale: u32,
}

/// An administrator's correction.
#[derive(Debug, Clone)]
pub struct Adjustment {
    pub client_id: String,
    /// Signed, not zero.
    pub points: Decimal,
    pub reason_code: String,
    pub reason: String,
    pub user_id: String,
}

pub struct LedgerService {
    repo: Arc<dyn LedgerRepository>,
    directory: Arc<dyn DirectoryRepository>,
    settings: Arc<dyn SettingsRepository>,
    requests: Arc<dyn IdempotencyRepository>,
    clock: Arc<dyn Clock>,
}

impl LedgerService {
    pub fn new(
        repo: Arc<dyn LedgerRepository>,
        directory: Arc<dyn DirectoryRepository>,
        settings: Arc<dyn SettingsRepository>,
        requests: Arc<dyn IdempotencyRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            repo,
            directory,
            settings,
            requests,
            clock,
        }
    }

    /// The points scale the tenant shows points at.
    ///
    /// # Errors
    /// The database.
    pub async fn points_scale(&self, caller: &Caller) -> Result<u32, LedgerError> {
        Ok(self.settings.current(&caller.tenant).await?.points_scale)
    }

    /// A client's balance; zero for a known client without events.
    ///
    /// # Errors
    /// An unknown client, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, client_id))]
    pub async fn balance(
        &self,
        caller: &Caller,
        client_id: &str,
        window_days: Option<u32>,
    ) -> Result<BalanceView, LedgerError> {
        let settings = self.settings.current(&caller.tenant).await?;
        let window = window_days
            .filter(|d| *d > 0)
            .unwrap_or(settings.expiring_window_days)
            .min(3_660);
        let expiring = async {
            if settings.expiry_months == 0 {
                return Ok(Decimal::ZERO);
            }
            let until = self.clock.now() + Duration::days(i64::from(window));
            self.repo.expiring(&caller.tenant, client_id, until).await
        };
        // Read side by side: the latency of a balance read is one round trip.
        let (stored, expiring) =
            tokio::try_join!(self.repo.balance(&caller.tenant, client_id), expiring)?;
        let balance = if let Some(balance) = stored {
            balance
        } else {
            self.known_client(caller, client_id).await?;
            Balance {
                client_id: client_id.to_owned(),
                total: Decimal::ZERO,
                available: Decimal::ZERO,
                locked: Decimal::ZERO,
                reserved: Decimal::ZERO,
                last_event_id: None,
                updated_at: self.clock.now(),
            }
        };
        Ok(BalanceView {
            balance,
            expiring,
            expiring_within_days: window,
            points_scale: settings.points_scale,
        })
    }

    /// A page of a client's events, newest first, and where the next page starts.
    ///
    /// # Errors
    /// The database.
    pub async fn history(
        &self,
        caller: &Caller,
        query: HistoryQuery,
    ) -> Result<(Vec<LedgerEvent>, Option<i64>), LedgerError> {
        let page_size = query.limit;
        let mut events = self
            .repo
            .history(
                &caller.tenant,
                &HistoryQuery {
                    limit: page_size + 1,
                    ..query
                },
            )
            .await?;
        let next = if events.len() as u64 > page_size {
            events.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
            events.last().map(|e| e.event_id)
        } else {
            None
        };
        Ok((events, next))
    }

    /// One event of the tenant.
    ///
    /// # Errors
    /// An unknown event, or the database.
    pub async fn event(&self, caller: &Caller, event_id: i64) -> Result<LedgerEvent, LedgerError> {
        self.repo
            .event(&caller.tenant, event_id)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("event {event_id}")))
    }

    /// An event with its per-line calculation (earn and lose events have one).
    ///
    /// # Errors
    /// An unknown event, or the database.
    pub async fn event_detail(
        &self,
        caller: &Caller,
        event_id: i64,
    ) -> Result<(LedgerEvent, Vec<crate::domain::engine::LineCalculation>), LedgerError> {
        self.repo
            .event_detail(&caller.tenant, event_id)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("event {event_id}")))
    }

    /// Adds points or takes them away; a penalty may take the balance below zero.
    ///
    /// # Errors
    /// Bad fields, an unknown client, a reused request id, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %key.request_id))]
    pub async fn adjust(
        &self,
        caller: &Caller,
        key: &RequestKey,
        adjustment: &Adjustment,
    ) -> Result<LedgerEvent, LedgerError> {
        if let Some(event_id) = self.prior(caller, key).await? {
            return self.replayed(caller, &event_id).await;
        }
        let scale = self.points_scale(caller).await?;
        check_adjustment(adjustment, scale)?;
        self.known_client(caller, &adjustment.client_id).await?;
        let event = NewLedgerEvent {
            client_id: adjustment.client_id.clone(),
            event_type: EventType::Adjust,
            points: adjustment.points,
            occurred_at: self.clock.now(),
            document_id: None,
            request_id: Some(key.request_id.clone()),
            reason_code: Some(adjustment.reason_code.clone()),
            reason: Some(adjustment.reason.trim().to_owned()),
            actor_key_id: Some(caller.key_id.clone()),
            actor_user_id: Some(adjustment.user_id.trim().to_owned()).filter(|u| !u.is_empty()),
            related_event_id: None,
            redemption_id: None,
            reservation_id: None,
            stacking_mode: None,
            lot: None,
        };
        let record = IdempotencyRecord {
            request_id: key.request_id.clone(),
            operation: ADJUST.into(),
            request_hash: key.request_hash.clone(),
            result_ref: String::new(),
        };
        match self
            .repo
            .append(&caller.tenant, &event, Some(&record))
            .await
        {
            Ok(appended) => Ok(appended),
            Err(RepoError::Conflict(cause)) => match self.prior(caller, key).await? {
                Some(event_id) => self.replayed(caller, &event_id).await,
                None => Err(RepoError::Aborted(cause).into()),
            },
            Err(other) => Err(other.into()),
        }
    }

    /// Unlocks and expires the lots that are due, in every tenant. Two replicas may run it at
    /// once: each lot is unlocked once (a conditional update) and expired once (the Expire event
    /// is unique per lot). Returns how many lots were unlocked and expired.
    ///
    /// # Errors
    /// The database.
    pub async fn run_lot_jobs(&self, limit: u64) -> Result<(usize, usize), LedgerError> {
        let now = self.clock.now();
        let (mut unlocked, mut expired) = (0, 0);
        for lot in self.repo.due_lots(now, limit).await? {
            if lot.locked
                && lot.unlocks_at.is_some_and(|at| at <= now)
                && self.repo.unlock_lot(&lot.tenant, lot.event_id).await?
            {
                unlocked += 1;
            }
            let Some(expires_at) = lot
                .expires_at
                .filter(|at| *at <= now && !lot.remaining.is_zero())
            else {
                continue;
            };
            let event = NewLedgerEvent {
                client_id: lot.client_id.clone(),
                event_type: EventType::Expire,
                points: -lot.remaining,
                occurred_at: expires_at,
                document_id: None,
                request_id: None,
                reason_code: Some("EXPIRY".into()),
                reason: Some(format!("points of event {} expired", lot.event_id)),
                actor_key_id: None,
                actor_user_id: None,
                related_event_id: Some(lot.event_id),
                redemption_id: None,
                reservation_id: None,
                stacking_mode: None,
                lot: None,
            };
            match self.repo.append(&lot.tenant, &event, None).await {
                Ok(_) => expired += 1,
                // Expired by another run, or changed since it was read: the next run sees it.
                Err(RepoError::Conflict(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Ok((unlocked, expired))
    }

    async fn known_client(&self, caller: &Caller, client_id: &str) -> Result<(), LedgerError> {
        match self.directory.client(&caller.tenant, client_id).await? {
            Some(_) => Ok(()),
            None => Err(LedgerError::NotFound(format!("client {client_id}"))),
        }
    }

    async fn prior(
        &self,
        caller: &Caller,
        key: &RequestKey,
    ) -> Result<Option<String>, LedgerError> {
        Ok(prior_result(
            self.requests.as_ref(),
            &caller.tenant,
            &key.request_id,
            ADJUST,
            &key.request_hash,
        )
        .await?)
    }

    async fn replayed(&self, caller: &Caller, event_id: &str) -> Result<LedgerEvent, LedgerError> {
        let id = event_id
            .parse()
            .map_err(|_| RepoError::Corrupt(format!("recorded event id {event_id:?}")))?;
        self.event(caller, id).await
    }
}

/// The checks on an adjustment that need nothing stored.
fn check_adjustment(a: &Adjustment, points_scale: u32) -> Result<(), Invalid> {
    let mut found = Vec::new();
    if a.client_id.trim().is_empty() {
        found.push(FieldViolation::new("client_id", "is required"));
    }
    if a.points.is_zero() {
        found.push(FieldViolation::new("points", "must not be zero"));
    } else if a.points.normalize().scale() > points_scale {
        found.push(FieldViolation::new(
            "points",
            format!("must have at most {points_scale} decimals (the tenant's points scale)"),
        ));
    }
    let code_ok = (1..=32).contains(&a.reason_code.len())
        && a.reason_code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !code_ok {
        found.push(FieldViolation::new(
            "reason_code",
            "must be 1 to 32 of A-Z, 0-9 and _ (e.g. GOODWILL, PENALTY)",
        ));
    }
    if a.reason.trim().is_empty() || a.reason.len() > 500 {
        found.push(FieldViolation::new("reason", "must be 1 to 500 characters"));
    }
    if a.user_id.len() > 128 {
        found.push(FieldViolation::new(
            "user_id",
            "must be at most 128 characters",
        ));
    }
    Invalid::check(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adjustment(points: &str) -> Adjustment {
        Adjustment {
            client_id: "org:c".into(),
            points: points.parse().expect("decimal"),
            reason_code: "GOODWILL".into(),
            reason: "late delivery".into(),
            user_id: "admin-1".into(),
        }
    }

    #[test]
    fn an_adjustment_needs_points_within_the_scale_a_code_and_a_reason() {
        assert!(check_adjustment(&adjustment("-12.5"), 2).is_ok());
        let bad = Adjustment {
            reason_code: "goodwill".into(),
            reason: " ".into(),
            ..adjustment("0.001")
        };
        let Invalid(found) = check_adjustment(&bad, 2).expect_err("invalid");
        let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["points", "reason_code", "reason"]);
        assert!(check_adjustment(&adjustment("0"), 2).is_err());
    }
}
