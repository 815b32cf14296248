//! SeaORM implementation of [`DirectoryRepository`]: clients, their segments and users. Saving a
//! user or a client recomputes the client's eligibility in the same transaction, because a
//! deactivation or a lost account changes it.

use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, JoinType, QueryFilter,
    QuerySelect,
};

use super::agreements::{declaration_types_of, lock_client, recompute_eligibility};
use super::entities::{client_segments, clients, users};
use super::error::{RepoError, classify};
use super::{DirectoryRepository, with_children};
use crate::domain::directory::{ClientRecord, UserRecord};
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaDirectoryRepository {
    db: DatabaseConnection,
}

impl SeaDirectoryRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl DirectoryRepository for SeaDirectoryRepository {
    async fn save_client(&self, tenant: &TenantId, client: &ClientRecord) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        let done = save_client_in(&txn, tenant, client).await?;
        txn.commit().await.map_err(classify)?;
        Ok(done)
    }

    async fn save_user(&self, tenant: &TenantId, user: &UserRecord) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        let done = save_user_in(&txn, tenant, user).await?;
        txn.commit().await.map_err(classify)?;
        Ok(done)
    }

    async fn client(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<Option<ClientRecord>, RepoError> {
        // One read: the client's row once per segment it is in (once with none when in none).
        let memberships = clients::Entity::belongs_to(client_segments::Entity)
            .from((clients::Column::TenantId, clients::Column::ClientId))
            .to((
                client_segments::Column::TenantId,
                client_segments::Column::ClientId,
            ))
            .into();
        let rows = clients::Entity::find_by_id((tenant.as_str().to_owned(), client_id.to_owned()))
            .join(JoinType::LeftJoin, memberships)
            .select_also(client_segments::Entity)
            .all(&self.db)
            .await
            .map_err(classify)?;
        Ok(with_children(rows).map(|(row, segments)| ClientRecord {
            segment_ids: segments.into_iter().map(|m| m.segment_id).collect(),
            ..client_record(row)
        }))
    }

    async fn user(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<Option<UserRecord>, RepoError> {
        let row = users::Entity::find_by_id((tenant.as_str().to_owned(), user_id.to_owned()))
            .one(&self.db)
            .await
            .map_err(classify)?;
        Ok(row.map(|r| UserRecord {
            user_id: r.user_id,
            client_id: r.client_id,
            active: r.active,
            deactivated_at: r.deactivated_at.map(|t| t.to_utc()),
            updated_at: r.updated_at.to_utc(),
        }))
    }
}

/// A client's row, without its segments.
pub(crate) fn client_record(row: clients::Model) -> ClientRecord {
    ClientRecord {
        client_id: row.client_id,
        name: row.name,
        status: row.status,
        has_account: row.has_account,
        segment_ids: Vec::new(),
        updated_at: row.updated_at.to_utc(),
    }
}

async fn recompute_client(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &TenantId,
    client_id: &str,
) -> Result<(), RepoError> {
    lock_client(txn, tenant, client_id).await?;
    for declaration_type in declaration_types_of(txn, tenant, client_id).await? {
        recompute_eligibility(txn, tenant, client_id, &declaration_type).await?;
    }
    Ok(())
}

pub(crate) async fn save_client_in(
    conn: &sea_orm::DatabaseTransaction,
    tenant: &TenantId,
    client: &ClientRecord,
) -> Result<(), RepoError> {
    let row = clients::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        client_id: Set(client.client_id.clone()),
        kind: Set(client.kind().to_owned()),
        name: Set(client.name.clone()),
        status: Set(client.status.clone()),
        has_account: Set(client.has_account),
        updated_at: Set(client.updated_at.fixed_offset()),
        revision: sea_orm::ActiveValue::NotSet,
    };
    clients::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([clients::Column::TenantId, clients::Column::ClientId])
                .update_columns([
                    clients::Column::Kind,
                    clients::Column::Name,
                    clients::Column::Status,
                    clients::Column::HasAccount,
                    clients::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await
        .map_err(classify)?;
    client_segments::Entity::delete_many()
        .filter(client_segments::Column::TenantId.eq(tenant.as_str()))
        .filter(client_segments::Column::ClientId.eq(client.client_id.as_str()))
        .exec(conn)
        .await
        .map_err(classify)?;
    if !client.segment_ids.is_empty() {
        let memberships = client
            .segment_ids
            .iter()
            .map(|segment| client_segments::ActiveModel {
                tenant_id: Set(tenant.as_str().to_owned()),
                client_id: Set(client.client_id.clone()),
                segment_id: Set(segment.clone()),
            });
        client_segments::Entity::insert_many(memberships)
            .exec(conn)
            .await
            .map_err(classify)?;
    }
    recompute_client(conn, tenant, &client.client_id).await?;
    Ok(())
}

pub(crate) async fn save_user_in(
    conn: &sea_orm::DatabaseTransaction,
    tenant: &TenantId,
    user: &UserRecord,
) -> Result<(), RepoError> {
    let previous = users::Entity::find_by_id((tenant.as_str().to_owned(), user.user_id.clone()))
        .one(conn)
        .await
        .map_err(classify)?;
    let row = users::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        user_id: Set(user.user_id.clone()),
        client_id: Set(user.client_id.clone()),
        active: Set(user.active),
        deactivated_at: Set(user.deactivated_at.map(|t| t.fixed_offset())),
        anonymized: Set(false),
        updated_at: Set(user.updated_at.fixed_offset()),
    };
    users::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([users::Column::TenantId, users::Column::UserId])
                .update_columns([
                    users::Column::ClientId,
                    users::Column::Active,
                    users::Column::DeactivatedAt,
                    users::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await
        .map_err(classify)?;
    let mut affected = vec![user.client_id.clone()];
    if let Some(old) = previous.filter(|p| p.client_id != user.client_id) {
        affected.push(old.client_id);
    }
    affected.sort();
    for client_id in &affected {
        recompute_client(conn, tenant, client_id).await?;
    }
    Ok(())
}
