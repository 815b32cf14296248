//! SeaORM implementation of [`DocumentRepository`]: documents are stored on arrival (the primary
//! key decides which of several concurrent deliveries stores one), with their decision when it
//! was taken before, or completed once later: the event, its lines, the balance and the
//! document's status in one transaction either way.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, QueryStatementBuilder};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::entities::{clients, documents};
use super::error::{RepoError, classify};
use super::few_statements::{self, EarnWriter, PreparedEarn};
use super::group_commit::GroupCommit;
use super::ledger::append_in;
use super::sqlite_script::{PreparedScriptEarn, ScriptWriter};
use super::{DocumentRepository, EarnBasis};
use crate::config::DEFAULT_WRITE_BATCH_MAX;
use crate::domain::clock::Clock;
use crate::domain::documents::{
    CorrectionType, Document, DocumentKind, DocumentLine, DocumentRecord, DocumentSource,
    DocumentStatus, NonEarningReason,
};
use crate::domain::engine::LineCalculation;
use crate::domain::ledger::NewLedgerEvent;
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::tenant::TenantId;

/// How a document ends (or waits).
#[derive(Debug, Clone)]
pub struct Completion {
    pub status: DocumentStatus,
    pub reason: Option<NonEarningReason>,
    /// For a waiting document: when to look again.
    pub earn_after: Option<DateTime<Utc>>,
    /// The Earn or Lose event and its lines, if points move.
    pub event: Option<(NewLedgerEvent, Vec<LineCalculation>)>,
    /// For an earn priced without reading: what it was priced from, which the write checks
    /// under its locks before it writes anything ([`RepoError::Stale`] when it no longer holds).
    pub basis: Option<EarnBasis>,
}

impl Completion {
    /// The record as it stands once this completion is stored at `now`, its event (if any)
    /// numbered `event_id`.
    pub fn applied_to(
        &self,
        mut record: DocumentRecord,
        event_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> DocumentRecord {
        record.status = self.status;
        record.non_earning_reason = self.reason;
        record.points = self.event.as_ref().map_or(Decimal::ZERO, |(e, _)| e.points);
        record.event_id = event_id;
        record.earn_after = self.earn_after;
        record.processed_at = self.status.is_final().then_some(now);
        record
    }
}

/// What storing a received document found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Stored now, as the record shows (decided, when a decision came with it).
    Stored(DocumentRecord),
    /// The document id was stored before: the stored document, untouched.
    Before(DocumentRecord),
}

#[derive(Clone)]
pub struct SeaDocumentRepository {
    db: DatabaseConnection,
    clock: Arc<dyn Clock>,
    /// On PostgreSQL, earns in one function call each, those that arrive together in one
    /// (`few_statements::EarnWriter`).
    earns: Arc<GroupCommit<PreparedEarn, Option<i64>, EarnWriter>>,
    /// On SQLite, earns in one script each, those that arrive together in one transaction
    /// (`sqlite_script::ScriptWriter`).
    script_earns:
        Arc<GroupCommit<PreparedScriptEarn, Option<i64>, ScriptWriter<PreparedScriptEarn>>>,
}

impl SeaDocumentRepository {
    pub fn new(db: DatabaseConnection, clock: Arc<dyn Clock>) -> Self {
        Self {
            earns: GroupCommit::shared(EarnWriter::new(db.clone()), DEFAULT_WRITE_BATCH_MAX),
            script_earns: GroupCommit::shared(
                ScriptWriter::new(db.clone()),
                DEFAULT_WRITE_BATCH_MAX,
            ),
            db,
            clock,
        }
    }

    /// At most `max` writes together (group commit); 1 writes each alone.
    #[must_use]
    pub fn with_write_batch_max(self, max: usize) -> Self {
        Self {
            earns: GroupCommit::shared(EarnWriter::new(self.db.clone()), max),
            script_earns: GroupCommit::shared(ScriptWriter::new(self.db.clone()), max),
            ..self
        }
    }

    /// A document whose id was found stored when receiving it.
    async fn stored_before(&self, tenant: &TenantId, id: &str) -> Result<Received, RepoError> {
        self.find(tenant, id)
            .await?
            .map(Received::Before)
            .ok_or_else(|| RepoError::Conflict(format!("document {id} vanished")))
    }
}

#[async_trait]
impl DocumentRepository for SeaDocumentRepository {
    async fn receive<'d>(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
        decision: Option<&'d Completion>,
    ) -> Result<Received, RepoError> {
        let now = self.clock.now();
        let stored = match decision {
            Some(decision) => decision.applied_to(record.clone(), None, now),
            None => record.clone(),
        };
        let id = &record.document.document_id;
        if let Some((event, lines)) = decision.and_then(|d| d.event.as_ref())
            && few_statements::is_plain_earn(event)
        {
            let basis = decision.and_then(|d| d.basis);
            let written = if self.db.get_database_backend() == DbBackend::Sqlite {
                let prepared = PreparedScriptEarn::new(tenant, &stored, event, lines, basis, now)?;
                self.script_earns.write(prepared).await
            } else {
                let prepared = PreparedEarn::new(tenant, &stored, event, lines, basis, now)?;
                self.earns.write(prepared).await
            };
            return match written {
                Ok(Some(event_id)) => Ok(Received::Stored(DocumentRecord {
                    event_id: Some(event_id),
                    ..stored
                })),
                // Stored before, or by a concurrent delivery that committed first.
                Ok(None) | Err(RepoError::Conflict(_)) => self.stored_before(tenant, id).await,
                Err(other) => Err(other),
            };
        }
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        if let Some(basis) = decision.and_then(|d| d.basis) {
            check_basis_in(&txn, tenant, &record.document.client_id, basis).await?;
        }
        // The document row first, as `complete` does: of concurrent deliveries one inserts it,
        // and the others wait here for its commit without holding the client's balance row.
        if !receive_in(&txn, tenant, &stored).await? {
            drop(txn);
            return self.stored_before(tenant, id).await;
        }
        let event_id = match decision.and_then(|d| d.event.as_ref()) {
            Some((event, lines)) => {
                let event_id = append_in(&txn, tenant, event, lines, now).await?.event_id;
                documents::Entity::update_many()
                    .col_expr(documents::Column::EventId, Expr::value(event_id))
                    .filter(documents::Column::TenantId.eq(tenant.as_str()))
                    .filter(documents::Column::DocumentId.eq(id.as_str()))
                    .exec(&txn)
                    .await
                    .map_err(classify)?;
                Some(event_id)
            }
            None => None,
        };
        txn.commit().await.map_err(classify)?;
        Ok(Received::Stored(DocumentRecord { event_id, ..stored }))
    }

    async fn find(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<DocumentRecord>, RepoError> {
        documents::Entity::find_by_id((tenant.as_str().to_owned(), document_id.to_owned()))
            .one(&self.db)
            .await
            .map_err(classify)?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn complete(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
        completion: &Completion,
    ) -> Result<DocumentRecord, RepoError> {
        let now = self.clock.now();
        let document_id = record.document.document_id.as_str();
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        // Only a document not yet decided can be completed: a concurrent delivery that got here
        // first makes this one a no-op.
        let not_final = Condition::all()
            .add(documents::Column::TenantId.eq(tenant.as_str()))
            .add(documents::Column::DocumentId.eq(document_id))
            .add(documents::Column::Status.is_not_in([
                DocumentStatus::Processed.as_str(),
                DocumentStatus::NotEarning.as_str(),
            ]));
        let claimed = documents::Entity::update_many()
            .col_expr(
                documents::Column::Attempts,
                Expr::col(documents::Column::Attempts).add(1),
            )
            .filter(not_final.clone())
            .exec(&txn)
            .await
            .map_err(classify)?;
        if claimed.rows_affected == 0 {
            return Err(RepoError::Conflict(format!(
                "document {document_id} was decided already"
            )));
        }
        if let Some(basis) = completion.basis {
            check_basis_in(&txn, tenant, &record.document.client_id, basis).await?;
        }
        let (event_id, points) = match &completion.event {
            Some((event, lines)) => {
                let appended = append_in(&txn, tenant, event, lines, now).await?;
                (Some(appended.event_id), to_minor_units(event.points)?)
            }
            None => (None, 0),
        };
        let processed_at = completion.status.is_final().then(|| now.fixed_offset());
        documents::Entity::update_many()
            .col_expr(
                documents::Column::Status,
                Expr::value(completion.status.as_str()),
            )
            .col_expr(
                documents::Column::NonEarningReason,
                Expr::value(completion.reason.map(|r| r.as_str().to_owned())),
            )
            .col_expr(documents::Column::Points, Expr::value(points))
            .col_expr(documents::Column::EventId, Expr::value(event_id))
            .col_expr(
                documents::Column::EarnAfter,
                Expr::value(completion.earn_after.map(|t| t.fixed_offset())),
            )
            .col_expr(documents::Column::ProcessedAt, Expr::value(processed_at))
            .filter(not_final)
            .exec(&txn)
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)?;
        Ok(completion.applied_to(record.clone(), event_id, now))
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(TenantId, String)>, RepoError> {
        let rows: Vec<(String, String)> = documents::Entity::find()
            .select_only()
            .column(documents::Column::TenantId)
            .column(documents::Column::DocumentId)
            .filter(documents::Column::Status.is_in([
                DocumentStatus::Received.as_str(),
                DocumentStatus::PendingDayClose.as_str(),
                DocumentStatus::WaitingForData.as_str(),
            ]))
            .filter(documents::Column::EarnAfter.lte(now.fixed_offset()))
            .order_by_asc(documents::Column::EarnAfter)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(classify)?;
        super::error::tenant_keyed(rows)
    }
}

fn from_row(row: &documents::Model) -> Result<DocumentRecord, RepoError> {
    let corrupt =
        |what: &str| RepoError::Corrupt(format!("documents.{what} of {}", row.document_id));
    let lines: Vec<StoredLine> = serde_json::from_str(&row.lines).map_err(|_| corrupt("lines"))?;
    let lines = lines
        .into_iter()
        .map(|l| DocumentLine {
            line_no: l.line_no,
            product_id: l.product_id,
            quantity: from_minor_units(l.quantity),
            order_number: l.order_number,
            corrected_line_no: l.corrected_line_no,
        })
        .collect();
    Ok(DocumentRecord {
        document: Document {
            kind: DocumentKind::parse(&row.kind).ok_or_else(|| corrupt("kind"))?,
            correction_type: row
                .correction_type
                .as_deref()
                .map(|c| CorrectionType::parse(c).ok_or_else(|| corrupt("correction_type")))
                .transpose()?,
            customer_purchase_numbers: serde_json::from_str(&row.customer_purchase_numbers)
                .map_err(|_| corrupt("customer_purchase_numbers"))?,
            lines,
            document_id: row.document_id.clone(),
            number: row.number.clone(),
            client_id: row.client_id.clone(),
            sale_date: row.sale_date,
            corrected_document_id: row.corrected_document_id.clone(),
            offline: row.offline,
            issued_at: row.issued_at.map(|t| t.to_utc()),
        },
        source: DocumentSource::parse(&row.source).ok_or_else(|| corrupt("source"))?,
        status: DocumentStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
        non_earning_reason: row
            .non_earning_reason
            .as_deref()
            .map(|r| NonEarningReason::parse(r).ok_or_else(|| corrupt("non_earning_reason")))
            .transpose()?,
        points: from_minor_units(row.points),
        event_id: row.event_id,
        received_at: row.received_at.to_utc(),
        processed_at: row.processed_at.map(|t| t.to_utc()),
        earn_after: row.earn_after.map(|t| t.to_utc()),
    })
}

/// Whether `basis` still holds, read in the write's transaction: the client at its revision (a
/// client not known holds none) and the tenant at its pricing revision (0 before the first
/// change). `Stale` when it does not.
async fn check_basis_in(
    txn: &impl sea_orm::ConnectionTrait,
    tenant: &TenantId,
    client_id: &str,
    basis: EarnBasis,
) -> Result<(), RepoError> {
    let of_client = Query::select()
        .column(clients::Column::Revision)
        .from(clients::Entity)
        .and_where(clients::Column::TenantId.eq(tenant.as_str()))
        .and_where(clients::Column::ClientId.eq(client_id))
        .to_owned();
    let of_tenant = super::rules::pricing_revision_of(tenant);
    let read = Query::select()
        .expr_as(
            Expr::SubQuery(None, Box::new(of_client.into_sub_query_statement())),
            Alias::new("client_revision"),
        )
        .expr_as(
            Expr::SubQuery(None, Box::new(of_tenant.into_sub_query_statement())),
            Alias::new("pricing_revision"),
        )
        .to_owned();
    let read = txn
        .query_one(&read)
        .await
        .map_err(classify)?
        .ok_or_else(|| RepoError::Other("the basis read answered nothing".into()))?;
    let column = |name: &str| read.try_get::<Option<i64>>("", name).map_err(classify);
    if column("client_revision")? == Some(basis.client_revision)
        && column("pricing_revision")?.unwrap_or(0) == basis.pricing_revision
    {
        Ok(())
    } else {
        Err(RepoError::Stale(earn_basis_moved(client_id)))
    }
}

/// Why an earn priced from a basis that moved is refused (`RepoError::Stale`), as both the
/// statement path and SQLite's script say it.
pub(super) fn earn_basis_moved(client_id: &str) -> String {
    format!("what the earn of client {client_id} was priced from changed")
}

/// Stores a received document (as the record stands, its lines in its row) inside the caller's
/// transaction. `false`: a document with this id is stored already (nothing was written).
pub(crate) async fn receive_in(
    conn: &impl sea_orm::ConnectionTrait,
    tenant: &TenantId,
    record: &DocumentRecord,
) -> Result<bool, RepoError> {
    let inserted = documents::Entity::insert(document_row(tenant, record)?)
        .on_conflict_do_nothing_on([documents::Column::TenantId, documents::Column::DocumentId])
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(!matches!(inserted, sea_orm::TryInsertResult::Conflicted))
}

/// The row of a document as the record stands.
pub(crate) fn document_row(
    tenant: &TenantId,
    record: &DocumentRecord,
) -> Result<documents::ActiveModel, RepoError> {
    let d = &record.document;
    Ok(documents::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        document_id: Set(d.document_id.clone()),
        number: Set(d.number.clone()),
        kind: Set(d.kind.as_str().to_owned()),
        client_id: Set(d.client_id.clone()),
        sale_date: Set(d.sale_date),
        issued_at: Set(d.issued_at.map(|t| t.fixed_offset())),
        customer_purchase_numbers: Set(serde_json::to_string(&d.customer_purchase_numbers)
            .map_err(|e| RepoError::Other(e.to_string()))?),
        correction_type: Set(d.correction_type.map(|c| c.as_str().to_owned())),
        corrected_document_id: Set(d.corrected_document_id.clone()),
        offline: Set(d.offline),
        source: Set(record.source.as_str().to_owned()),
        status: Set(record.status.as_str().to_owned()),
        non_earning_reason: Set(record.non_earning_reason.map(|r| r.as_str().to_owned())),
        points: Set(to_minor_units(record.points)?),
        event_id: Set(record.event_id),
        earn_after: Set(record.earn_after.map(|t| t.fixed_offset())),
        attempts: Set(0),
        received_at: Set(record.received_at.fixed_offset()),
        processed_at: Set(record.processed_at.map(|t| t.fixed_offset())),
        lines: Set(stored_lines(d)?),
    })
}

/// One line of a document as `documents.lines` keeps it (a JSON array of these, in line order;
/// migration `m20261207_000020_lines_in_their_rows`); the quantity in minor units.
#[derive(Debug, Serialize, Deserialize)]
struct StoredLine {
    line_no: u32,
    product_id: String,
    quantity: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    corrected_line_no: Option<u32>,
}

/// `documents.lines` for a document.
fn stored_lines(d: &Document) -> Result<String, RepoError> {
    let lines = d
        .lines
        .iter()
        .map(|l| {
            Ok(StoredLine {
                line_no: l.line_no,
                product_id: l.product_id.clone(),
                quantity: to_minor_units(l.quantity)?,
                order_number: l.order_number.clone(),
                corrected_line_no: l.corrected_line_no,
            })
        })
        .collect::<Result<Vec<_>, RepoError>>()?;
    serde_json::to_string(&lines).map_err(|e| RepoError::Other(e.to_string()))
}
