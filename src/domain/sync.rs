//! Synchronization with ONe core (DOMAIN.md §7): the streams, what one read of a stream brings,
//! and where each stream stands.

use chrono::{DateTime, Utc};

use crate::domain::consent::{AgreementVersion, ConsentEvent};
use crate::domain::directory::{
    CategoryRecord, ClientRecord, OrderRecord, ProductRecord, UserRecord,
};
use crate::domain::documents::Document;

/// A change feed of ONe, one cursor per (tenant, stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncStream {
    Products,
    Clients,
    Users,
    Segments,
    Orders,
    Documents,
    Declarations,
    CouponPools,
}

impl SyncStream {
    /// Every stream, in the order a full run takes them: what documents refer to first.
    pub const ALL: [Self; 8] = [
        Self::Segments,
        Self::Products,
        Self::Clients,
        Self::Users,
        Self::Orders,
        Self::Declarations,
        Self::CouponPools,
        Self::Documents,
    ];
}

names!(SyncStream {
    Products => "PRODUCTS",
    Clients => "CLIENTS",
    Users => "USERS",
    Segments => "SEGMENTS",
    Orders => "ORDERS",
    Documents => "DOCUMENTS",
    Declarations => "DECLARATIONS",
    CouponPools => "COUPON_POOLS",
});

/// A segment of clients, as ONe defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    pub segment_id: String,
    pub name: String,
    pub description: String,
    pub removed: bool,
    pub updated_at: DateTime<Utc>,
}

/// A coupon pool of the ONe promotions service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponPoolRecord {
    pub pool_id: String,
    pub name: String,
    pub campaign_id: String,
    pub campaign_name: String,
    pub active: bool,
}

/// One thing read from ONe, to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncChange {
    Product(ProductRecord),
    Category(CategoryRecord),
    Client(ClientRecord),
    User(UserRecord),
    Segment(SegmentRecord),
    Order(OrderRecord),
    /// A new invoice or correction, to earn from.
    Document(Document),
    Consent(ConsentEvent),
    Version(AgreementVersion),
    Pool(CouponPoolRecord),
}

/// One read of a change feed: the changes after the cursor, and the cursor to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncBatch {
    pub changes: Vec<SyncChange>,
    pub next_cursor: String,
}

/// One page of a full list (a full resynchronization).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    pub changes: Vec<SyncChange>,
    pub more: bool,
}

/// Where a stream of a tenant stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    pub stream: SyncStream,
    /// The ONe `nextId` to continue from; empty at the beginning.
    pub cursor: String,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub items_synced: u64,
    pub full_resync_requested: bool,
}

impl StreamState {
    /// A stream never read.
    pub fn new(stream: SyncStream) -> Self {
        Self {
            stream,
            cursor: String::new(),
            last_success_at: None,
            last_attempt_at: None,
            last_error: None,
            items_synced: 0,
            full_resync_requested: false,
        }
    }

    /// Seconds since the last success (since `never` when there was none).
    pub fn lag_seconds(&self, now: DateTime<Utc>, never: DateTime<Utc>) -> u64 {
        let since = self.last_success_at.unwrap_or(never);
        u64::try_from((now - since).num_seconds()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_round_trip_and_documents_come_last() {
        for stream in SyncStream::ALL {
            assert_eq!(SyncStream::parse(stream.as_str()), Some(stream));
        }
        assert_eq!(SyncStream::ALL.last(), Some(&SyncStream::Documents));
        assert_eq!(SyncStream::parse("NOPE"), None);
    }

    #[test]
    fn lag_counts_from_the_last_success() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).expect("t").to_utc();
        let mut state = StreamState::new(SyncStream::Clients);
        let now = at("2026-03-20T12:00:00Z");
        assert_eq!(state.lag_seconds(now, at("2026-03-20T11:00:00Z")), 3600);
        state.last_success_at = Some(at("2026-03-20T11:59:30Z"));
        assert_eq!(state.lag_seconds(now, at("2026-03-20T11:00:00Z")), 30);
    }
}
