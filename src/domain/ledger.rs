//! The ledger's invariants: events are never changed, and a client's maintained balance always
//! equals the sum of its events.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The kind of a ledger event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Earn,
    Use,
    Lose,
    Expire,
    Adjust,
    Refund,
}

impl NewLedgerEvent {
    /// A spend that must be covered by the client's available points: a Use that does not
    /// settle a reservation (those points were set aside when reserved).
    pub fn spends_available(&self) -> bool {
        self.event_type == EventType::Use && self.reservation_id.is_none()
    }
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earn => "EARN",
            Self::Use => "USE",
            Self::Lose => "LOSE",
            Self::Expire => "EXPIRE",
            Self::Adjust => "ADJUST",
            Self::Refund => "REFUND",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Earn,
            Self::Use,
            Self::Lose,
            Self::Expire,
            Self::Adjust,
            Self::Refund,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

/// When an earn lot unlocks and expires, from the tenant's lock and expiry settings (0 = off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotTerms {
    pub unlocks_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl LotTerms {
    pub fn new(earned_at: DateTime<Utc>, lock_days: u32, expiry_months: u32) -> Self {
        Self {
            unlocks_at: (lock_days > 0)
                .then(|| earned_at + chrono::Duration::days(i64::from(lock_days))),
            expires_at: (expiry_months > 0)
                .then(|| earned_at.checked_add_months(chrono::Months::new(expiry_months)))
                .flatten(),
        }
    }

    /// Locked when earned.
    pub fn locked(&self) -> bool {
        self.unlocks_at.is_some()
    }
}

/// An earn lot a job should look at: to unlock, to expire, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueLot {
    pub tenant: crate::domain::tenant::TenantId,
    /// The earn event that created it.
    pub event_id: i64,
    pub client_id: String,
    pub remaining: Decimal,
    pub locked: bool,
    pub unlocks_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An event to append. Points are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLedgerEvent {
    pub client_id: String,
    pub event_type: EventType,
    pub points: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub document_id: Option<String>,
    pub request_id: Option<String>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub actor_key_id: Option<String>,
    /// The person acting (an administrator, or a client's user in the front office).
    pub actor_user_id: Option<String>,
    /// The event this one follows or reverses (a Lose of an Earn).
    pub related_event_id: Option<i64>,
    /// Use and Refund events of a redemption.
    pub redemption_id: Option<String>,
    /// The Use event that commits a reservation: its points come out of the reserved part.
    pub reservation_id: Option<String>,
    /// Earn and Lose events: the stacking mode the lines were priced with.
    pub stacking_mode: Option<crate::domain::settings::StackingMode>,
    /// Earn events: the lot the points form. Lose and Expire events that name an earn event in
    /// `related_event_id` take their points from that event's lot first.
    pub lot: Option<LotTerms>,
}

/// An appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEvent {
    pub event_id: i64,
    pub event: NewLedgerEvent,
    /// The client's total after this event.
    pub balance_after: Decimal,
    pub recorded_at: DateTime<Utc>,
}

/// Which events of a client to list, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    pub client_id: String,
    /// All types when empty.
    pub types: Vec<EventType>,
    /// Recorded in `[from, to)`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Events older than this one (the previous page's last).
    pub before_event_id: Option<i64>,
    pub limit: u64,
}

/// A client's maintained balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub client_id: String,
    pub total: Decimal,
    pub available: Decimal,
    pub locked: Decimal,
    pub reserved: Decimal,
    pub last_event_id: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

/// What an audit of one client's ledger found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLedgerAudit {
    pub client_id: String,
    /// The maintained balance row's total (zero when there is no row).
    pub balance_total: Decimal,
    /// The sum of the client's events.
    pub events_sum: Decimal,
    /// `balance_after` of the newest event (zero when there is none).
    pub last_balance_after: Decimal,
    pub event_count: u64,
    pub balance_event_count: u64,
    /// The balance row's parts: `available + locked + reserved` must equal its total.
    pub balance_parts: Decimal,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerViolation {
    #[error("client {client_id}: balance total {balance_total} but events sum to {events_sum}")]
    BalanceDiffersFromEvents {
        client_id: String,
        balance_total: Decimal,
        events_sum: Decimal,
    },
    #[error(
        "client {client_id}: newest event says the balance is {last_balance_after}, events sum to {events_sum}"
    )]
    RunningBalanceBroken {
        client_id: String,
        last_balance_after: Decimal,
        events_sum: Decimal,
    },
    #[error("client {client_id}: the balance counts {counted} events, the ledger holds {held}")]
    EventCountDiffers {
        client_id: String,
        counted: u64,
        held: u64,
    },
    #[error(
        "client {client_id}: available + locked + reserved is {parts}, the total {balance_total}"
    )]
    PartsDifferFromTotal {
        client_id: String,
        parts: Decimal,
        balance_total: Decimal,
    },
}

impl ClientLedgerAudit {
    /// Every invariant this client's ledger breaks.
    pub fn violations(&self) -> Vec<LedgerViolation> {
        let mut found = Vec::new();
        if self.balance_total != self.events_sum {
            found.push(LedgerViolation::BalanceDiffersFromEvents {
                client_id: self.client_id.clone(),
                balance_total: self.balance_total,
                events_sum: self.events_sum,
            });
        }
        if self.last_balance_after != self.events_sum {
            found.push(LedgerViolation::RunningBalanceBroken {
                client_id: self.client_id.clone(),
                last_balance_after: self.last_balance_after,
                events_sum: self.events_sum,
            });
        }
        if self.balance_parts != self.balance_total {
            found.push(LedgerViolation::PartsDifferFromTotal {
                client_id: self.client_id.clone(),
                parts: self.balance_parts,
                balance_total: self.balance_total,
            });
        }
        if self.balance_event_count != self.event_count {
            found.push(LedgerViolation::EventCountDiffers {
                client_id: self.client_id.clone(),
                counted: self.balance_event_count,
                held: self.event_count,
            });
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lot_terms_follow_the_lock_days_and_expiry_months() {
        let at = DateTime::parse_from_rfc3339("2026-01-31T10:00:00Z")
            .expect("instant")
            .to_utc();
        let terms = LotTerms::new(at, 14, 1);
        assert_eq!(
            terms.unlocks_at.map(|t| t.to_rfc3339()),
            Some("2026-02-14T10:00:00+00:00".into())
        );
        assert_eq!(
            terms.expires_at.map(|t| t.to_rfc3339()),
            Some("2026-02-28T10:00:00+00:00".into()),
            "month ends clamp"
        );
        assert!(terms.locked());
        let off = LotTerms::new(at, 0, 0);
        assert_eq!(
            (off.unlocks_at, off.expires_at, off.locked()),
            (None, None, false)
        );
    }

    fn audit(total: i64, sum: i64, last: i64, counted: u64, held: u64) -> ClientLedgerAudit {
        ClientLedgerAudit {
            client_id: "org:a".into(),
            balance_total: total.into(),
            events_sum: sum.into(),
            last_balance_after: last.into(),
            event_count: held,
            balance_event_count: counted,
            balance_parts: total.into(),
        }
    }

    #[test]
    fn a_consistent_ledger_has_no_violations() {
        assert!(audit(10, 10, 10, 2, 2).violations().is_empty());
    }

    #[test]
    fn each_broken_invariant_is_reported() {
        assert_eq!(audit(11, 10, 10, 2, 2).violations().len(), 1);
        assert_eq!(audit(10, 10, 9, 2, 2).violations().len(), 1);
        assert_eq!(audit(10, 10, 10, 3, 2).violations().len(), 1);
        assert_eq!(audit(1, 10, 2, 3, 2).violations().len(), 3);
        let split_wrong = ClientLedgerAudit {
            balance_parts: 9.into(),
            ..audit(10, 10, 10, 2, 2)
        };
        assert_eq!(
            split_wrong.violations().len(),
            1,
            "available + locked + reserved must be the total"
        );
    }
}
