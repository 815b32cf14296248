//! The tenant's points rules: base points (bulk, effective-dated), multiplier rules through their
//! life cycle, and segment rates. Every change is idempotent by request id.

use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::domain::access::Caller;
use crate::domain::calendar::day_of;
use crate::domain::clock::Clock;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::rule_spec::{RuleSpec, check_base_points, factor_problem};
use crate::domain::rules::{
    EditPlan, EffectiveDated, LifecycleError, MultiplierRule, RuleStatus, RuleTarget, StoredRule,
    check_publish, plan_edit,
};
use crate::domain::tenant::TenantId;
use crate::domain::validation::Invalid;
use crate::persistence::{IdempotencyRepository, RepoError, RulesRepository, SettingsRepository};
use crate::service::idempotency::{IdempotencyError, RequestKey, prior_result};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// → `INVALID_ARGUMENT`
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// An unknown rule or version → `NOT_FOUND`; an archived rule or a non-draft publication →
    /// `FAILED_PRECONDITION`.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// → `INVALID_ARGUMENT` / `ALREADY_EXISTS`
    #[error(transparent)]
    RequestId(IdempotencyError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

crate::request_id_error!(RulesError);

/// A dated value as listed: from its day until the next entry's day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatedValue {
    pub key: String,
    pub value: Decimal,
    pub effective_from: NaiveDate,
    pub effective_until: Option<NaiveDate>,
}

/// What to read of a dated book: the value in force on a day, or every entry.
#[derive(Debug, Clone, Copy)]
pub enum DatedView {
    AsOf(Option<NaiveDate>),
    History,
}

pub struct RulesService {
    repo: Arc<dyn RulesRepository>,
    settings: Arc<dyn SettingsRepository>,
    requests: Arc<dyn IdempotencyRepository>,
    clock: Arc<dyn Clock>,
}

impl RulesService {
    pub fn new(
        repo: Arc<dyn RulesRepository>,
        settings: Arc<dyn SettingsRepository>,
        requests: Arc<dyn IdempotencyRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            repo,
            settings,
            requests,
            clock,
        }
    }

    /// Sets base points for many products from a day on; returns how many.
    ///
    /// # Errors
    /// Bad entries, a reused request id, or the database.
    pub async fn set_base_points(
        &self,
        caller: &Caller,
        key: &RequestKey,
        effective_from: NaiveDate,
        entries: &[(String, Decimal)],
    ) -> Result<u32, RulesError> {
        const OP: &str = "RulesService/SetBasePoints";
        let count = || u32::try_from(entries.len()).unwrap_or(u32::MAX);
        if self.prior(caller, key, OP).await?.is_some() {
            return Ok(count());
        }
        check_base_points(entries)?;
        let record = record(key, OP, count().to_string());
        self.with_replay(
            caller,
            key,
            OP,
            self.repo
                .set_base_points(&caller.tenant, effective_from, entries, &record),
        )
        .await?;
        Ok(count())
    }

    /// Base points of the named products, or a page of all products with base points.
    ///
    /// # Errors
    /// The database.
    pub async fn base_points(
        &self,
        caller: &Caller,
        product_ids: &[String],
        view: DatedView,
        after: Option<String>,
        page_size: u64,
    ) -> Result<(Vec<DatedValue>, Option<String>), RulesError> {
        let (books, next) = if product_ids.is_empty() {
            let page = self
                .repo
                .base_points_page(&caller.tenant, after, page_size + 1)
                .await?;
            paged(page, page_size)
        } else {
            let mut books = self.repo.base_points(&caller.tenant, product_ids).await?;
            (
                product_ids
                    .iter()
                    .filter_map(|id| books.remove(id).map(|b| (id.clone(), b)))
                    .collect(),
                None,
            )
        };
        Ok((self.dated(caller, books, view).await?, next))
    }

    /// Creates a rule as draft version 1.
    ///
    /// # Errors
    /// An invalid spec, a reused request id, or the database.
    pub async fn create_rule(
        &self,
        caller: &Caller,
        key: &RequestKey,
        spec: RuleSpec,
    ) -> Result<StoredRule, RulesError> {
        const OP: &str = "RulesService/CreateMultiplierRule";
        if let Some(rule_id) = self.prior(caller, key, OP).await? {
            return self.version(&caller.tenant, &rule_id, 1).await;
        }
        spec.check("spec.")?;
        let rule = self.stored(format!("rule_{}", super::random_id()), 1, spec, None);
        let record = record(key, OP, rule.rule.rule_id.clone());
        self.with_replay(
            caller,
            key,
            OP,
            self.repo.save_rule(&caller.tenant, &rule, &record),
        )
        .await?;
        Ok(rule)
    }

    /// Edits a rule: a draft in place, a published rule as its next version.
    ///
    /// # Errors
    /// An invalid spec, an unknown or archived rule, a reused request id, or the database.
    pub async fn update_rule(
        &self,
        caller: &Caller,
        key: &RequestKey,
        rule_id: &str,
        spec: RuleSpec,
    ) -> Result<StoredRule, RulesError> {
        const OP: &str = "RulesService/UpdateMultiplierRule";
        if let Some(version) = self.prior(caller, key, OP).await? {
            return self
                .version(&caller.tenant, rule_id, parse_version(&version)?)
                .await;
        }
        spec.check("spec.")?;
        let versions = self.repo.rule_versions(&caller.tenant, rule_id).await?;
        let (version, created_at) = match plan_edit(rule_id, &versions)? {
            EditPlan::ReplaceDraft { version } => (version, versions.last().map(|v| v.created_at)),
            EditPlan::NewVersion { version } => (version, None),
        };
        let rule = self.stored(rule_id.to_owned(), version, spec, created_at);
        let record = record(key, OP, version.to_string());
        self.with_replay(
            caller,
            key,
            OP,
            self.repo.save_rule(&caller.tenant, &rule, &record),
        )
        .await?;
        Ok(rule)
    }

    /// Publishes a draft; the version in force is archived.
    ///
    /// # Errors
    /// An unknown rule or version, a non-draft, a reused request id, or the database.
    pub async fn publish_rule(
        &self,
        caller: &Caller,
        key: &RequestKey,
        rule_id: &str,
        version: u32,
    ) -> Result<StoredRule, RulesError> {
        const OP: &str = "RulesService/PublishMultiplierRule";
        if self.prior(caller, key, OP).await?.is_none() {
            check_publish(
                rule_id,
                &self.repo.rule_versions(&caller.tenant, rule_id).await?,
                version,
            )?;
            let record = record(key, OP, version.to_string());
            let change = self.repo.change_status(
                &caller.tenant,
                rule_id,
                Some(version),
                self.clock.now(),
                &record,
            );
            self.with_replay(caller, key, OP, change).await?;
        }
        self.version(&caller.tenant, rule_id, version).await
    }

    /// Archives every version of a rule; it no longer applies to new documents.
    ///
    /// # Errors
    /// An unknown rule, a reused request id, or the database.
    pub async fn archive_rule(
        &self,
        caller: &Caller,
        key: &RequestKey,
        rule_id: &str,
    ) -> Result<StoredRule, RulesError> {
        const OP: &str = "RulesService/ArchiveMultiplierRule";
        if self.prior(caller, key, OP).await?.is_none() {
            if self
                .repo
                .rule_versions(&caller.tenant, rule_id)
                .await?
                .is_empty()
            {
                return Err(LifecycleError::NoSuchRule(rule_id.to_owned()).into());
            }
            let record = record(key, OP, rule_id.to_owned());
            let change =
                self.repo
                    .change_status(&caller.tenant, rule_id, None, self.clock.now(), &record);
            self.with_replay(caller, key, OP, change).await?;
        }
        let versions = self.versions(&caller.tenant, rule_id).await?;
        versions
            .into_iter()
            .next_back()
            .ok_or_else(|| LifecycleError::NoSuchRule(rule_id.to_owned()).into())
    }

    /// Every version of a rule, oldest first.
    ///
    /// # Errors
    /// An unknown rule, or the database.
    pub async fn versions(
        &self,
        tenant: &TenantId,
        rule_id: &str,
    ) -> Result<Vec<StoredRule>, RulesError> {
        let versions = self.repo.rule_versions(tenant, rule_id).await?;
        if versions.is_empty() {
            return Err(LifecycleError::NoSuchRule(rule_id.to_owned()).into());
        }
        Ok(versions)
    }

    /// A page of rules, one version each: the newest with `status` when given, else the latest;
    /// filtered by target and by a day inside the window.
    ///
    /// # Errors
    /// The database.
    pub async fn list_rules(
        &self,
        caller: &Caller,
        status: Option<RuleStatus>,
        target: Option<RuleTarget>,
        active_on: Option<NaiveDate>,
        after: Option<String>,
        page_size: u64,
    ) -> Result<(Vec<StoredRule>, Option<String>), RulesError> {
        let (repo, tenant) = (&self.repo, &caller.tenant);
        let fetch = move |after| repo.rules_page(tenant, after, page_size);
        let key = |versions: &Vec<StoredRule>| {
            versions
                .last()
                .map(|v| v.rule.rule_id.clone())
                .unwrap_or_default()
        };
        let keep = |versions: Vec<StoredRule>| {
            let chosen = versions
                .into_iter()
                .rev()
                .find(|v| status.is_none_or(|s| v.rule.status == s));
            chosen.filter(|v| {
                target.as_ref().is_none_or(|t| v.rule.targets.contains(t))
                    && active_on.is_none_or(|d| v.rule.in_window(d))
            })
        };
        Ok(super::filtered_page(page_size, after, fetch, key, keep).await?)
    }

    /// Sets a segment's rate from a day on.
    ///
    /// # Errors
    /// A bad rate or segment id, a reused request id, or the database.
    pub async fn set_segment_rate(
        &self,
        caller: &Caller,
        key: &RequestKey,
        segment_id: &str,
        rate: Decimal,
        effective_from: NaiveDate,
    ) -> Result<(), RulesError> {
        const OP: &str = "RulesService/SetSegmentRate";
        if self.prior(caller, key, OP).await?.is_some() {
            return Ok(());
        }
        let mut found = Vec::new();
        if segment_id.trim().is_empty() || segment_id.len() > 128 {
            found.push(crate::domain::validation::FieldViolation::new(
                "segment_id",
                "must be 1 to 128 characters",
            ));
        }
        if let Some(problem) = factor_problem(rate) {
            found.push(crate::domain::validation::FieldViolation::new(
                "rate", problem,
            ));
        }
        Invalid::check(found)?;
        let record = record(key, OP, segment_id.to_owned());
        let change =
            self.repo
                .set_segment_rate(&caller.tenant, segment_id, effective_from, rate, &record);
        self.with_replay(caller, key, OP, change).await
    }

    /// Segment rates, of one segment or all.
    ///
    /// # Errors
    /// The database.
    pub async fn segment_rates(
        &self,
        caller: &Caller,
        segment_id: Option<String>,
        view: DatedView,
    ) -> Result<Vec<DatedValue>, RulesError> {
        let mut books: Vec<(String, EffectiveDated)> = self
            .repo
            .segment_rates(&caller.tenant, segment_id.map(|s| vec![s]))
            .await?
            .into_iter()
            .collect();
        books.sort_by(|a, b| a.0.cmp(&b.0));
        self.dated(caller, books, view).await
    }

    async fn dated(
        &self,
        caller: &Caller,
        books: Vec<(String, EffectiveDated)>,
        view: DatedView,
    ) -> Result<Vec<DatedValue>, RulesError> {
        let as_of = match view {
            DatedView::History => None,
            DatedView::AsOf(Some(day)) => Some(day),
            DatedView::AsOf(None) => Some(day_of(
                self.settings.current(&caller.tenant).await?.time_zone,
                self.clock.now(),
            )),
        };
        Ok(books
            .into_iter()
            .flat_map(|(key, book)| dated_values(&key, &book, as_of))
            .collect())
    }

    fn stored(
        &self,
        rule_id: String,
        version: u32,
        spec: RuleSpec,
        created_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> StoredRule {
        StoredRule {
            rule: MultiplierRule {
                rule_id,
                version,
                status: RuleStatus::Draft,
                name: spec.name.trim().to_owned(),
                description: spec.description,
                targets: spec.targets,
                factor: spec.factor.normalize(),
                valid_from: spec.valid_from,
                valid_until: spec.valid_until,
                segment_ids: spec.segment_ids,
                channel: spec.channel,
            },
            created_at: created_at.unwrap_or_else(|| self.clock.now()),
            published_at: None,
            archived_at: None,
        }
    }

    async fn version(
        &self,
        tenant: &TenantId,
        rule_id: &str,
        version: u32,
    ) -> Result<StoredRule, RulesError> {
        self.versions(tenant, rule_id)
            .await?
            .into_iter()
            .find(|v| v.rule.version == version)
            .ok_or_else(|| {
                LifecycleError::NoSuchVersion {
                    rule_id: rule_id.to_owned(),
                    version,
                }
                .into()
            })
    }

    async fn prior(
        &self,
        caller: &Caller,
        key: &RequestKey,
        operation: &str,
    ) -> Result<Option<String>, RulesError> {
        Ok(prior_result(
            self.requests.as_ref(),
            &caller.tenant,
            &key.request_id,
            operation,
            &key.request_hash,
        )
        .await?)
    }

    /// Runs a write; when it conflicts because a concurrent retry of the same request won, that
    /// is success.
    async fn with_replay(
        &self,
        caller: &Caller,
        key: &RequestKey,
        operation: &str,
        write: impl Future<Output = Result<(), RepoError>>,
    ) -> Result<(), RulesError> {
        match write.await {
            Err(RepoError::Conflict(cause)) => match self.prior(caller, key, operation).await? {
                Some(_) => Ok(()),
                None => Err(RepoError::Aborted(cause).into()),
            },
            other => Ok(other?),
        }
    }
}

fn record(key: &RequestKey, operation: &str, result_ref: String) -> IdempotencyRecord {
    IdempotencyRecord {
        request_id: key.request_id.clone(),
        operation: operation.to_owned(),
        request_hash: key.request_hash.clone(),
        result_ref,
    }
}

fn parse_version(text: &str) -> Result<u32, RulesError> {
    text.parse()
        .map_err(|_| RepoError::Corrupt(format!("recorded version {text:?}")).into())
}

fn paged(
    mut page: Vec<(String, EffectiveDated)>,
    page_size: u64,
) -> (Vec<(String, EffectiveDated)>, Option<String>) {
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    if page.len() > size {
        page.truncate(size);
        let next = page.last().map(|(id, _)| id.clone());
        (page, next)
    } else {
        (page, None)
    }
}

/// The entries of a book as listed: all of them, or the one in force on a day.
fn dated_values(key: &str, book: &EffectiveDated, as_of: Option<NaiveDate>) -> Vec<DatedValue> {
    let entries = book.entries();
    entries
        .iter()
        .enumerate()
        .map(|(i, (from, value))| DatedValue {
            key: key.to_owned(),
            value: *value,
            effective_from: *from,
            effective_until: entries.get(i + 1).map(|next| next.0),
        })
        .filter(|v| {
            as_of.is_none_or(|day| {
                v.effective_from <= day && v.effective_until.is_none_or(|until| day < until)
            })
        })
        .collect()
}
