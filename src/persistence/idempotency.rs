//! Idempotency records: looked up before a mutating call, written in the same transaction as the
//! change they describe.

use async_trait::async_trait;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
};

use super::IdempotencyRepository;
use super::entities::idempotency_records;
use super::error::{RepoError, classify};
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaIdempotencyRepository {
    db: DatabaseConnection,
}

impl SeaIdempotencyRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl IdempotencyRepository for SeaIdempotencyRepository {
    async fn find(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>, RepoError> {
        let key = (tenant.as_str().to_owned(), request_id.to_owned());
        let row = idempotency_records::Entity::find_by_id(key)
            .one(&self.db)
            .await
            .map_err(classify)?;
        Ok(row.map(|r| IdempotencyRecord {
            request_id: r.request_id,
            operation: r.operation,
            request_hash: r.request_hash,
            result_ref: r.result_ref.unwrap_or_default(),
        }))
    }
}

/// Writes the record inside the caller's transaction; `Conflict` when the request id is taken.
pub(crate) async fn insert_record(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    record: &IdempotencyRecord,
) -> Result<(), RepoError> {
    idempotency_records::Entity::insert(record_row(tenant, record))
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// The row of a request's record.
pub(crate) fn record_row(
    tenant: &TenantId,
    record: &IdempotencyRecord,
) -> idempotency_records::ActiveModel {
    idempotency_records::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        request_id: Set(record.request_id.clone()),
        operation: Set(record.operation.clone()),
        request_hash: Set(record.request_hash.clone()),
        result_ref: Set(Some(record.result_ref.clone())),
        created_at: Set(SystemClock.now().fixed_offset()),
    }
}

/// Sets what a call produced once it is known, inside the caller's transaction.
pub(crate) async fn set_result_ref(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    request_id: &str,
    result_ref: &str,
) -> Result<(), RepoError> {
    idempotency_records::Entity::update_many()
        .col_expr(
            idempotency_records::Column::ResultRef,
            Expr::value(result_ref),
        )
        .filter(idempotency_records::Column::TenantId.eq(tenant.as_str()))
        .filter(idempotency_records::Column::RequestId.eq(request_id))
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(())
}
