//! Loyalty consent: recording users' accept / withdraw events, publishing agreement versions,
//! and answering when a client counted as agreed. `eligible_on` is the question earning asks.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::access::Caller;
use crate::domain::calendar::{end_of_day, start_of_day};
use crate::domain::clock::Clock;
use crate::domain::consent::{
    AgreementVersion, ConsentAction, ConsentEvent, ConsentOutcome, EligibilityProbe,
    UserConsentState, eligible_days, user_consent_at,
};
use crate::domain::directory::UserRecord;
use crate::domain::idempotency::{IdempotencyRecord, valid_request_id};
use crate::domain::intervals::Interval;
use crate::domain::tenant::TenantId;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::persistence::{
    AgreementRepository, DirectoryRepository, IdempotencyRepository, RepoError, SettingsRepository,
};
use crate::service::idempotency::{IdempotencyError, prior_result};

const RECORD: &str = "AgreementService/RecordConsentEvents";
const PUBLISH: &str = "AgreementService/PublishAgreementVersion";
/// Events per `RecordConsentEvents` call.
pub const MAX_EVENTS_PER_CALL: usize = 1_000;
/// Days per eligibility query (a leap year).
pub const MAX_ELIGIBILITY_DAYS: i64 = 366;

#[derive(Debug, thiserror::Error)]
pub enum AgreementError {
    /// → `INVALID_ARGUMENT` with the field violations.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// An unknown user or client. → `NOT_FOUND`
    #[error("{0} not found")]
    NotFound(String),
    /// → `INVALID_ARGUMENT` / `ALREADY_EXISTS`
    #[error(transparent)]
    RequestId(IdempotencyError),
    /// An event id recorded before with other content. → `ALREADY_EXISTS`
    #[error("{0}")]
    EventIdReused(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

crate::request_id_error!(AgreementError);

/// A consent event as a caller sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConsent {
    pub event_id: String,
    pub user_id: String,
    pub action: ConsentAction,
    pub occurred_at: DateTime<Utc>,
    /// The tenant's configured type when empty.
    pub declaration_type_id: String,
    pub agreement_version: u32,
    pub source: String,
    /// When given, must be the user's client.
    pub client_id: String,
}

#[derive(Debug, Clone)]
pub struct RecordConsents {
    pub request_id: String,
    pub request_hash: String,
    pub events: Vec<NewConsent>,
}

#[derive(Debug, Clone)]
pub struct PublishVersion {
    pub request_id: String,
    pub request_hash: String,
    /// The tenant's configured type when empty.
    pub declaration_type_id: String,
    pub version: u32,
    /// Now when unset.
    pub published_at: Option<DateTime<Utc>>,
    pub title: String,
    pub content_url: String,
}

/// A user's consent now, with who the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConsent {
    pub user: UserRecord,
    pub state: UserConsentState,
}

/// When a client counted as agreed within a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEligibility {
    pub intervals: Vec<Interval>,
    pub eligible_days: Vec<NaiveDate>,
}

pub struct AgreementService {
    repo: Arc<dyn AgreementRepository>,
    directory: Arc<dyn DirectoryRepository>,
    settings: Arc<dyn SettingsRepository>,
    requests: Arc<dyn IdempotencyRepository>,
    clock: Arc<dyn Clock>,
}

impl AgreementService {
    pub fn new(
        repo: Arc<dyn AgreementRepository>,
        directory: Arc<dyn DirectoryRepository>,
        settings: Arc<dyn SettingsRepository>,
        requests: Arc<dyn IdempotencyRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            repo,
            directory,
            settings,
            requests,
            clock,
        }
    }

    /// Records accept / withdraw events; a retry answers with the first call's outcomes.
    ///
    /// # Errors
    /// Invalid events, an unknown user, a reused request or event id, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %command.request_id))]
    pub async fn record_consents(
        &self,
        caller: &Caller,
        command: &RecordConsents,
    ) -> Result<Vec<ConsentOutcome>, AgreementError> {
        if let Some(first) = self
            .prior(caller, &command.request_id, RECORD, &command.request_hash)
            .await?
        {
            return decode_outcomes(&first);
        }
        check_events(&command.events)?;
        let configured = self
            .settings
            .current(&caller.tenant)
            .await?
            .declaration_type_id;
        let users = self.users_of(&caller.tenant, &command.events).await?;
        let now = self.clock.now();
        let mut violations = Vec::new();
        let mut events = Vec::with_capacity(command.events.len());
        for (i, new) in command.events.iter().enumerate() {
            let client_id = users[&new.user_id].client_id.clone();
            if !new.client_id.is_empty() && new.client_id != client_id {
                violations.push(FieldViolation::new(
                    format!("events[{i}].client_id"),
                    format!("user {} belongs to client {client_id}", new.user_id),
                ));
            }
            events.push(ConsentEvent {
                event_id: new.event_id.clone(),
                user_id: new.user_id.clone(),
                client_id,
                action: new.action,
                occurred_at: new.occurred_at,
                declaration_type_id: if new.declaration_type_id.is_empty() {
                    configured.clone()
                } else {
                    new.declaration_type_id.clone()
                },
                agreement_version: new.agreement_version,
                source: if new.source.is_empty() {
                    "api".to_owned()
                } else {
                    new.source.clone()
                },
                recorded_at: now,
            });
        }
        Invalid::check(violations)?;
        let record = Self::record(
            &command.request_id,
            RECORD,
            &command.request_hash,
            String::new(),
        );
        match self
            .repo
            .record_consents(&caller.tenant, &events, &record)
            .await
        {
            Ok(outcomes) => Ok(outcomes),
            Err(RepoError::Conflict(cause)) => match self
                .prior(caller, &command.request_id, RECORD, &command.request_hash)
                .await?
            {
                Some(first) => decode_outcomes(&first),
                None => Err(AgreementError::EventIdReused(cause)),
            },
            Err(other) => Err(other.into()),
        }
    }

    /// Publishes a version; from its publication instant acceptances of older versions end.
    ///
    /// # Errors
    /// A version number not above the latest, a publication before the latest, a reused request
    /// id, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, request_id = %command.request_id))]
    pub async fn publish_version(
        &self,
        caller: &Caller,
        command: &PublishVersion,
    ) -> Result<AgreementVersion, AgreementError> {
        let declaration_type = self
            .declaration_type(&caller.tenant, &command.declaration_type_id)
            .await?;
        if self
            .prior(caller, &command.request_id, PUBLISH, &command.request_hash)
            .await?
            .is_some()
        {
            return self
                .published(&caller.tenant, &declaration_type, command.version)
                .await;
        }
        let existing = self
            .repo
            .versions(&caller.tenant, &declaration_type)
            .await?;
        let version = AgreementVersion {
            declaration_type_id: declaration_type.clone(),
            version: command.version,
            published_at: command.published_at.unwrap_or_else(|| self.clock.now()),
            title: command.title.trim().to_owned(),
            content_url: command.content_url.trim().to_owned(),
        };
        check_version(&version, existing.last())?;
        let record = Self::record(
            &command.request_id,
            PUBLISH,
            &command.request_hash,
            command.version.to_string(),
        );
        match self
            .repo
            .publish_version(&caller.tenant, &version, &record)
            .await
        {
            Ok(()) => Ok(version),
            Err(RepoError::Conflict(_)) => {
                if self
                    .prior(caller, &command.request_id, PUBLISH, &command.request_hash)
                    .await?
                    .is_some()
                {
                    return self
                        .published(&caller.tenant, &declaration_type, command.version)
                        .await;
                }
                Err(Invalid::field(
                    "version.version",
                    format!("version {} was published concurrently", command.version),
                )
                .into())
            }
            Err(other) => Err(other.into()),
        }
    }

    /// The versions of a declaration type, oldest first.
    ///
    /// # Errors
    /// The database.
    pub async fn versions(
        &self,
        caller: &Caller,
        declaration_type_id: &str,
    ) -> Result<Vec<AgreementVersion>, AgreementError> {
        let declaration_type = self
            .declaration_type(&caller.tenant, declaration_type_id)
            .await?;
        Ok(self
            .repo
            .versions(&caller.tenant, &declaration_type)
            .await?)
    }

    /// A user's consent now.
    ///
    /// # Errors
    /// An unknown user, or the database.
    pub async fn user_consent(
        &self,
        caller: &Caller,
        user_id: &str,
    ) -> Result<UserConsent, AgreementError> {
        let user = self.user(&caller.tenant, user_id).await?;
        let declaration_type = self
            .settings
            .current(&caller.tenant)
            .await?
            .declaration_type_id;
        let events = self
            .repo
            .user_events(&caller.tenant, user_id, &declaration_type)
            .await?;
        let versions = self
            .repo
            .versions(&caller.tenant, &declaration_type)
            .await?;
        let state = user_consent_at(&user.facts(), &events, &versions, self.clock.now());
        Ok(UserConsent { user, state })
    }

    /// A page of a user's events, newest first, and the position of the next page.
    ///
    /// # Errors
    /// An unknown user, or the database.
    pub async fn user_history(
        &self,
        caller: &Caller,
        user_id: &str,
        before: Option<(DateTime<Utc>, String)>,
        page_size: u64,
    ) -> Result<(Vec<ConsentEvent>, Option<(DateTime<Utc>, String)>), AgreementError> {
        self.user(&caller.tenant, user_id).await?;
        let mut events = self
            .repo
            .user_history_page(&caller.tenant, user_id, before, page_size + 1)
            .await?;
        let next = if events.len() as u64 > page_size {
            events.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
            events.last().map(|e| (e.occurred_at, e.event_id.clone()))
        } else {
            None
        };
        Ok((events, next))
    }

    /// When a client counted as agreed from `first` to `last` (inclusive days).
    ///
    /// # Errors
    /// Days out of order or too far apart, an unknown client, or the database.
    pub async fn client_eligibility(
        &self,
        caller: &Caller,
        client_id: &str,
        first: NaiveDate,
        last: NaiveDate,
    ) -> Result<ClientEligibility, AgreementError> {
        if last < first {
            return Err(Invalid::field("to_date", "must not be before from_date").into());
        }
        if (last - first).num_days() >= MAX_ELIGIBILITY_DAYS {
            return Err(Invalid::field(
                "to_date",
                format!("a query spans at most {MAX_ELIGIBILITY_DAYS} days"),
            )
            .into());
        }
        if self
            .directory
            .client(&caller.tenant, client_id)
            .await?
            .is_none()
        {
            return Err(AgreementError::NotFound(format!("client {client_id}")));
        }
        let settings = self.settings.current(&caller.tenant).await?;
        let (from, to) = (
            start_of_day(settings.time_zone, first),
            end_of_day(settings.time_zone, last),
        );
        let intervals = self
            .repo
            .eligibility(
                &caller.tenant,
                &settings.declaration_type_id,
                client_id,
                from,
                to,
            )
            .await?;
        let eligible_days = eligible_days(&intervals, settings.time_zone, first, last);
        let intervals = intervals
            .iter()
            .map(|i| i.clip(from, to))
            .filter(|i| !i.is_empty())
            .collect();
        Ok(ClientEligibility {
            intervals,
            eligible_days,
        })
    }

    /// Whether a client counted as agreed on a day of the tenant's calendar: the state at the end
    /// of the day, under the configured declaration type. One index probe. (An earn asks the
    /// same in its client read: `RulesRepository::priced_client`.)
    ///
    /// # Errors
    /// The database.
    pub async fn eligible_on(
        &self,
        tenant: &TenantId,
        client_id: &str,
        day: NaiveDate,
    ) -> Result<bool, AgreementError> {
        let settings = self.settings.current(tenant).await?;
        let probe = EligibilityProbe::end_of(&settings, day);
        Ok(self.repo.holds_until(tenant, client_id, &probe).await?)
    }

    /// Replaces a user's id with a pseudonym everywhere it is kept (GDPR). The pseudonym is a
    /// keyed hash, the same for a retry, and not reversible without the original id.
    ///
    /// # Errors
    /// A missing user id, an unknown user, a reused request id, or the database.
    pub async fn anonymize_user(
        &self,
        caller: &Caller,
        request_id: &str,
        request_hash: &str,
        user_id: &str,
    ) -> Result<String, AgreementError> {
        const OP: &str = "AgreementService/AnonymizeUser";
        if let Some(pseudonym) = self.prior(caller, request_id, OP, request_hash).await? {
            return Ok(pseudonym);
        }
        let user_id = user_id.trim();
        if user_id.is_empty() {
            return Err(Invalid::field("user_id", "is required").into());
        }
        let pseudonym = pseudonym_of(&caller.tenant, user_id);
        let record = IdempotencyRecord {
            request_id: request_id.to_owned(),
            operation: OP.into(),
            request_hash: request_hash.to_owned(),
            result_ref: String::new(),
        };
        match self
            .repo
            .anonymize_user(&caller.tenant, user_id, &pseudonym, &record)
            .await
        {
            Ok(true) => Ok(pseudonym),
            Ok(false) => Err(AgreementError::NotFound(format!("user {user_id}"))),
            Err(RepoError::Conflict(cause)) => {
                match self.prior(caller, request_id, OP, request_hash).await? {
                    Some(pseudonym) => Ok(pseudonym),
                    None => Err(RepoError::Aborted(cause).into()),
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn prior(
        &self,
        caller: &Caller,
        request_id: &str,
        operation: &str,
        hash: &str,
    ) -> Result<Option<String>, AgreementError> {
        Ok(prior_result(
            self.requests.as_ref(),
            &caller.tenant,
            request_id,
            operation,
            hash,
        )
        .await?)
    }

    fn record(
        request_id: &str,
        operation: &str,
        hash: &str,
        result_ref: String,
    ) -> IdempotencyRecord {
        IdempotencyRecord {
            request_id: request_id.to_owned(),
            operation: operation.to_owned(),
            request_hash: hash.to_owned(),
            result_ref,
        }
    }

    async fn declaration_type(
        &self,
        tenant: &TenantId,
        given: &str,
    ) -> Result<String, AgreementError> {
        if given.is_empty() {
            Ok(self.settings.current(tenant).await?.declaration_type_id)
        } else {
            Ok(given.to_owned())
        }
    }

    async fn published(
        &self,
        tenant: &TenantId,
        declaration_type: &str,
        version: u32,
    ) -> Result<AgreementVersion, AgreementError> {
        self.repo
            .versions(tenant, declaration_type)
            .await?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                RepoError::Corrupt(format!("published version {version} is missing")).into()
            })
    }

    async fn user(&self, tenant: &TenantId, user_id: &str) -> Result<UserRecord, AgreementError> {
        self.directory
            .user(tenant, user_id)
            .await?
            .ok_or_else(|| AgreementError::NotFound(format!("user {user_id}")))
    }

    async fn users_of(
        &self,
        tenant: &TenantId,
        events: &[NewConsent],
    ) -> Result<BTreeMap<String, UserRecord>, AgreementError> {
        let mut users = BTreeMap::new();
        for event in events {
            if !users.contains_key(&event.user_id) {
                users.insert(
                    event.user_id.clone(),
                    self.user(tenant, &event.user_id).await?,
                );
            }
        }
        Ok(users)
    }
}

fn decode_outcomes(codes: &str) -> Result<Vec<ConsentOutcome>, AgreementError> {
    codes
        .chars()
        .map(|c| {
            ConsentOutcome::from_code(c)
                .ok_or_else(|| RepoError::Corrupt(format!("consent outcomes {codes:?}")).into())
        })
        .collect()
}

/// The checks on a batch of events that need nothing stored.
fn check_events(events: &[NewConsent]) -> Result<(), Invalid> {
    let mut found = Vec::new();
    if events.is_empty() || events.len() > MAX_EVENTS_PER_CALL {
        found.push(FieldViolation::new(
            "events",
            format!("must hold 1 to {MAX_EVENTS_PER_CALL} events"),
        ));
    }
    let mut seen: BTreeMap<&str, &NewConsent> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        let field = |name: &str| format!("events[{i}].{name}");
        if !valid_request_id(&event.event_id) {
            found.push(FieldViolation::new(
                field("event_id"),
                "must be 1 to 128 printable ASCII characters",
            ));
        }
        if event.user_id.trim().is_empty() {
            found.push(FieldViolation::new(field("user_id"), "is required"));
        }
        if event.agreement_version == 0 {
            found.push(FieldViolation::new(
                field("agreement_version"),
                "must be 1 or more",
            ));
        }
        if event.source.len() > 64 {
            found.push(FieldViolation::new(
                field("source"),
                "must be at most 64 characters",
            ));
        }
        if seen
            .insert(&event.event_id, event)
            .is_some_and(|other| other != event)
        {
            found.push(FieldViolation::new(
                field("event_id"),
                "appears twice with different content",
            ));
        }
    }
    Invalid::check(found)
}

fn check_version(
    version: &AgreementVersion,
    latest: Option<&AgreementVersion>,
) -> Result<(), Invalid> {
    let mut found = Vec::new();
    if version.version == 0 {
        found.push(FieldViolation::new("version.version", "must be 1 or more"));
    }
    if let Some(latest) = latest {
        if version.version <= latest.version {
            found.push(FieldViolation::new(
                "version.version",
                format!(
                    "must be greater than {}, the latest version",
                    latest.version
                ),
            ));
        }
        if version.published_at <= latest.published_at {
            found.push(FieldViolation::new(
                "version.published_at",
                format!(
                    "must be after {}, when version {} was published",
                    latest.published_at.to_rfc3339(),
                    latest.version
                ),
            ));
        }
    }
    if version.title.len() > 200 {
        found.push(FieldViolation::new(
            "version.title",
            "must be at most 200 characters",
        ));
    }
    if version.content_url.len() > 2048 {
        found.push(FieldViolation::new(
            "version.content_url",
            "must be at most 2048 characters",
        ));
    }
    Invalid::check(found)
}

#[cfg(test)]
#[path = "agreements_tests.rs"]
mod tests;

/// A user's pseudonym: a hash of the tenant and the user id, so that the same user always gets
/// the same one and nothing in it names the person.
fn pseudonym_of(tenant: &TenantId, user_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}:{user_id}", tenant.as_str()).as_bytes());
    format!("anon-{}", &hex::encode(digest)[..24])
}
