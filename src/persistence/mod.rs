//! The only SeaORM code: repository traits over domain types, their SeaORM implementations, the
//! generated entities and the classification of database errors.
//!
//! Every method takes the tenant and every query filters by it, so one tenant's call cannot reach
//! another tenant's rows. A method that must be atomic owns its transaction.
//!
//! `entities/` is generated from a migrated PostgreSQL database and never edited by hand:
//! `sea-orm-cli generate entity -u postgres://postgres@127.0.0.1:5432/DB -o src/persistence/entities
//! --ignore-tables seaql_migrations --with-copy-enums`.

pub mod access;
pub mod agreements;
pub mod cached;
pub mod catalog;
pub mod coupons;
pub mod db;
pub mod directory;
pub mod documents;
pub mod entities;
pub mod error;
pub mod event_lines;
pub mod few_statements;
pub mod group_commit;
pub mod idempotency;
pub mod ledger;
pub mod redemptions;
pub mod reservations;
pub mod rules;
pub mod settings;
pub mod sqlite_script;
pub mod sync;

/// Values per IN list: far below SQLite's limit of 32,766 bound values.
pub(crate) const IN_LIST_CHUNK: usize = 1_000;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use crate::domain::access::ApiKeyRecord;
use crate::domain::consent::{AgreementVersion, ConsentEvent, ConsentOutcome, EligibilityProbe};
use crate::domain::coupons::Coupon;
use crate::domain::directory::{
    CategoryRecord, ClientRecord, OrderRecord, ProductRecord, UserRecord,
};
use crate::domain::documents::DocumentRecord;
use crate::domain::engine::LineCalculation;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::intervals::Interval;
use crate::domain::ledger::{
    Balance, ClientLedgerAudit, DueLot, HistoryQuery, LedgerEvent, NewLedgerEvent,
};
use crate::domain::redemption::{OutboxMessage, Redemption, RedemptionStatus, Reservation};
use crate::domain::rules::{EffectiveDated, MultiplierRule, ProductFacts, RuleTarget, StoredRule};
use crate::domain::settings::TenantSettings;
use crate::domain::tenant::TenantId;
pub use error::RepoError;

/// Tenants and their API keys.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait AccessRepository: Send + Sync {
    /// Creates the tenant if it does not exist.
    async fn ensure_tenant(&self, tenant: &TenantId, name: &str) -> Result<(), RepoError>;
    /// Whether the tenant exists.
    async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, RepoError>;
    /// Stores a key; a key with the same hash is replaced (same tenant only).
    async fn store_key(&self, key: &ApiKeyRecord) -> Result<(), RepoError>;
    /// The key with this hash, whatever its tenant.
    async fn find_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, RepoError>;
}

/// The tenant's settings, an append-only history of revisions.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait SettingsRepository: Send + Sync {
    /// The settings in force; the defaults (revision 0) when the tenant never changed any.
    async fn current(&self, tenant: &TenantId) -> Result<TenantSettings, RepoError>;
    /// One revision, if it exists.
    async fn revision(
        &self,
        tenant: &TenantId,
        revision: u32,
    ) -> Result<Option<TenantSettings>, RepoError>;
    /// Stores `settings` as its revision and the call's idempotency record, atomically.
    /// `Conflict` when that revision exists already (a concurrent change won) or the request id
    /// was used.
    async fn save(
        &self,
        tenant: &TenantId,
        settings: &TenantSettings,
        request: &IdempotencyRecord,
        changed_by_key_id: &str,
    ) -> Result<(), RepoError>;
}

/// What the first call with a request id left behind.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait IdempotencyRepository: Send + Sync {
    async fn find(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>, RepoError>;
}

/// The append-only ledger and the maintained balances.
// mockall's generated expectations take `&Option<&T>`.
#[cfg_attr(test, allow(clippy::ref_option_ref))]
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait LedgerRepository: Send + Sync {
    /// Appends an event and updates the client's balance in one transaction, with the request's
    /// idempotency record (its `result_ref` becomes the event id) when given. `Conflict` when the
    /// document, request id or redemption already has its event.
    async fn append<'r>(
        &self,
        tenant: &TenantId,
        event: &NewLedgerEvent,
        request: Option<&'r IdempotencyRecord>,
    ) -> Result<LedgerEvent, RepoError>;
    /// One event.
    async fn event(
        &self,
        tenant: &TenantId,
        event_id: i64,
    ) -> Result<Option<LedgerEvent>, RepoError>;
    /// The client's balance row, if it has one.
    async fn balance(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<Option<Balance>, RepoError>;
    /// An event with its per-line calculation (empty for events without lines), each line
    /// carrying the event's stacking mode.
    async fn event_detail(
        &self,
        tenant: &TenantId,
        event_id: i64,
    ) -> Result<Option<(LedgerEvent, Vec<LineCalculation>)>, RepoError>;
    /// A client's events, newest first, filtered.
    async fn history(
        &self,
        tenant: &TenantId,
        query: &HistoryQuery,
    ) -> Result<Vec<LedgerEvent>, RepoError>;
    /// Lots of every tenant due to unlock (locked, unlock time passed) or expire (points left,
    /// expiry passed) at `now`.
    async fn due_lots(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<DueLot>, RepoError>;
    /// Unlocks a lot: its remaining points move from locked to available. `false` when another
    /// run unlocked it first.
    async fn unlock_lot(&self, tenant: &TenantId, event_id: i64) -> Result<bool, RepoError>;
    /// Points of the client's lots that expire by `until`.
    async fn expiring(
        &self,
        tenant: &TenantId,
        client_id: &str,
        until: DateTime<Utc>,
    ) -> Result<Decimal, RepoError>;
    /// Balance rows against event sums, for every client of the tenant.
    async fn audit(&self, tenant: &TenantId) -> Result<Vec<ClientLedgerAudit>, RepoError>;
}

/// Clients and users as synchronized from ONe.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait DirectoryRepository: Send + Sync {
    /// Creates or replaces a client with its segment memberships; recomputes its eligibility.
    async fn save_client(&self, tenant: &TenantId, client: &ClientRecord) -> Result<(), RepoError>;
    /// Creates or replaces a user; recomputes the eligibility of its client (and of its former
    /// client when it moved).
    async fn save_user(&self, tenant: &TenantId, user: &UserRecord) -> Result<(), RepoError>;
    async fn client(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<Option<ClientRecord>, RepoError>;
    async fn user(&self, tenant: &TenantId, user_id: &str)
    -> Result<Option<UserRecord>, RepoError>;
}

/// Consent events, agreement versions and the derived eligibility intervals.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait AgreementRepository: Send + Sync {
    /// Records events (of known users; `client_id` filled in), recomputes the affected clients'
    /// eligibility and writes the request's idempotency record, atomically. `Conflict` when an
    /// event id was recorded with other content, or the request id is taken.
    async fn record_consents(
        &self,
        tenant: &TenantId,
        events: &[ConsentEvent],
        request: &IdempotencyRecord,
    ) -> Result<Vec<ConsentOutcome>, RepoError>;
    /// Replaces `user_id` with `pseudonym` on the user, its consent events, redemptions,
    /// reservations and the ledger events it caused, with the request's record, atomically.
    /// `false`: no such user (nothing written).
    async fn anonymize_user(
        &self,
        tenant: &TenantId,
        user_id: &str,
        pseudonym: &str,
        request: &IdempotencyRecord,
    ) -> Result<bool, RepoError>;
    /// Stores a version and recomputes every client with consents of its type, atomically.
    /// `Conflict` when the version number exists, or the request id is taken.
    async fn publish_version(
        &self,
        tenant: &TenantId,
        version: &AgreementVersion,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError>;
    /// The versions of a declaration type, oldest first.
    async fn versions(
        &self,
        tenant: &TenantId,
        declaration_type: &str,
    ) -> Result<Vec<AgreementVersion>, RepoError>;
    /// All of a user's events of a declaration type.
    async fn user_events(
        &self,
        tenant: &TenantId,
        user_id: &str,
        declaration_type: &str,
    ) -> Result<Vec<ConsentEvent>, RepoError>;
    /// A user's events of every type, newest first, before a (time, event id) position.
    async fn user_history_page(
        &self,
        tenant: &TenantId,
        user_id: &str,
        before: Option<(DateTime<Utc>, String)>,
        limit: u64,
    ) -> Result<Vec<ConsentEvent>, RepoError>;
    /// The client's eligibility intervals that overlap `[from, to]`, sorted.
    async fn eligibility(
        &self,
        tenant: &TenantId,
        declaration_type: &str,
        client_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Interval>, RepoError>;
    /// Whether the client was eligible, under the probe's declaration type, right up to its
    /// instant (one index probe).
    async fn holds_until(
        &self,
        tenant: &TenantId,
        client_id: &str,
        probe: &EligibilityProbe,
    ) -> Result<bool, RepoError>;
}

/// Base points, segment rates and multiplier rules.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait RulesRepository: Send + Sync {
    /// Sets base points from a day on for many products, with the request's record, atomically.
    async fn set_base_points(
        &self,
        tenant: &TenantId,
        effective_from: NaiveDate,
        entries: &[(String, Decimal)],
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError>;
    /// Every base-points entry of these products.
    async fn base_points(
        &self,
        tenant: &TenantId,
        product_ids: &[String],
    ) -> Result<HashMap<String, EffectiveDated>, RepoError>;
    /// Products with base points after `after`, in id order, with their entries.
    async fn base_points_page(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        products: u64,
    ) -> Result<Vec<(String, EffectiveDated)>, RepoError>;
    /// Stores a rule version: a new one, or a draft edited in place (`Conflict` if it is no
    /// longer a draft), with the request's record, atomically.
    async fn save_rule(
        &self,
        tenant: &TenantId,
        rule: &StoredRule,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError>;
    /// `publish: Some(v)` publishes draft v and archives the version in force (`Conflict` when v
    /// is not a draft); `None` archives every version.
    async fn change_status(
        &self,
        tenant: &TenantId,
        rule_id: &str,
        publish: Option<u32>,
        at: DateTime<Utc>,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError>;
    /// Every version of a rule, oldest first.
    async fn rule_versions(
        &self,
        tenant: &TenantId,
        rule_id: &str,
    ) -> Result<Vec<StoredRule>, RepoError>;
    /// Rules after `after` in id order, each with all its versions.
    async fn rules_page(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        rules: u64,
    ) -> Result<Vec<Vec<StoredRule>>, RepoError>;
    /// Every published rule targeting any of `targets`, whatever its window: a line's breakdown
    /// lists the rules outside their window too, with the reason.
    async fn published_rules_for(
        &self,
        tenant: &TenantId,
        targets: &[RuleTarget],
    ) -> Result<Vec<MultiplierRule>, RepoError>;
    /// Sets a segment's rate from a day on, with the request's record, atomically.
    async fn set_segment_rate(
        &self,
        tenant: &TenantId,
        segment_id: &str,
        effective_from: NaiveDate,
        rate: Decimal,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError>;
    /// The rates of these segments (all when `None`).
    async fn segment_rates(
        &self,
        tenant: &TenantId,
        segment_ids: Option<Vec<String>>,
    ) -> Result<HashMap<String, EffectiveDated>, RepoError>;
    /// A client as an earn prices it, in one read (one snapshot): its row, the segments it
    /// belongs to with the rates of those that have any, the tenant's pricing revision and,
    /// when asked, whether its eligibility reaches the probe's instant (as
    /// [`AgreementRepository::holds_until`] answers it). `None` for a client not known.
    async fn priced_client(
        &self,
        tenant: &TenantId,
        client_id: &str,
        eligibility: Option<EligibilityProbe>,
    ) -> Result<Option<ClientPricing>, RepoError>;
    /// The revision of the tenant's pricing inputs (products, their categories and labels, base
    /// points, multiplier rules): raised by the database in every transaction that changes any
    /// of them; 0 before the first change.
    async fn pricing_revision(&self, tenant: &TenantId) -> Result<i64, RepoError>;
}

/// The catalogue and the orders, as synchronized from ONe.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait CatalogRepository: Send + Sync {
    /// Creates or replaces a product with its labels.
    async fn save_product(
        &self,
        tenant: &TenantId,
        product: &ProductRecord,
    ) -> Result<(), RepoError>;
    /// Creates or replaces a category and keeps every category's ancestors current.
    async fn save_category(
        &self,
        tenant: &TenantId,
        category: &CategoryRecord,
    ) -> Result<(), RepoError>;
    /// Creates or replaces an order.
    async fn save_order(&self, tenant: &TenantId, order: &OrderRecord) -> Result<(), RepoError>;
    /// What the rules need of these products (the known ones).
    async fn product_facts(
        &self,
        tenant: &TenantId,
        product_ids: &[String],
    ) -> Result<HashMap<String, ProductFacts>, RepoError>;
    /// These orders (the known ones), by number.
    async fn orders(
        &self,
        tenant: &TenantId,
        order_numbers: &[String],
    ) -> Result<HashMap<String, OrderRecord>, RepoError>;
}

/// Invoices and corrections, received (and decided, when they can be) then completed once.
// mockall's generated expectations take `&Option<&T>`.
#[cfg_attr(test, allow(clippy::ref_option_ref))]
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait DocumentRepository: Send + Sync {
    /// Stores a newly arrived document with its lines and, when given, the decision taken on it
    /// (its event with lines and the balance), in one transaction. When the document id is
    /// stored already, stores nothing and returns the stored one.
    async fn receive<'d>(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
        decision: Option<&'d documents::Completion>,
    ) -> Result<documents::Received, RepoError>;
    async fn find(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<DocumentRecord>, RepoError>;
    /// Decides a stored document (or sets it waiting): its event with lines and the balance,
    /// and its status, in one transaction. Returns the record as it now stands. `Conflict` when
    /// it was decided already.
    async fn complete(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
        completion: &documents::Completion,
    ) -> Result<DocumentRecord, RepoError>;
    /// Documents of every tenant that a job may take now.
    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(TenantId, String)>, RepoError>;
}

/// The reward catalogue and the ONe coupon pools.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait CouponRepository: Send + Sync {
    /// Creates a coupon (`previous_revision: None`) or replaces the revision it was changed from,
    /// with the request's record, atomically. `Conflict`: the name or the request id is taken;
    /// `Aborted`: the coupon changed meanwhile.
    async fn save(
        &self,
        tenant: &TenantId,
        coupon: &Coupon,
        previous_revision: Option<u32>,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError>;
    async fn get(&self, tenant: &TenantId, coupon_id: &str) -> Result<Option<Coupon>, RepoError>;
    /// The client and the coupon a redemption checks, each with its segments, in one read:
    /// `None` when the client is not known, no coupon when the coupon is not. Each answers as
    /// [`DirectoryRepository::client`] and [`Self::get`] would.
    async fn with_client(
        &self,
        tenant: &TenantId,
        coupon_id: &str,
        client_id: &str,
    ) -> Result<Option<ClientAndCoupon>, RepoError>;
    /// Whether another coupon has this name.
    async fn name_taken(
        &self,
        tenant: &TenantId,
        name: &str,
        except: &str,
    ) -> Result<bool, RepoError>;
    /// Coupons after `after` in id order.
    async fn page(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        limit: u64,
    ) -> Result<Vec<Coupon>, RepoError>;
    /// How many times the client redeemed each coupon (failed and cancelled redemptions do not
    /// count).
    async fn redeemed_by_client(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<HashMap<String, u32>, RepoError>;
    /// Creates or replaces a pool (synchronization).
    async fn save_pool(
        &self,
        tenant: &TenantId,
        pool: &coupons::CouponPoolRecord,
    ) -> Result<(), RepoError>;
    async fn pool(
        &self,
        tenant: &TenantId,
        pool_id: &str,
    ) -> Result<Option<coupons::CouponPoolRecord>, RepoError>;
    /// Pools after `after` in id order.
    async fn pools(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        limit: u64,
    ) -> Result<Vec<coupons::CouponPoolRecord>, RepoError>;
}

/// A client as an earn prices it ([`RulesRepository::priced_client`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPricing {
    /// The client, with the segments it belongs to.
    pub client: ClientRecord,
    /// The rates of its segments that have any.
    pub segment_rates: HashMap<String, EffectiveDated>,
    /// The revisions this read describes.
    pub basis: EarnBasis,
    /// Whether the client counted as agreed at the probe asked for; `None` when none was.
    pub eligible: Option<bool>,
}

/// What an earn was priced from, as revisions read in one snapshot with the client: the
/// tenant's pricing revision ([`RulesRepository::pricing_revision`]) and the client's own
/// (raised at every change to its row, its segments or its eligibility; migration
/// `m20261206_000017_earn_basis`). An earn priced without reading carries it, and its write
/// checks it under its locks: a basis that no longer holds refuses the earn
/// ([`RepoError::Stale`]) and writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EarnBasis {
    pub pricing_revision: i64,
    pub client_revision: i64,
}

/// A client and a coupon as a redemption reads them ([`CouponRepository::with_client`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAndCoupon {
    /// The client, with the segments it belongs to.
    pub client: ClientRecord,
    /// The coupon, with the segments it is restricted to; `None` when it is not known.
    pub coupon: Option<Coupon>,
}

/// What one redemption writes, all in one transaction.
#[derive(Debug, Clone)]
pub struct RedeemPlan {
    /// The new redemption, PENDING, without its Use event id yet.
    pub redemption: Redemption,
    /// The coupon's stock: its redeemed count is raised only while below it.
    pub stock: Option<u32>,
    /// How many live redemptions of the coupon the client may hold.
    pub per_client_limit: Option<u32>,
    /// The Use event; refused unless the client's available points cover it.
    pub use_event: NewLedgerEvent,
    /// What the outbox must deliver for it.
    pub delivery: crate::domain::redemption::Delivery,
    /// The coupon's revision the plan was made from: the write refuses the plan
    /// ([`RepoError::Stale`]) if the coupon is at another one. `None`: not checked.
    pub coupon_revision: Option<u32>,
    /// The plan was made without reading the client or the user it names: the write refuses
    /// it ([`RepoError::Stale`]) if the client is not known, or if the redemption names a user
    /// that is not an active user of the client.
    pub client_unread: bool,
}

/// Giving a redemption's points back: an administrator's cancellation, or ONe's rejection of its
/// code.
#[derive(Debug, Clone)]
pub struct RefundPlan {
    pub redemption_id: String,
    /// `Cancelled` or `Failed`.
    pub status: RedemptionStatus,
    pub reason: String,
    /// The Refund event.
    pub refund: NewLedgerEvent,
    /// The outbox message whose rejection this is, with the dispatcher's lease.
    pub rejected_message: Option<(i64, String)>,
}

/// Which redemptions to list.
#[derive(Debug, Clone, Default)]
pub struct RedemptionFilter {
    pub client_id: Option<String>,
    pub coupon_id: Option<String>,
    pub status: Option<RedemptionStatus>,
}

/// Redemptions, and the outbox that delivers their codes and e-mails.
// mockall's generated expectations take `&Option<&T>`.
#[cfg_attr(test, allow(clippy::ref_option_ref))]
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait RedemptionRepository: Send + Sync {
    /// Records the request, spends the points (a Use event; `Precondition` when the available
    /// points, the stock or the client's limit do not allow it), stores the redemption and its
    /// outbox message, atomically. `Conflict`: the request id or the code is taken.
    async fn redeem(
        &self,
        tenant: &TenantId,
        plan: &RedeemPlan,
        request: &IdempotencyRecord,
    ) -> Result<Redemption, RepoError>;
    async fn get(
        &self,
        tenant: &TenantId,
        redemption_id: &str,
    ) -> Result<Option<Redemption>, RepoError>;
    /// Newest first, before `before` (a redemption id).
    async fn page(
        &self,
        tenant: &TenantId,
        filter: &RedemptionFilter,
        before: Option<String>,
        limit: u64,
    ) -> Result<Vec<Redemption>, RepoError>;
    /// Marks a live redemption cancelled or failed, refunds it and gives the coupon's count
    /// back, atomically; a pending delivery is withdrawn. `Precondition`: it is no longer live.
    async fn refund<'r>(
        &self,
        tenant: &TenantId,
        plan: &RefundPlan,
        request: Option<&'r IdempotencyRecord>,
    ) -> Result<Redemption, RepoError>;
    /// Leases up to `limit` due messages of any tenant to `owner` until `now + lease`. A message
    /// leased by another owner whose lease has not run out is skipped.
    async fn lease_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u64,
    ) -> Result<Vec<OutboxMessage>, RepoError>;
    /// Marks a leased message delivered and its redemption ISSUED. `false`: the lease was lost
    /// or the message withdrawn meanwhile.
    async fn delivered(
        &self,
        message: &OutboxMessage,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, RepoError>;
    /// Gives a leased message back for another attempt at `next_attempt_at`.
    async fn retry_delivery(
        &self,
        message: &OutboxMessage,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), RepoError>;
}

/// Points held for baskets.
// mockall's generated expectations take `&Option<&T>`.
#[cfg_attr(test, allow(clippy::ref_option_ref))]
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait ReservationRepository: Send + Sync {
    /// Records the request and moves the points from available to reserved (`Precondition`
    /// when they are not available), atomically. `Conflict`: the request id is taken.
    async fn reserve(
        &self,
        tenant: &TenantId,
        reservation: &Reservation,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError>;
    async fn get(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
    ) -> Result<Option<Reservation>, RepoError>;
    /// Turns a held, unexpired reservation into the Use event `spend`, atomically.
    /// `Precondition`: it is not held any more, or its time ran out.
    async fn commit(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
        order_number: &str,
        spend: &NewLedgerEvent,
        request: &IdempotencyRecord,
    ) -> Result<Reservation, RepoError>;
    /// Gives a held reservation's points back (`Released`, or `Expired` by the job).
    /// `Precondition`: it is not held any more.
    async fn release<'r>(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
        status: crate::domain::redemption::ReservationStatus,
        request: Option<&'r IdempotencyRecord>,
    ) -> Result<Reservation, RepoError>;
    /// Held reservations of any tenant whose time ran out by `now`.
    async fn expired(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(TenantId, String)>, RepoError>;
}

/// The synchronization cursors, and storing what a read of a stream brought.
// mockall's generated expectations take `&Option<&T>`.
#[cfg_attr(test, allow(clippy::ref_option_ref))]
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait SyncRepository: Send + Sync {
    /// Where the stream stands (a fresh state when it was never read).
    async fn state(
        &self,
        tenant: &TenantId,
        stream: crate::domain::sync::SyncStream,
    ) -> Result<crate::domain::sync::StreamState, RepoError>;
    /// Stores `changes` and moves the cursor from `from_cursor` to `next_cursor` (keeps it when
    /// `None`), atomically; returns how many changes wrote something. `Aborted`: the cursor is
    /// no longer at `from_cursor` (another replica stored this read).
    async fn apply<'c>(
        &self,
        tenant: &TenantId,
        stream: crate::domain::sync::SyncStream,
        from_cursor: &str,
        changes: &[crate::domain::sync::SyncChange],
        next_cursor: Option<&'c str>,
        now: DateTime<Utc>,
    ) -> Result<usize, RepoError>;
    /// Records a failed attempt; the cursor does not move.
    async fn record_failure(
        &self,
        tenant: &TenantId,
        stream: crate::domain::sync::SyncStream,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError>;
    /// Asks for (or clears) a full resynchronization of the stream.
    async fn set_full_resync(
        &self,
        tenant: &TenantId,
        stream: crate::domain::sync::SyncStream,
        requested: bool,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError>;
    /// Every tenant.
    async fn tenants(&self) -> Result<Vec<TenantId>, RepoError>;
}

/// Selects every column of `E`, each as `prefix` and its name, as SeaORM's own joined selects
/// do: a row of several tables is then read with `E::Model::from_query_result(row, prefix)`.
pub(crate) fn select_prefixed<E: sea_orm::EntityTrait + Default>(
    query: &mut sea_orm::sea_query::SelectStatement,
    prefix: &str,
) {
    use sea_orm::{ColumnTrait, IdenStatic, Iterable};
    for column in E::Column::iter() {
        query.expr_as(
            column.select_as(sea_orm::sea_query::Expr::col((E::default(), column))),
            sea_orm::sea_query::Alias::new(format!("{prefix}{}", column.as_str())),
        );
    }
}

/// A row read with its children in one left join (the row once per child, or once with none):
/// the row and its children, or `None` when there is no row.
pub(crate) fn with_children<P, C>(rows: Vec<(P, Option<C>)>) -> Option<(P, Vec<C>)> {
    let mut rows = rows.into_iter();
    let (parent, first) = rows.next()?;
    let children = first
        .into_iter()
        .chain(rows.filter_map(|(_, child)| child))
        .collect();
    Some((parent, children))
}
