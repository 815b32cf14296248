//! Earning points from documents (DOMAIN.md §3): invoices earn once their sale day has closed
//! and the client counted as agreed that day; quantitative corrections lose what the returned
//! quantity earned; previews price a cart without writing anything. Every document goes through
//! one path, whether pushed through the API, imported or synchronized.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use rust_decimal::Decimal;

use crate::domain::access::Caller;
use crate::domain::calendar::{day_of, end_of_day, start_of_day};
use crate::domain::clock::Clock;
use crate::domain::consent::EligibilityProbe;
use crate::domain::directory::OrderRecord;
use crate::domain::documents::{
    CorrectionType, Document, DocumentKind, DocumentRecord, DocumentSource, DocumentStatus,
    NonEarningReason, calculation_shortfall, correction_losses,
};
use crate::domain::engine::LineCalculation;
use crate::domain::engine::{CalculationPolicy, DocumentCalculation, LineInput, calculate};
use crate::domain::idempotency::valid_request_id;
use crate::domain::ledger::{EventType, LotTerms, NewLedgerEvent};
use crate::domain::rules::Channel;
use crate::domain::settings::TenantSettings;
use crate::domain::tenant::TenantId;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::persistence::documents::{Completion, Received};
use crate::persistence::{CatalogRepository, DocumentRepository, LedgerRepository};
use crate::persistence::{EarnBasis, RepoError, SettingsRepository};
use crate::service::pricing::{PricedClient, Pricing};

/// Lines per preview.
pub const MAX_PREVIEW_LINES: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum EarnError {
    /// → `INVALID_ARGUMENT`
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// → `NOT_FOUND`
    #[error("{0} not found")]
    NotFound(String),
    /// A document id delivered again with other content. → `ALREADY_EXISTS`
    #[error("document {0} was delivered before with other content")]
    DocumentChanged(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// A product and quantity to preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewItem {
    pub product_id: String,
    pub quantity: Decimal,
    pub channel: Channel,
}

/// A preview: the calculation, the day whose rules applied and the scale to show points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub calculation: DocumentCalculation,
    pub day: NaiveDate,
    pub points_scale: u32,
}

/// How long a document waiting for data (its client, or the invoice a correction corrects)
/// waits before the job looks again.
pub const RETRY_WAITING_AFTER: Duration = Duration::minutes(5);

/// What earning reads and writes.
pub struct EarnDependencies {
    pub pricing: Pricing,
    pub documents: Arc<dyn DocumentRepository>,
    pub catalog: Arc<dyn CatalogRepository>,
    pub ledger: Arc<dyn LedgerRepository>,
    pub settings: Arc<dyn SettingsRepository>,
    pub clock: Arc<dyn Clock>,
}

/// A processed (or waiting) document with its calculation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub record: DocumentRecord,
    pub lines: Vec<LineCalculation>,
    pub stacking_mode: Option<crate::domain::settings::StackingMode>,
    /// A correction: the event of the invoice it corrects.
    pub corrected_event_id: Option<i64>,
    pub points_scale: u32,
}

/// Whether an invoice's client may be priced from what an earlier read of it found
/// ([`Pricing::as_seen`]), or is read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    AsSeen,
    Always,
}

pub struct EarnService {
    pricing: Pricing,
    documents: Arc<dyn DocumentRepository>,
    catalog: Arc<dyn CatalogRepository>,
    ledger: Arc<dyn LedgerRepository>,
    settings: Arc<dyn SettingsRepository>,
    clock: Arc<dyn Clock>,
}

impl EarnService {
    pub fn new(deps: EarnDependencies) -> Self {
        let EarnDependencies {
            pricing,
            documents,
            catalog,
            ledger,
            settings,
            clock,
        } = deps;
        Self {
            pricing,
            documents,
            catalog,
            ledger,
            settings,
            clock,
        }
    }

    /// Receives an invoice or a correction and decides it as far as it can now. A document
    /// delivered again answers with what the first delivery led to.
    ///
    /// # Errors
    /// A bad request id or document, the document id delivered with other content, or the
    /// database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, document_id = %document.document_id))]
    pub async fn receive(
        &self,
        caller: &Caller,
        request_id: &str,
        document: Document,
        source: DocumentSource,
    ) -> Result<(DocumentRecord, bool), EarnError> {
        if !valid_request_id(request_id) {
            return Err(Invalid::field(
                "request_id",
                "must be 1 to 128 printable ASCII characters",
            )
            .into());
        }
        let prefix = match document.kind {
            DocumentKind::Invoice => "invoice.",
            DocumentKind::Correction => "correction.",
        };
        document.check(prefix)?;
        let now = self.clock.now();
        let record = DocumentRecord {
            document,
            source,
            status: DocumentStatus::Received,
            non_earning_reason: None,
            points: Decimal::ZERO,
            event_id: None,
            received_at: now,
            processed_at: None,
            earn_after: Some(now),
        };
        // Decided before it is stored, so that a new document is stored and decided in one
        // transaction. A decision that fails leaves the document stored as received: the job
        // decides it later, and the caller hears why not now.
        let tenant = &caller.tenant;
        let mut decision = self.decide(tenant, &record, Read::AsSeen).await;
        // Priced without a read, an earn alone is written with the basis checked; anything else
        // it led to is decided again from what is read now.
        if matches!(&decision, Ok(c) if c.basis.is_some() && c.event.is_none()) {
            decision = self.decide(tenant, &record, Read::Always).await;
        }
        let mut received = self
            .documents
            .receive(tenant, &record, decision.as_ref().ok())
            .await;
        if let Err(RepoError::Stale(why)) = &received {
            tracing::debug!(%why, "the earn's basis moved; read and decided again");
            self.pricing.forget(tenant, &record.document.client_id);
            decision = self.decide(tenant, &record, Read::Always).await;
            received = self
                .documents
                .receive(tenant, &record, decision.as_ref().ok())
                .await;
        }
        match received? {
            Received::Stored(stored) => decision.map(|_| (stored, false)),
            Received::Before(stored) if stored.document != record.document => Err(
                EarnError::DocumentChanged(record.document.document_id.clone()),
            ),
            Received::Before(stored) => Ok((self.process_record(tenant, stored).await?, true)),
        }
    }

    /// Decides a stored document if it is due; returns where it stands. Safe to run from several
    /// places at once: one decision wins, the others read it.
    ///
    /// # Errors
    /// An unknown document, or the database.
    pub async fn process(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<DocumentRecord, EarnError> {
        let record = self.stored(tenant, document_id).await?;
        self.process_record(tenant, record).await
    }

    /// Decides a document read from the store, if it is due.
    async fn process_record(
        &self,
        tenant: &TenantId,
        record: DocumentRecord,
    ) -> Result<DocumentRecord, EarnError> {
        if record.status.is_final() || record.earn_after.is_some_and(|at| at > self.clock.now()) {
            return Ok(record);
        }
        let completion = self.decide(tenant, &record, Read::Always).await?;
        match self.documents.complete(tenant, &record, &completion).await {
            Ok(completed) => Ok(completed),
            Err(RepoError::Conflict(_)) => self.stored(tenant, &record.document.document_id).await,
            Err(other) => Err(other.into()),
        }
    }

    /// How a document ends now (or what it waits for).
    async fn decide(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
        read: Read,
    ) -> Result<Completion, EarnError> {
        match record.document.kind {
            DocumentKind::Invoice => self.decide_invoice(tenant, record, read).await,
            DocumentKind::Correction => self.decide_correction(tenant, record).await,
        }
    }

    /// Processes every document that is due (sale days closed, waits over). Returns how many
    /// were looked at.
    ///
    /// # Errors
    /// The database.
    pub async fn run_due(&self, limit: u64) -> Result<usize, EarnError> {
        let due = self.documents.due(self.clock.now(), limit).await?;
        for (tenant, document_id) in &due {
            if let Err(err) = self.process(tenant, document_id).await {
                tracing::warn!(%tenant, %document_id, %err, "document not processed; retried later");
            }
        }
        Ok(due.len())
    }

    /// The points scale the tenant shows points at.
    ///
    /// # Errors
    /// The database.
    pub async fn points_scale(&self, caller: &Caller) -> Result<u32, EarnError> {
        Ok(self.settings.current(&caller.tenant).await?.points_scale)
    }

    /// A document with the calculation behind its points.
    ///
    /// # Errors
    /// An unknown document, or the database.
    pub async fn explain(
        &self,
        caller: &Caller,
        document_id: &str,
    ) -> Result<Explanation, EarnError> {
        let record = self.stored(&caller.tenant, document_id).await?;
        let detail = match record.event_id {
            Some(event_id) => self.ledger.event_detail(&caller.tenant, event_id).await?,
            None => None,
        };
        let (stacking_mode, lines) = detail.map_or((None, Vec::new()), |(event, lines)| {
            (event.event.stacking_mode, lines)
        });
        let corrected_event_id = match &record.document.corrected_document_id {
            Some(original) => self
                .documents
                .find(&caller.tenant, original)
                .await?
                .and_then(|o| o.event_id),
            None => None,
        };
        let points_scale = self.settings.current(&caller.tenant).await?.points_scale;
        Ok(Explanation {
            record,
            lines,
            stacking_mode,
            corrected_event_id,
            points_scale,
        })
    }

    async fn stored(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<DocumentRecord, EarnError> {
        self.documents
            .find(tenant, document_id)
            .await?
            .ok_or_else(|| EarnError::NotFound(format!("document {document_id}")))
    }

    async fn decide_invoice(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
        read: Read,
    ) -> Result<Completion, EarnError> {
        let d = &record.document;
        let settings = self.settings.current(tenant).await?;
        let now = self.clock.now();
        let day_closed = end_of_day(settings.time_zone, d.sale_date)
            + Duration::minutes(i64::from(settings.day_close_grace_minutes));
        if now < day_closed {
            return Ok(waiting(DocumentStatus::PendingDayClose, day_closed));
        }
        if d.client_id.starts_with("ind:") {
            return Ok(not_earning(NonEarningReason::IndividualClient));
        }
        let eligibility = EligibilityProbe::end_of(&settings, d.sale_date);
        let (priced, orders, basis) = self.read_for(tenant, d, eligibility, read).await?;
        let Some(((client, facts, book), eligible)) = priced else {
            return Ok(waiting(
                DocumentStatus::WaitingForData,
                now + RETRY_WAITING_AFTER,
            ));
        };
        if !client.has_account {
            return Ok(not_earning(NonEarningReason::NoAccount));
        }
        if !eligible {
            return Ok(not_earning(NonEarningReason::NoAgreement));
        }
        let lines: Vec<LineInput> = d
            .lines
            .iter()
            .map(|line| {
                let order = line
                    .order_number
                    .as_ref()
                    .and_then(|n| orders.get(n))
                    .filter(|o| !o.removed);
                LineInput {
                    line_no: line.line_no,
                    product: facts[&line.product_id].clone(),
                    quantity: line.quantity,
                    channel: if order.is_some() && !d.offline {
                        Channel::Online
                    } else {
                        Channel::Offline
                    },
                    order_number: line.order_number.clone(),
                    pricing_date: order
                        .map_or(d.sale_date, |o| day_of(settings.time_zone, o.order_date)),
                }
            })
            .collect();
        let calc = calculate(&lines, &book, policy(&settings));
        if let Some(reason) = calculation_shortfall(&calc, settings.offline_lines_earn) {
            return Ok(not_earning(reason));
        }
        let event = NewLedgerEvent {
            client_id: d.client_id.clone(),
            event_type: EventType::Earn,
            points: calc.total,
            occurred_at: d
                .issued_at
                .unwrap_or_else(|| start_of_day(settings.time_zone, d.sale_date)),
            document_id: Some(d.document_id.clone()),
            request_id: None,
            reason_code: None,
            reason: Some(format!("invoice {}", d.number)),
            actor_key_id: None,
            actor_user_id: None,
            related_event_id: None,
            redemption_id: None,
            reservation_id: None,
            stacking_mode: Some(calc.stacking_mode),
            lot: Some(LotTerms::new(
                now,
                settings.lock_days,
                settings.expiry_months,
            )),
        };
        Ok(Completion {
            basis,
            ..processed(Some((event, calc.lines)))
        })
    }

    /// What an invoice is priced from: its client as priced (`None`: not known) and whether it
    /// counted as agreed, the orders its lines name, and the basis when the client was not read
    /// now but kept from an earlier read ([`Read::AsSeen`]).
    async fn read_for(
        &self,
        tenant: &TenantId,
        d: &Document,
        eligibility: EligibilityProbe,
        read: Read,
    ) -> Result<
        (
            Option<(PricedClient, bool)>,
            HashMap<String, OrderRecord>,
            Option<EarnBasis>,
        ),
        EarnError,
    > {
        let numbers: Vec<String> = d
            .lines
            .iter()
            .filter_map(|l| l.order_number.clone())
            .collect();
        let ids: Vec<String> = d.lines.iter().map(|l| l.product_id.clone()).collect();
        if read == Read::AsSeen
            && let Some((priced, basis)) =
                self.pricing
                    .as_seen(tenant, &d.client_id, &ids, eligibility.clone())
        {
            let orders = self.catalog.orders(tenant, &numbers).await?;
            return Ok((Some((priced, true)), orders, Some(basis)));
        }
        // Independent reads, in parallel: the latency of one call is the longest of them. They
        // are judged in order (the client, its account, its agreement) once all are in. The
        // agreement is read with the client, in one statement: a round trip of its own cost an
        // earn about a tenth of its throughput (docs/PERFORMANCE.md).
        let (priced, orders) = tokio::try_join!(
            self.pricing
                .book_and_eligibility(tenant, &d.client_id, &ids, eligibility),
            self.catalog.orders(tenant, &numbers),
        )?;
        Ok((priced, orders, None))
    }

    async fn decide_correction(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
    ) -> Result<Completion, EarnError> {
        let d = &record.document;
        let now = self.clock.now();
        if d.correction_type == Some(CorrectionType::Valuable) {
            return Ok(processed(None));
        }
        let original_id = d.corrected_document_id.clone().unwrap_or_default();
        let Some(original) = self.documents.find(tenant, &original_id).await? else {
            return Ok(waiting(
                DocumentStatus::WaitingForData,
                now + RETRY_WAITING_AFTER,
            ));
        };
        if !original.status.is_final() {
            let after = original.earn_after.unwrap_or(now).max(now) + RETRY_WAITING_AFTER;
            return Ok(waiting(DocumentStatus::WaitingForData, after));
        }
        let Some(earn_event) = original.event_id else {
            return Ok(processed(None));
        };
        let scale = self.settings.current(tenant).await?.points_scale;
        let Some((earn, earned)) = self.ledger.event_detail(tenant, earn_event).await? else {
            return Err(RepoError::Corrupt(format!(
                "document {original_id} names a missing event {earn_event}"
            ))
            .into());
        };
        let losses = correction_losses(&earned, &d.lines, &d.document_id, scale);
        let total: Decimal = losses.iter().map(|l| l.points).sum();
        if total.is_zero() {
            return Ok(processed(None));
        }
        let event = NewLedgerEvent {
            client_id: original.document.client_id.clone(),
            event_type: EventType::Lose,
            points: total,
            occurred_at: d.issued_at.unwrap_or(now),
            document_id: Some(d.document_id.clone()),
            request_id: None,
            reason_code: Some("RETURN".into()),
            reason: Some(format!(
                "quantitative correction {} of invoice {}",
                d.number, original.document.number
            )),
            actor_key_id: None,
            actor_user_id: None,
            related_event_id: Some(earn_event),
            redemption_id: None,
            reservation_id: None,
            stacking_mode: earn.event.stacking_mode,
            lot: None,
        };
        Ok(processed(Some((event, losses))))
    }

    /// The points the items would earn for the client on `day` (today when `None`).
    ///
    /// # Errors
    /// Bad items, an unknown client, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, client_id))]
    pub async fn preview(
        &self,
        caller: &Caller,
        client_id: &str,
        day: Option<NaiveDate>,
        items: &[PreviewItem],
    ) -> Result<Preview, EarnError> {
        check_items(items)?;
        let settings = self.settings.current(&caller.tenant).await?;
        let day = day.unwrap_or_else(|| day_of(settings.time_zone, self.clock.now()));
        let ids: Vec<String> = items.iter().map(|i| i.product_id.clone()).collect();
        let (_, facts, book) = self
            .pricing
            .book(&caller.tenant, client_id, &ids)
            .await?
            .ok_or_else(|| EarnError::NotFound(format!("client {client_id}")))?;
        let lines: Vec<LineInput> = items
            .iter()
            .zip(1_u32..)
            .map(|(item, line_no)| LineInput {
                line_no,
                product: facts[&item.product_id].clone(),
                quantity: item.quantity,
                channel: item.channel,
                order_number: None,
                pricing_date: day,
            })
            .collect();
        Ok(Preview {
            calculation: calculate(&lines, &book, policy(&settings)),
            day,
            points_scale: settings.points_scale,
        })
    }
}

fn waiting(status: DocumentStatus, until: chrono::DateTime<chrono::Utc>) -> Completion {
    Completion {
        status,
        reason: None,
        earn_after: Some(until),
        event: None,
        basis: None,
    }
}

fn not_earning(reason: NonEarningReason) -> Completion {
    Completion {
        status: DocumentStatus::NotEarning,
        reason: Some(reason),
        earn_after: None,
        event: None,
        basis: None,
    }
}

fn processed(event: Option<(NewLedgerEvent, Vec<LineCalculation>)>) -> Completion {
    Completion {
        status: DocumentStatus::Processed,
        reason: None,
        earn_after: None,
        event,
        basis: None,
    }
}

/// The tenant's calculation choices.
pub fn policy(settings: &TenantSettings) -> CalculationPolicy {
    CalculationPolicy {
        points_scale: settings.points_scale,
        stacking_mode: settings.stacking_mode,
        offline_lines_earn: settings.offline_lines_earn,
    }
}

fn check_items(items: &[PreviewItem]) -> Result<(), Invalid> {
    let mut found = Vec::new();
    if items.is_empty() || items.len() > MAX_PREVIEW_LINES {
        found.push(FieldViolation::new(
            "lines",
            format!("must hold 1 to {MAX_PREVIEW_LINES} lines"),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if item.product_id.trim().is_empty() {
            found.push(FieldViolation::new(
                format!("lines[{i}].product_id"),
                "is required",
            ));
        }
        if item.quantity <= Decimal::ZERO {
            found.push(FieldViolation::new(
                format!("lines[{i}].quantity"),
                "must be greater than 0",
            ));
        }
    }
    Invalid::check(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::domain::clock::FixedClock;
    use crate::domain::documents::DocumentLine;
    use crate::persistence::{
        MockCatalogRepository, MockDocumentRepository, MockLedgerRepository, MockRulesRepository,
        MockSettingsRepository,
    };

    fn invoice() -> Document {
        Document {
            document_id: "D1".into(),
            number: "FV/1".into(),
            kind: DocumentKind::Invoice,
            client_id: "org:acme".into(),
            sale_date: NaiveDate::from_ymd_opt(2026, 3, 1).expect("day"),
            customer_purchase_numbers: vec![],
            lines: vec![DocumentLine {
                line_no: 1,
                product_id: "P1".into(),
                quantity: Decimal::ONE,
                order_number: None,
                corrected_line_no: None,
            }],
            correction_type: None,
            corrected_document_id: None,
            offline: false,
            issued_at: None,
        }
    }

    /// An earn service whose read of the client fails and whose store records what it was
    /// given.
    fn service(documents: MockDocumentRepository) -> EarnService {
        let settings: Arc<dyn SettingsRepository> = Arc::new({
            let mut settings = MockSettingsRepository::new();
            settings
                .expect_current()
                .returning(|_| Ok(TenantSettings::default()));
            settings
        });
        // Everything else an earn reads starts alongside the client and answers.
        let catalog: Arc<dyn CatalogRepository> = Arc::new({
            let mut catalog = MockCatalogRepository::new();
            catalog
                .expect_product_facts()
                .returning(|_, _| Ok(HashMap::new()));
            catalog.expect_orders().returning(|_, _| Ok(HashMap::new()));
            catalog
        });
        let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(
            chrono::DateTime::parse_from_rfc3339("2026-03-05T12:00:00Z")
                .expect("instant")
                .to_utc(),
        ));
        EarnService::new(EarnDependencies {
            pricing: Pricing::new(
                Arc::clone(&catalog),
                Arc::new({
                    let mut rules = MockRulesRepository::new();
                    rules.expect_pricing_revision().returning(|_| Ok(0));
                    rules.expect_priced_client().returning(|_, _, _| {
                        Err(RepoError::Unavailable("connection refused".into()))
                    });
                    rules
                        .expect_base_points()
                        .returning(|_, _| Ok(HashMap::new()));
                    rules
                        .expect_published_rules_for()
                        .returning(|_, _| Ok(Vec::new()));
                    rules
                }),
            ),
            documents: Arc::new(documents),
            catalog,
            ledger: Arc::new(MockLedgerRepository::new()),
            settings,
            clock,
        })
    }

    #[tokio::test]
    async fn a_decision_that_fails_leaves_the_document_stored_as_received_and_reports_why() {
        let mut documents = MockDocumentRepository::new();
        documents
            .expect_receive()
            .withf(|_, record, decision| {
                decision.is_none() && record.status == DocumentStatus::Received
            })
            .times(1)
            .returning(|_, record, _| Ok(Received::Stored(record.clone())));
        let caller = Caller {
            tenant: TenantId::parse("acme").expect("tenant"),
            key_id: "k1".into(),
            roles: vec!["admin".into()],
            acting_for: None,
        };
        let outcome = service(documents)
            .receive(&caller, "r1", invoice(), DocumentSource::Api)
            .await;
        assert!(
            matches!(outcome, Err(EarnError::Repo(RepoError::Unavailable(_)))),
            "{outcome:?}"
        );
    }
}
