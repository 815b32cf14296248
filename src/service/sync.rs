//! Synchronization with ONe core (DOMAIN.md §7): each stream of each tenant is read from its
//! cursor in batches; each batch is stored together with the new cursor. New documents land as
//! `RECEIVED` and the earning job decides them (an invoice whose client or products are not
//! there yet waits and is retried by that job).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::access::Caller;
use crate::domain::clock::Clock;
use crate::domain::documents::DocumentKind;
use crate::domain::settings::SyncDocumentKind;
use crate::domain::sync::{SnapshotPage, StreamState, SyncBatch, SyncChange, SyncStream};
use crate::domain::tenant::TenantId;
use crate::persistence::{RepoError, SettingsRepository, SyncRepository};

/// What a read of ONe is limited to, from the tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeedFilter {
    /// Document kinds to read; all when empty.
    pub document_kinds: Vec<SyncDocumentKind>,
    /// Documents of sale days before this are not read.
    pub documents_from: Option<NaiveDate>,
    /// The declaration type whose consents and versions are read.
    pub declaration_type_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no ONe core endpoint is configured")]
    NotConfigured,
    /// Down, timing out, or refusing our credentials; worth retrying later.
    #[error("ONe core unavailable: {0}")]
    Unavailable(String),
    /// ONe sent something we cannot store (a malformed document); the stream stops there.
    #[error("ONe core sent malformed data: {0}")]
    Malformed(String),
}

/// The ONe core services as synchronization reads them.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait CoreGateway: Send + Sync {
    /// Up to `limit` changes after `cursor` (from the beginning when empty).
    async fn changes(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        cursor: &str,
        limit: u32,
        filter: &FeedFilter,
    ) -> Result<SyncBatch, GatewayError>;

    /// Page `page_number` (from 1) of the stream's full list, for a full resynchronization.
    async fn snapshot(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        page_number: u32,
        page_size: u32,
        filter: &FeedFilter,
    ) -> Result<SnapshotPage, GatewayError>;

    /// Page `page_number` of the lists a stream needs with every run because they have no change
    /// feed: the product categories, the agreement versions. Empty for the other streams.
    async fn references(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        page_number: u32,
        page_size: u32,
        filter: &FeedFilter,
    ) -> Result<SnapshotPage, GatewayError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// What one run of a stream did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamRun {
    /// Changes read from ONe.
    pub read: usize,
    /// Changes that wrote something (redeliveries write nothing).
    pub applied: usize,
    /// Another run of the same stream was under way; this one did nothing.
    pub skipped: bool,
}

/// How much one run reads.
#[derive(Debug, Clone, Copy)]
pub struct SyncLimits {
    /// Changes per read; ONe asks for at most about 10,000 lines per query.
    pub batch_size: u32,
    /// Items per page of a full list.
    pub page_size: u32,
    /// Reads per run of a stream, so that one busy stream does not starve the others.
    pub max_batches: u32,
}

pub struct SyncService {
    gateway: Arc<dyn CoreGateway>,
    repo: Arc<dyn SyncRepository>,
    settings: Arc<dyn SettingsRepository>,
    clock: Arc<dyn Clock>,
    limits: SyncLimits,
    /// Streams being read by this process.
    running: Mutex<BTreeSet<(String, SyncStream)>>,
    /// When each tenant was last run by the scheduler.
    last_run: Mutex<BTreeMap<String, DateTime<Utc>>>,
}

impl SyncService {
    pub fn new(
        gateway: Arc<dyn CoreGateway>,
        repo: Arc<dyn SyncRepository>,
        settings: Arc<dyn SettingsRepository>,
        clock: Arc<dyn Clock>,
        limits: SyncLimits,
    ) -> Self {
        Self {
            gateway,
            repo,
            settings,
            clock,
            limits,
            running: Mutex::new(BTreeSet::new()),
            last_run: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reads one stream of a tenant from its cursor until ONe has nothing newer (or the run's
    /// batch limit), storing each batch with its cursor. A requested full resynchronization
    /// pages through the full list first.
    ///
    /// # Errors
    /// ONe or the database; the failure is recorded in the stream's status.
    #[tracing::instrument(skip(self), fields(tenant = %tenant, stream = stream.as_str()))]
    pub async fn run_stream(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
    ) -> Result<StreamRun, SyncError> {
        let key = (tenant.as_str().to_owned(), stream);
        if !self.lock_running().insert(key.clone()) {
            return Ok(StreamRun {
                skipped: true,
                ..StreamRun::default()
            });
        }
        // Cleared however the run ends, a cancelled (dropped) run included.
        let _running = RunningGuard {
            running: &self.running,
            key,
        };
        let result = self.read_stream(tenant, stream).await;
        if let Err(err) = &result {
            tracing::warn!(%err, "synchronization failed; retried on the next run");
            self.repo
                .record_failure(tenant, stream, &err.to_string(), self.clock.now())
                .await?;
        }
        result
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
    ) -> Result<StreamRun, SyncError> {
        let settings = self.settings.current(tenant).await?;
        let filter = FeedFilter {
            document_kinds: settings.document_sync.kinds.clone(),
            documents_from: settings.document_sync.from_date,
            declaration_type_id: settings.declaration_type_id.clone(),
        };
        let mut run = StreamRun::default();
        let state = self.repo.state(tenant, stream).await?;
        if state.full_resync_requested {
            self.read_pages(tenant, stream, &filter, &mut run, PageKind::Snapshot)
                .await?;
            self.repo
                .set_full_resync(tenant, stream, false, self.clock.now())
                .await?;
        }
        self.read_pages(tenant, stream, &filter, &mut run, PageKind::References)
            .await?;
        let mut cursor = self.repo.state(tenant, stream).await?.cursor;
        for _ in 0..self.limits.max_batches.max(1) {
            let batch = self
                .gateway
                .changes(tenant, stream, &cursor, self.limits.batch_size, &filter)
                .await?;
            if batch.changes.is_empty() && batch.next_cursor == cursor {
                break;
            }
            let full = batch.changes.len() >= self.limits.batch_size as usize;
            run.read += batch.changes.len();
            let wanted: Vec<SyncChange> = batch
                .changes
                .into_iter()
                .filter(|c| wanted(c, &filter))
                .collect();
            run.applied += self
                .repo
                .apply(
                    tenant,
                    stream,
                    &cursor,
                    &wanted,
                    Some(&batch.next_cursor),
                    self.clock.now(),
                )
                .await?;
            cursor = batch.next_cursor;
            if !full {
                break;
            }
        }
        Ok(run)
    }

    async fn read_pages(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        filter: &FeedFilter,
        run: &mut StreamRun,
        kind: PageKind,
    ) -> Result<(), SyncError> {
        // A bound on the pages of one pass, so that a misbehaving ONe cannot keep us looping.
        const MAX_PAGES: u32 = 100_000;
        for page_number in 1..=MAX_PAGES {
            let size = self.limits.page_size;
            let page = match kind {
                PageKind::Snapshot => {
                    self.gateway
                        .snapshot(tenant, stream, page_number, size, filter)
                        .await?
                }
                PageKind::References => {
                    self.gateway
                        .references(tenant, stream, page_number, size, filter)
                        .await?
                }
            };
            run.read += page.changes.len();
            if !page.changes.is_empty() {
                let cursor = self.repo.state(tenant, stream).await?.cursor;
                let wanted: Vec<SyncChange> = page
                    .changes
                    .into_iter()
                    .filter(|c| wanted(c, filter))
                    .collect();
                run.applied += self
                    .repo
                    .apply(tenant, stream, &cursor, &wanted, None, self.clock.now())
                    .await?;
            }
            if !page.more {
                break;
            }
        }
        Ok(())
    }

    /// Every stream of a tenant, in dependency order; a failing stream does not stop the others.
    pub async fn run_tenant(
        &self,
        tenant: &TenantId,
    ) -> Vec<(SyncStream, Result<StreamRun, SyncError>)> {
        let mut runs = Vec::new();
        for stream in SyncStream::ALL {
            runs.push((stream, self.run_stream(tenant, stream).await));
        }
        runs
    }

    /// The scheduler's round: every tenant whose synchronization interval has passed.
    ///
    /// # Errors
    /// The database.
    pub async fn run_due_tenants(&self) -> Result<usize, SyncError> {
        let now = self.clock.now();
        let mut ran = 0;
        for tenant in self.repo.tenants().await? {
            let interval = self
                .settings
                .current(&tenant)
                .await?
                .document_sync
                .interval_seconds;
            let due = self
                .lock_last_run()
                .get(tenant.as_str())
                .is_none_or(|at| (now - *at).num_seconds() >= i64::from(interval));
            if !due {
                continue;
            }
            self.lock_last_run().insert(tenant.as_str().to_owned(), now);
            // Failures are recorded per stream and retried on the next round.
            self.run_tenant(&tenant).await;
            ran += 1;
        }
        Ok(ran)
    }

    /// Schedules the named streams (all when empty) to run now in the background, with a full
    /// resynchronization first when asked. Returns the streams scheduled.
    ///
    /// # Errors
    /// The database.
    pub async fn trigger(
        self: &Arc<Self>,
        caller: &Caller,
        streams: &[SyncStream],
        full_resync: bool,
    ) -> Result<Vec<SyncStream>, SyncError> {
        let streams: Vec<SyncStream> = if streams.is_empty() {
            SyncStream::ALL.to_vec()
        } else {
            SyncStream::ALL
                .into_iter()
                .filter(|s| streams.contains(s))
                .collect()
        };
        if full_resync {
            for stream in &streams {
                self.repo
                    .set_full_resync(&caller.tenant, *stream, true, self.clock.now())
                    .await?;
            }
        }
        let service = Arc::clone(self);
        let tenant = caller.tenant.clone();
        let scheduled = streams.clone();
        tokio::spawn(async move {
            for stream in scheduled {
                if let Err(err) = service.run_stream(&tenant, stream).await {
                    tracing::warn!(%tenant, stream = stream.as_str(), %err, "triggered sync failed");
                }
            }
        });
        Ok(streams)
    }

    /// Where the named streams (all when empty) stand, and whether this process is reading them.
    ///
    /// # Errors
    /// The database.
    pub async fn status(
        &self,
        caller: &Caller,
        streams: &[SyncStream],
    ) -> Result<Vec<(StreamState, bool)>, SyncError> {
        let mut found = Vec::new();
        for stream in SyncStream::ALL {
            if !streams.is_empty() && !streams.contains(&stream) {
                continue;
            }
            let state = self.repo.state(&caller.tenant, stream).await?;
            let running = self
                .lock_running()
                .contains(&(caller.tenant.as_str().to_owned(), stream));
            found.push((state, running));
        }
        Ok(found)
    }

    /// The clock, for lag.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, SyncStream)>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_last_run(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DateTime<Utc>>> {
        self.last_run
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Marks a stream as being read for as long as it lives.
struct RunningGuard<'s> {
    running: &'s Mutex<BTreeSet<(String, SyncStream)>>,
    key: (String, SyncStream),
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

#[derive(Debug, Clone, Copy)]
enum PageKind {
    Snapshot,
    References,
}

/// Whether the tenant's document synchronization settings want a change (other kinds of change
/// always pass).
fn wanted(change: &SyncChange, filter: &FeedFilter) -> bool {
    let SyncChange::Document(document) = change else {
        return true;
    };
    let kind = match document.kind {
        DocumentKind::Invoice => SyncDocumentKind::Invoice,
        DocumentKind::Correction => SyncDocumentKind::Correction,
    };
    (filter.document_kinds.is_empty() || filter.document_kinds.contains(&kind))
        && filter
            .documents_from
            .is_none_or(|from| document.sale_date >= from)
}
