//! Every service error mapped to a gRPC status, by exhaustive matches. Internal causes are
//! logged and never sent.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::rules::LifecycleError;
use crate::domain::validation::Invalid;
use crate::persistence::RepoError;
use crate::service::access::AccessError;
use crate::service::agreements::AgreementError;
use crate::service::coupons::CouponError;
use crate::service::earn::EarnError;
use crate::service::idempotency::IdempotencyError;
use crate::service::import::ImportError;
use crate::service::ledger::LedgerError;
use crate::service::redeem::RedeemError;
use crate::service::rules::RulesError;
use crate::service::settings::SettingsError;
use crate::service::sync::{GatewayError, SyncError};

/// `INVALID_ARGUMENT` with one field violation per bad field.
pub fn invalid(invalid: &Invalid) -> Status {
    let violations: Vec<FieldViolation> = invalid
        .0
        .iter()
        .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        invalid.to_string(),
        ErrorDetails::with_bad_request(violations),
    )
}

/// A repository error that reached the transport.
pub fn repo(err: &RepoError) -> Status {
    match err {
        RepoError::Unavailable(cause) => {
            tracing::warn!(%cause, "database unavailable");
            Status::unavailable("the database is unavailable; retry later")
        }
        RepoError::Aborted(cause) => {
            tracing::info!(%cause, "transaction aborted");
            Status::aborted("a concurrent change won; retry")
        }
        RepoError::Conflict(cause) => {
            tracing::info!(%cause, "unexpected conflict");
            Status::aborted("a concurrent change won; retry")
        }
        RepoError::Stale(cause) => {
            tracing::info!(%cause, "planned from data changed since");
            Status::aborted("a concurrent change won; retry")
        }
        RepoError::Precondition(why) => Status::failed_precondition(why.clone()),
        RepoError::Corrupt(cause) | RepoError::Config(cause) | RepoError::Other(cause) => {
            internal(cause)
        }
    }
}

/// A request id that is malformed or was used for another request.
pub fn request_id(err: &IdempotencyError) -> Status {
    match err {
        IdempotencyError::InvalidRequestId => {
            invalid(&Invalid::field("request_id", err.to_string()))
        }
        IdempotencyError::Reused(_) => Status::already_exists(err.to_string()),
        IdempotencyError::Repo(cause) => repo(cause),
    }
}

/// INTERNAL with a generic message; the cause goes to the log.
pub fn internal(cause: &str) -> Status {
    tracing::error!(%cause, "internal error");
    Status::internal("internal error")
}

impl From<SettingsError> for Status {
    fn from(err: SettingsError) -> Self {
        match &err {
            SettingsError::Invalid(found) => invalid(found),
            SettingsError::RequestId(cause) => request_id(cause),
            SettingsError::RevisionMismatch { .. } => Status::aborted(err.to_string()),
            SettingsError::Repo(cause) => repo(cause),
        }
    }
}

impl From<AccessError> for Status {
    fn from(err: AccessError) -> Self {
        match &err {
            AccessError::Unauthenticated(msg) => Status::unauthenticated(msg.clone()),
            AccessError::PermissionDenied(msg) => Status::permission_denied(msg.clone()),
            AccessError::Invalid(msg) => Status::invalid_argument(msg.clone()),
            AccessError::Repo(cause) => repo(cause),
        }
    }
}

impl From<AgreementError> for Status {
    fn from(err: AgreementError) -> Self {
        match &err {
            AgreementError::Invalid(found) => invalid(found),
            AgreementError::NotFound(_) => Status::not_found(err.to_string()),
            AgreementError::RequestId(cause) => request_id(cause),
            AgreementError::EventIdReused(_) => Status::already_exists(err.to_string()),
            AgreementError::Repo(cause) => repo(cause),
        }
    }
}

impl From<RulesError> for Status {
    fn from(err: RulesError) -> Self {
        match &err {
            RulesError::Invalid(found) => invalid(found),
            RulesError::Lifecycle(
                LifecycleError::NoSuchRule(_) | LifecycleError::NoSuchVersion { .. },
            ) => Status::not_found(err.to_string()),
            RulesError::Lifecycle(
                LifecycleError::Archived(_) | LifecycleError::NotADraft { .. },
            ) => Status::failed_precondition(err.to_string()),
            RulesError::RequestId(cause) => request_id(cause),
            RulesError::Repo(cause) => repo(cause),
        }
    }
}

impl From<LedgerError> for Status {
    fn from(err: LedgerError) -> Self {
        match &err {
            LedgerError::Invalid(found) => invalid(found),
            LedgerError::NotFound(_) => Status::not_found(err.to_string()),
            LedgerError::RequestId(cause) => request_id(cause),
            LedgerError::Repo(cause) => repo(cause),
        }
    }
}

impl From<EarnError> for Status {
    fn from(err: EarnError) -> Self {
        match &err {
            EarnError::Invalid(found) => invalid(found),
            EarnError::NotFound(_) => Status::not_found(err.to_string()),
            EarnError::DocumentChanged(_) => Status::already_exists(err.to_string()),
            EarnError::Repo(cause) => repo(cause),
        }
    }
}

impl From<CouponError> for Status {
    fn from(err: CouponError) -> Self {
        match &err {
            CouponError::Invalid(found) => invalid(found),
            CouponError::NotFound(_) => Status::not_found(err.to_string()),
            CouponError::NameTaken(_) => Status::already_exists(err.to_string()),
            CouponError::RevisionMismatch { .. } => Status::aborted(err.to_string()),
            CouponError::RequestId(cause) => request_id(cause),
            CouponError::Repo(cause) => repo(cause),
        }
    }
}

impl From<RedeemError> for Status {
    fn from(err: RedeemError) -> Self {
        match &err {
            RedeemError::Invalid(found) => invalid(found),
            RedeemError::NotFound(_) => Status::not_found(err.to_string()),
            RedeemError::Refused(why) => Status::failed_precondition(why.clone()),
            RedeemError::RequestId(cause) => request_id(cause),
            RedeemError::Repo(cause) => repo(cause),
        }
    }
}

impl From<SyncError> for Status {
    fn from(err: SyncError) -> Self {
        match &err {
            SyncError::Gateway(GatewayError::NotConfigured) => {
                Status::failed_precondition(err.to_string())
            }
            SyncError::Gateway(GatewayError::Unavailable(_)) => {
                Status::unavailable(err.to_string())
            }
            SyncError::Gateway(GatewayError::Malformed(cause)) => internal(cause),
            SyncError::Repo(cause) => repo(cause),
        }
    }
}

impl From<ImportError> for Status {
    fn from(err: ImportError) -> Self {
        match err {
            ImportError::Invalid(found) => invalid(&found),
            ImportError::Earn(cause) => cause.into(),
        }
    }
}
