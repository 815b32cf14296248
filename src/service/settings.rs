//! Reading and changing a tenant's settings. Changes are idempotent by request id and can be
//! guarded by the revision the caller last saw.

use std::sync::Arc;

use crate::domain::access::Caller;
use crate::domain::clock::Clock;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::settings::{SettingsPatch, TenantSettings};
use crate::domain::validation::Invalid;
use crate::persistence::{IdempotencyRepository, RepoError, SettingsRepository};
use crate::service::idempotency::{IdempotencyError, prior_result};

const OPERATION: &str = "SettingsService/UpdateSettings";
/// Concurrent changes without an expected revision are retried: each round has one winner, and
/// settings changes are rare administrator calls, so a generous bound costs nothing.
const MAX_ATTEMPTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// → `INVALID_ARGUMENT` with the field violations.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A malformed request id, or one used for another call. → `INVALID_ARGUMENT` /
    /// `ALREADY_EXISTS`
    #[error(transparent)]
    RequestId(IdempotencyError),
    /// The settings moved on since the revision the caller saw. → ABORTED
    #[error("settings are at revision {actual}, not {expected}")]
    RevisionMismatch { expected: u32, actual: u32 },
    /// → UNAVAILABLE / INTERNAL by the repository error.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

crate::request_id_error!(SettingsError);

/// A change of settings as the caller asked for it.
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    pub request_id: String,
    /// A hash of the whole request, to tell a retry from a different call with the same id.
    pub request_hash: String,
    pub patch: SettingsPatch,
    /// 0: no guard.
    pub expected_revision: u32,
}

pub struct SettingsService {
    repo: Arc<dyn SettingsRepository>,
    requests: Arc<dyn IdempotencyRepository>,
    clock: Arc<dyn Clock>,
}

impl SettingsService {
    pub fn new(
        repo: Arc<dyn SettingsRepository>,
        requests: Arc<dyn IdempotencyRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            repo,
            requests,
            clock,
        }
    }

    /// The settings in force.
    ///
    /// # Errors
    /// The database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant))]
    pub async fn get(&self, caller: &Caller) -> Result<TenantSettings, SettingsError> {
        Ok(self.repo.current(&caller.tenant).await?)
    }

    /// Applies a change and returns the new settings; a retry returns the revision its first
    /// call produced.
    ///
    /// # Errors
    /// Invalid fields, a reused request id, a stale expected revision, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %command.request_id))]
    pub async fn update(
        &self,
        caller: &Caller,
        command: &UpdateSettings,
    ) -> Result<TenantSettings, SettingsError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(first) = self.replay(caller, command).await? {
                return Ok(first);
            }
            let current = self.repo.current(&caller.tenant).await?;
            if command.expected_revision != 0 && command.expected_revision != current.revision {
                return Err(SettingsError::RevisionMismatch {
                    expected: command.expected_revision,
                    actual: current.revision,
                });
            }
            let mut next = current.apply(&command.patch)?;
            next.revision = current.revision + 1;
            next.updated_at = Some(self.clock.now());
            let record = IdempotencyRecord {
                request_id: command.request_id.clone(),
                operation: OPERATION.into(),
                request_hash: command.request_hash.clone(),
                result_ref: next.revision.to_string(),
            };
            match self
                .repo
                .save(&caller.tenant, &next, &record, &caller.key_id)
                .await
            {
                Ok(()) => return Ok(next),
                // A concurrent change took this revision, or a concurrent retry took the id:
                // look again.
                Err(RepoError::Conflict(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Err(RepoError::Aborted("settings kept changing concurrently".into()).into())
    }

    /// The first result of an earlier call with the same request id, if there was one.
    async fn replay(
        &self,
        caller: &Caller,
        command: &UpdateSettings,
    ) -> Result<Option<TenantSettings>, SettingsError> {
        let prior = prior_result(
            self.requests.as_ref(),
            &caller.tenant,
            &command.request_id,
            OPERATION,
            &command.request_hash,
        )
        .await?;
        let Some(result_ref) = prior else {
            return Ok(None);
        };
        let revision = result_ref
            .parse()
            .map_err(|_| RepoError::Corrupt(format!("idempotency result {result_ref:?}")))?;
        let first = self.repo.revision(&caller.tenant, revision).await?;
        first.map(Some).ok_or_else(|| {
            RepoError::Corrupt(format!("settings revision {revision} is missing")).into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::SystemClock;
    use crate::domain::tenant::TenantId;
    use crate::persistence::{MockIdempotencyRepository, MockSettingsRepository};

    fn service(repo: MockSettingsRepository, prior: Option<IdempotencyRecord>) -> SettingsService {
        let mut requests = MockIdempotencyRepository::new();
        requests
            .expect_find()
            .returning(move |_, _| Ok(prior.clone()));
        SettingsService::new(Arc::new(repo), Arc::new(requests), Arc::new(SystemClock))
    }

    fn caller() -> Caller {
        Caller {
            tenant: TenantId::parse("acme").expect("tenant"),
            key_id: "k1".into(),
            roles: vec!["admin".into()],
            acting_for: None,
        }
    }

    fn command(expected_revision: u32) -> UpdateSettings {
        UpdateSettings {
            request_id: "r1".into(),
            request_hash: "h1".into(),
            patch: SettingsPatch {
                points_scale: Some(0),
                ..SettingsPatch::default()
            },
            expected_revision,
        }
    }

    #[tokio::test]
    async fn an_update_stores_the_next_revision_with_its_request() {
        let mut repo = MockSettingsRepository::new();
        repo.expect_current()
            .returning(|_| Ok(TenantSettings::default()));
        repo.expect_save()
            .withf(|_, s, r, key| {
                s.revision == 1 && s.points_scale == 0 && r.result_ref == "1" && key == "k1"
            })
            .times(1)
            .returning(|_, _, _, _| Ok(()));
        let service = service(repo, None);
        let next = service
            .update(&caller(), &command(0))
            .await
            .expect("updated");
        assert_eq!((next.revision, next.points_scale), (1, 0));
    }

    #[tokio::test]
    async fn a_reused_request_id_with_another_payload_is_refused_and_nothing_is_saved() {
        let mut repo = MockSettingsRepository::new();
        repo.expect_save().never();
        let prior = IdempotencyRecord {
            request_id: "r1".into(),
            operation: OPERATION.into(),
            request_hash: "other".into(),
            result_ref: "1".into(),
        };
        let service = service(repo, Some(prior));
        let err = service
            .update(&caller(), &command(0))
            .await
            .expect_err("refused");
        assert!(matches!(
            err,
            SettingsError::RequestId(IdempotencyError::Reused(_))
        ));
    }

    #[tokio::test]
    async fn a_stale_expected_revision_is_aborted() {
        let mut repo = MockSettingsRepository::new();
        repo.expect_current().returning(|_| {
            Ok(TenantSettings {
                revision: 3,
                ..TenantSettings::default()
            })
        });
        repo.expect_save().never();
        let service = service(repo, None);
        let err = service
            .update(&caller(), &command(2))
            .await
            .expect_err("stale");
        assert!(matches!(
            err,
            SettingsError::RevisionMismatch {
                expected: 2,
                actual: 3
            }
        ));
    }

    #[tokio::test]
    async fn a_bad_request_id_changes_nothing() {
        let mut repo = MockSettingsRepository::new();
        repo.expect_save().never();
        let service = service(repo, None);
        let mut cmd = command(0);
        cmd.request_id = String::new();
        assert!(matches!(
            service.update(&caller(), &cmd).await,
            Err(SettingsError::RequestId(IdempotencyError::InvalidRequestId))
        ));
    }
}
