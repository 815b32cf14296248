//! SeaORM implementation of [`SettingsRepository`]: one row per revision.

use crate::domain::clock::{Clock, SystemClock};
use async_trait::async_trait;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};

use super::SettingsRepository;
use super::entities::tenant_settings;
use super::error::{RepoError, classify};
use super::idempotency::insert_record;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::settings::{
    DocumentSyncSettings, StackingMode, SyncDocumentKind, TenantSettings,
};
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaSettingsRepository {
    db: DatabaseConnection,
}

impl SeaSettingsRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl SettingsRepository for SeaSettingsRepository {
    async fn current(&self, tenant: &TenantId) -> Result<TenantSettings, RepoError> {
        let row = tenant_settings::Entity::find()
            .filter(tenant_settings::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(tenant_settings::Column::Revision)
            .one(&self.db)
            .await
            .map_err(classify)?;
        row.map_or_else(|| Ok(TenantSettings::default()), from_row)
    }

    async fn revision(
        &self,
        tenant: &TenantId,
        revision: u32,
    ) -> Result<Option<TenantSettings>, RepoError> {
        let key = (tenant.as_str().to_owned(), to_i32(revision)?);
        let row = tenant_settings::Entity::find_by_id(key)
            .one(&self.db)
            .await
            .map_err(classify)?;
        row.map(from_row).transpose()
    }

    async fn save(
        &self,
        tenant: &TenantId,
        settings: &TenantSettings,
        request: &IdempotencyRecord,
        changed_by_key_id: &str,
    ) -> Result<(), RepoError> {
        let row = to_row(tenant, settings, request, changed_by_key_id)?;
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        tenant_settings::Entity::insert(row)
            .exec(&txn)
            .await
            .map_err(classify)?;
        insert_record(&txn, tenant, request).await?;
        txn.commit().await.map_err(classify)
    }
}

fn to_i32(value: u32) -> Result<i32, RepoError> {
    i32::try_from(value).map_err(|_| RepoError::Other(format!("{value} does not fit a column")))
}

fn to_u32(value: i32, column: &str) -> Result<u32, RepoError> {
    u32::try_from(value).map_err(|_| RepoError::Corrupt(format!("{column} = {value}")))
}

fn to_row(
    tenant: &TenantId,
    s: &TenantSettings,
    request: &IdempotencyRecord,
    changed_by_key_id: &str,
) -> Result<tenant_settings::ActiveModel, RepoError> {
    let kinds: Vec<&str> = s.document_sync.kinds.iter().map(|k| k.as_str()).collect();
    Ok(tenant_settings::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        company_logo_url: Set(s.company_logo_url.clone()),
        declaration_type_id: Set(s.declaration_type_id.clone()),
        points_scale: Set(to_i32(s.points_scale)?),
        stacking_mode: Set(s.stacking_mode.as_str().to_owned()),
        offline_lines_earn: Set(s.offline_lines_earn),
        lock_days: Set(to_i32(s.lock_days)?),
        expiry_months: Set(to_i32(s.expiry_months)?),
        reservation_ttl_seconds: Set(to_i32(s.reservation_ttl_seconds)?),
        time_zone: Set(s.time_zone.name().to_owned()),
        day_close_grace_minutes: Set(to_i32(s.day_close_grace_minutes)?),
        expiring_window_days: Set(to_i32(s.expiring_window_days)?),
        sync_document_kinds: Set(kinds.join(",")),
        sync_from_date: Set(s.document_sync.from_date),
        sync_interval_seconds: Set(to_i32(s.document_sync.interval_seconds)?),
        revision: Set(to_i32(s.revision)?),
        request_id: Set(Some(request.request_id.clone())),
        changed_by_key_id: Set(Some(changed_by_key_id.to_owned())),
        updated_at: Set(s
            .updated_at
            .unwrap_or_else(|| SystemClock.now())
            .fixed_offset()),
    })
}

fn from_row(row: tenant_settings::Model) -> Result<TenantSettings, RepoError> {
    let corrupt =
        |what: &str| RepoError::Corrupt(format!("tenant_settings.{what} of {}", row.tenant_id));
    let kinds = row
        .sync_document_kinds
        .split(',')
        .filter(|k| !k.is_empty())
        .map(|k| SyncDocumentKind::parse(k).ok_or_else(|| corrupt("sync_document_kinds")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TenantSettings {
        company_logo_url: row.company_logo_url,
        document_sync: DocumentSyncSettings {
            kinds,
            from_date: row.sync_from_date,
            interval_seconds: to_u32(row.sync_interval_seconds, "sync_interval_seconds")?,
        },
        declaration_type_id: row.declaration_type_id,
        points_scale: to_u32(row.points_scale, "points_scale")?,
        stacking_mode: StackingMode::parse(&row.stacking_mode)
            .ok_or_else(|| corrupt("stacking_mode"))?,
        offline_lines_earn: row.offline_lines_earn,
        lock_days: to_u32(row.lock_days, "lock_days")?,
        expiry_months: to_u32(row.expiry_months, "expiry_months")?,
        reservation_ttl_seconds: to_u32(row.reservation_ttl_seconds, "reservation_ttl_seconds")?,
        time_zone: row.time_zone.parse().map_err(|_| corrupt("time_zone"))?,
        day_close_grace_minutes: to_u32(row.day_close_grace_minutes, "day_close_grace_minutes")?,
        expiring_window_days: to_u32(row.expiring_window_days, "expiring_window_days")?,
        revision: to_u32(row.revision, "revision")?,
        updated_at: Some(row.updated_at.to_utc()),
    })
}
