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
    /// Earn and Lose events: the stacking mode the lines were priced with.
    pub stacking_mode: Option<crate::domain::settings::StackingMode>,
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

    fn audit(total: i64, sum: i64, last: i64, counted: u64, held: u64) -> ClientLedgerAudit {
        ClientLedgerAudit {
            client_id: "org:a".into(),
            balance_total: total.into(),
            events_sum: sum.into(),
            last_balance_after: last.into(),
            event_count: held,
            balance_event_count: counted,
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
    }
}
