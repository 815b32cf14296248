//! SeaORM implementation of [`SyncRepository`]: what a read of a stream brought is stored in the
//! same transaction that moves the stream's cursor, so a crash never skips nor repeats anything.
//! The cursor moves only from the value the reader started at (a conditional update that also
//! locks the row): of two replicas reading the same stream, one stores and the other is told
//! to stop.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, QuerySelect,
};

use super::SyncRepository;
use super::agreements::{ChangedEvent, publish_version_in, record_consents_in};
use super::catalog::{save_category_in, save_order_in, save_product_in};
use super::coupons::save_pool_in;
use super::directory::{save_client_in, save_user_in};
use super::documents::receive_in;
use super::entities::{agreement_versions, segments, sync_cursors, tenants};
use super::error::{RepoError, classify};
use crate::domain::consent::{ConsentEvent, ConsentOutcome};
use crate::domain::documents::{DocumentRecord, DocumentSource, DocumentStatus};
use crate::domain::sync::{SegmentRecord, StreamState, SyncChange, SyncStream};
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaSyncRepository {
    db: DatabaseConnection,
}

impl SeaSyncRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl SyncRepository for SeaSyncRepository {
    async fn state(&self, tenant: &TenantId, stream: SyncStream) -> Result<StreamState, RepoError> {
        let row = sync_cursors::Entity::find_by_id((
            tenant.as_str().to_owned(),
            stream.as_str().to_owned(),
        ))
        .one(&self.db)
        .await
        .map_err(classify)?;
        Ok(row.map_or_else(|| StreamState::new(stream), from_row))
    }

    async fn apply<'c>(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        from_cursor: &str,
        changes: &[SyncChange],
        next_cursor: Option<&'c str>,
        now: DateTime<Utc>,
    ) -> Result<usize, RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        ensure_row(&txn, tenant, stream, now).await?;
        let moved = sync_cursors::Entity::update_many()
            .col_expr(
                sync_cursors::Column::Cursor,
                Expr::value(next_cursor.unwrap_or(from_cursor)),
            )
            .col_expr(
                sync_cursors::Column::LastSuccessAt,
                Expr::value(now.fixed_offset()),
            )
            .col_expr(
                sync_cursors::Column::LastAttemptAt,
                Expr::value(now.fixed_offset()),
            )
            .col_expr(sync_cursors::Column::LastError, Expr::value(None::<String>))
            .col_expr(
                sync_cursors::Column::UpdatedAt,
                Expr::value(now.fixed_offset()),
            )
            .filter(sync_cursors::Column::TenantId.eq(tenant.as_str()))
            .filter(sync_cursors::Column::Stream.eq(stream.as_str()))
            .filter(sync_cursors::Column::Cursor.eq(from_cursor))
            .exec(&txn)
            .await
            .map_err(classify)?;
        if moved.rows_affected != 1 {
            return Err(RepoError::Aborted(format!(
                "the {} cursor moved since {from_cursor:?} was read",
                stream.as_str()
            )));
        }
        let mut applied = 0;
        // A run of consent events is recorded together, so that a client whose users consented
        // in one page has its eligibility recomputed once for the page, not once per event.
        let mut consents = Vec::new();
        for change in changes {
            if let SyncChange::Consent(event) = change {
                consents.push(event.clone());
                continue;
            }
            applied += record_synced_consents(&txn, tenant, &consents).await?;
            consents.clear();
            if apply_change(&txn, tenant, change, now).await? {
                applied += 1;
            }
        }
        applied += record_synced_consents(&txn, tenant, &consents).await?;
        sync_cursors::Entity::update_many()
            .col_expr(
                sync_cursors::Column::ItemsSynced,
                Expr::col(sync_cursors::Column::ItemsSynced)
                    .add(i64::try_from(applied).unwrap_or(i64::MAX)),
            )
            .filter(sync_cursors::Column::TenantId.eq(tenant.as_str()))
            .filter(sync_cursors::Column::Stream.eq(stream.as_str()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)?;
        if applied > 0 {
            // A synchronization's first runs are bulk loads: the tables they grew are analyzed
            // now, not when autovacuum or the periodic analyze next comes round. What this read
            // stored is committed whatever happens there.
            crate::persistence::db::analyze_grown_tables_or_warn(&self.db).await;
        }
        Ok(applied)
    }

    async fn record_failure(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        ensure_row(&txn, tenant, stream, now).await?;
        sync_cursors::Entity::update_many()
            .col_expr(
                sync_cursors::Column::LastAttemptAt,
                Expr::value(now.fixed_offset()),
            )
            .col_expr(sync_cursors::Column::LastError, Expr::value(error))
            .col_expr(
                sync_cursors::Column::UpdatedAt,
                Expr::value(now.fixed_offset()),
            )
            .filter(sync_cursors::Column::TenantId.eq(tenant.as_str()))
            .filter(sync_cursors::Column::Stream.eq(stream.as_str()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)
    }

    async fn set_full_resync(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        requested: bool,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        ensure_row(&txn, tenant, stream, now).await?;
        sync_cursors::Entity::update_many()
            .col_expr(
                sync_cursors::Column::FullResyncRequested,
                Expr::value(requested),
            )
            .filter(sync_cursors::Column::TenantId.eq(tenant.as_str()))
            .filter(sync_cursors::Column::Stream.eq(stream.as_str()))
            .exec(&txn)
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, RepoError> {
        let ids: Vec<String> = tenants::Entity::find()
            .select_only()
            .column(tenants::Column::TenantId)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(classify)?;
        ids.iter()
            .map(|id| super::error::stored_tenant(id))
            .collect()
    }
}

async fn ensure_row(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    stream: SyncStream,
    now: DateTime<Utc>,
) -> Result<(), RepoError> {
    let row = sync_cursors::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        stream: Set(stream.as_str().to_owned()),
        cursor: Set(String::new()),
        last_success_at: Set(None),
        last_attempt_at: Set(None),
        last_error: Set(None),
        items_synced: Set(0),
        full_resync_requested: Set(false),
        updated_at: Set(now.fixed_offset()),
    };
    sync_cursors::Entity::insert(row)
        .on_conflict_do_nothing_on([sync_cursors::Column::TenantId, sync_cursors::Column::Stream])
        .exec(txn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// Records consent events from ONe's feed; returns how many were new. An event id sent again with
/// other content keeps its first content.
async fn record_synced_consents(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    events: &[ConsentEvent],
) -> Result<usize, RepoError> {
    let outcomes = record_consents_in(txn, tenant, events, ChangedEvent::KeepFirst).await?;
    Ok(outcomes
        .iter()
        .filter(|o| **o != ConsentOutcome::Duplicate)
        .count())
}

/// Stores one change; `false` when it was there already (a redelivered document, consent event
/// or version) and nothing was written.
async fn apply_change(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    change: &SyncChange,
    now: DateTime<Utc>,
) -> Result<bool, RepoError> {
    match change {
        SyncChange::Product(p) => save_product_in(txn, tenant, p).await?,
        SyncChange::Category(c) => return save_category_in(txn, tenant, c).await,
        SyncChange::Client(c) => save_client_in(txn, tenant, c).await?,
        SyncChange::User(u) => save_user_in(txn, tenant, u).await?,
        SyncChange::Segment(s) => save_segment_in(txn, tenant, s).await?,
        SyncChange::Order(o) => save_order_in(txn, tenant, o).await?,
        SyncChange::Pool(p) => save_pool_in(txn, tenant, p).await?,
        SyncChange::Document(d) => {
            let record = DocumentRecord {
                document: d.clone(),
                source: DocumentSource::Sync,
                status: DocumentStatus::Received,
                non_earning_reason: None,
                points: rust_decimal::Decimal::ZERO,
                event_id: None,
                received_at: now,
                processed_at: None,
                // The earning job decides it: now, or once its sale day has closed.
                earn_after: Some(now),
            };
            return receive_in(txn, tenant, &record).await;
        }
        SyncChange::Consent(event) => {
            return Ok(record_synced_consents(txn, tenant, std::slice::from_ref(event)).await? > 0);
        }
        SyncChange::Version(v) => {
            let known = agreement_versions::Entity::find_by_id((
                tenant.as_str().to_owned(),
                v.declaration_type_id.clone(),
                i32::try_from(v.version).unwrap_or(i32::MAX),
            ))
            .one(txn)
            .await
            .map_err(classify)?;
            if known.is_some() {
                return Ok(false);
            }
            publish_version_in(txn, tenant, v).await?;
        }
    }
    Ok(true)
}

async fn save_segment_in(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    segment: &SegmentRecord,
) -> Result<(), RepoError> {
    let row = segments::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        segment_id: Set(segment.segment_id.clone()),
        name: Set(segment.name.clone()),
        description: Set(segment.description.clone()),
        removed_at: Set(segment.removed.then(|| segment.updated_at.fixed_offset())),
        updated_at: Set(segment.updated_at.fixed_offset()),
    };
    segments::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([segments::Column::TenantId, segments::Column::SegmentId])
                .update_columns([
                    segments::Column::Name,
                    segments::Column::Description,
                    segments::Column::RemovedAt,
                    segments::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(txn)
        .await
        .map_err(classify)?;
    Ok(())
}

fn from_row(row: sync_cursors::Model) -> StreamState {
    StreamState {
        stream: SyncStream::parse(&row.stream).unwrap_or(SyncStream::Products),
        cursor: row.cursor,
        last_success_at: row.last_success_at.map(|t| t.to_utc()),
        last_attempt_at: row.last_attempt_at.map(|t| t.to_utc()),
        last_error: row.last_error,
        items_synced: u64::try_from(row.items_synced).unwrap_or(0),
        full_resync_requested: row.full_resync_requested,
    }
}
