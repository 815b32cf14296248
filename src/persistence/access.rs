//! SeaORM implementation of [`AccessRepository`].

use crate::domain::clock::{Clock, SystemClock};
use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::AccessRepository;
use super::entities::{api_keys, tenants};
use super::error::{RepoError, classify};
use crate::domain::access::ApiKeyRecord;
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaAccessRepository {
    db: DatabaseConnection,
}

impl SeaAccessRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl AccessRepository for SeaAccessRepository {
    async fn ensure_tenant(&self, tenant: &TenantId, name: &str) -> Result<(), RepoError> {
        let row = tenants::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            name: Set(name.to_owned()),
            disabled: Set(false),
            created_at: Set(SystemClock.now().fixed_offset()),
        };
        tenants::Entity::insert(row)
            .on_conflict_do_nothing_on([tenants::Column::TenantId])
            .exec(&self.db)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, RepoError> {
        let found = tenants::Entity::find_by_id(tenant.as_str().to_owned())
            .one(&self.db)
            .await
            .map_err(classify)?;
        Ok(found.is_some_and(|t| !t.disabled))
    }

    async fn store_key(&self, key: &ApiKeyRecord) -> Result<(), RepoError> {
        if let Some(existing) = self.find_key_by_hash(&key.key_hash).await? {
            if existing.tenant != key.tenant {
                return Err(RepoError::Conflict(
                    "the key belongs to another tenant".into(),
                ));
            }
            api_keys::Entity::delete_many()
                .filter(api_keys::Column::KeyHash.eq(key.key_hash.as_str()))
                .exec(&self.db)
                .await
                .map_err(classify)?;
        }
        let row = api_keys::ActiveModel {
            tenant_id: Set(key.tenant.as_str().to_owned()),
            key_id: Set(key.key_id.clone()),
            key_hash: Set(key.key_hash.clone()),
            roles: Set(key.roles.join(",")),
            label: Set(key.label.clone()),
            created_at: Set(key.created_at.fixed_offset()),
            revoked_at: Set(key.revoked_at.map(|t| t.fixed_offset())),
        };
        // Replicas that start together install the same bootstrap key at once: the second
        // insert updates the first's row instead of failing.
        api_keys::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([api_keys::Column::TenantId, api_keys::Column::KeyId])
                    .update_columns([
                        api_keys::Column::KeyHash,
                        api_keys::Column::Roles,
                        api_keys::Column::Label,
                        api_keys::Column::RevokedAt,
                    ])
                    .to_owned(),
            )
            .exec(&self.db)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn find_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, RepoError> {
        let Some(row) = api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(key_hash))
            .one(&self.db)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        let tenant = super::error::stored_tenant(&row.tenant_id)?;
        Ok(Some(ApiKeyRecord {
            tenant,
            key_id: row.key_id,
            key_hash: row.key_hash,
            roles: row
                .roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            label: row.label,
            created_at: row.created_at.to_utc(),
            revoked_at: row.revoked_at.map(|t| t.to_utc()),
        }))
    }
}
