//! The check every mutating call makes first: is this request id new, a retry, or reused?

use crate::domain::idempotency::{Replay, valid_request_id};
use crate::domain::tenant::TenantId;
use crate::persistence::{IdempotencyRepository, RepoError};

/// A mutating call's identity: the caller's request id and a hash of the whole request.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub request_id: String,
    pub request_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// → `INVALID_ARGUMENT` on `request_id`.
    #[error("request_id must be 1 to 128 printable ASCII characters")]
    InvalidRequestId,
    /// → `ALREADY_EXISTS`
    #[error("request id {0:?} was already used for a different request")]
    Reused(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// `Some(result_ref)` of the first call when this is a retry of it, `None` when the id is new.
///
/// # Errors
/// A malformed id, an id used for another request, or the database.
pub async fn prior_result(
    repo: &dyn IdempotencyRepository,
    tenant: &TenantId,
    request_id: &str,
    operation: &str,
    request_hash: &str,
) -> Result<Option<String>, IdempotencyError> {
    if !valid_request_id(request_id) {
        return Err(IdempotencyError::InvalidRequestId);
    }
    match repo.find(tenant, request_id).await? {
        None => Ok(None),
        Some(record) => match record.replay(operation, request_hash) {
            Replay::SameRequest { result_ref } => Ok(Some(result_ref)),
            Replay::DifferentRequest => Err(IdempotencyError::Reused(request_id.to_owned())),
        },
    }
}

/// Implements `From<IdempotencyError>` for a service error with `RequestId(IdempotencyError)` and
/// `Repo(RepoError)` variants: database faults stay database faults.
#[macro_export]
macro_rules! request_id_error {
    ($error:ty) => {
        impl From<$crate::service::idempotency::IdempotencyError> for $error {
            fn from(err: $crate::service::idempotency::IdempotencyError) -> Self {
                match err {
                    $crate::service::idempotency::IdempotencyError::Repo(cause) => {
                        Self::Repo(cause)
                    }
                    other => Self::RequestId(other),
                }
            }
        }
    };
}
