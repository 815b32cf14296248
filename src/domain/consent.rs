//! Loyalty consent (DOMAIN.md §3.5, §4): users accept or withdraw an agreement version; a client
//! counts as agreed while at least one of its active users holds an acceptance of the version
//! current at that instant; a day counts when that holds at the end of the day.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::domain::calendar::{days, end_of_day};
use crate::domain::intervals::{Interval, holds_until, union};
use crate::domain::settings::TenantSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentAction {
    Accept,
    Withdraw,
}

impl ConsentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "ACCEPT",
            Self::Withdraw => "WITHDRAW",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ACCEPT" => Some(Self::Accept),
            "WITHDRAW" => Some(Self::Withdraw),
            _ => None,
        }
    }
}

/// One accept or withdraw by a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentEvent {
    pub event_id: String,
    pub user_id: String,
    pub client_id: String,
    pub action: ConsentAction,
    pub occurred_at: DateTime<Utc>,
    pub declaration_type_id: String,
    pub agreement_version: u32,
    pub source: String,
    pub recorded_at: DateTime<Utc>,
}

impl ConsentEvent {
    /// The same event as far as the consent goes: a redelivery, whatever the recording time.
    pub fn same_as(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.user_id == other.user_id
            && self.action == other.action
            && self.occurred_at == other.occurred_at
            && self.declaration_type_id == other.declaration_type_id
            && self.agreement_version == other.agreement_version
    }
}

/// What recording one consent event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentOutcome {
    Recorded,
    /// The event id was recorded before.
    Duplicate,
    /// Recorded, but it changes nothing (a withdrawal while nothing was accepted).
    NoEffect,
}

impl ConsentOutcome {
    pub fn code(self) -> char {
        match self {
            Self::Recorded => 'R',
            Self::Duplicate => 'D',
            Self::NoEffect => 'N',
        }
    }

    pub fn from_code(code: char) -> Option<Self> {
        [Self::Recorded, Self::Duplicate, Self::NoEffect]
            .into_iter()
            .find(|o| o.code() == code)
    }
}

/// A published version of a declaration type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementVersion {
    pub declaration_type_id: String,
    pub version: u32,
    pub published_at: DateTime<Utc>,
    pub title: String,
    pub content_url: String,
}

/// What decides whether a client can be eligible at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFacts {
    pub client_id: String,
    pub has_account: bool,
}

impl ClientFacts {
    /// Individuals (`ind:`) and clients without an account never take part.
    pub fn can_participate(&self) -> bool {
        self.has_account && !self.client_id.starts_with("ind:")
    }
}

/// A user with the instant their consent stops counting, if deactivated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    pub user_id: String,
    pub client_id: String,
    pub deactivated_at: Option<DateTime<Utc>>,
}

/// A span in which a user held an acceptance of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptance {
    pub version: u32,
    pub span: Interval,
}

/// Events in the order they took effect: by instant, ties broken by event id, so that the order
/// of arrival never matters.
pub fn in_effect_order(events: &mut [ConsentEvent]) {
    events.sort_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
}

/// A user's acceptances from their events (of one declaration type, any order). An accept of a
/// version replaces the one held; a withdraw ends it; deactivation ends everything.
pub fn acceptances(user: &UserFacts, events: &[ConsentEvent]) -> Vec<Acceptance> {
    let mut ordered = events.to_vec();
    in_effect_order(&mut ordered);
    let mut found = Vec::new();
    let mut held: Option<(u32, DateTime<Utc>)> = None;
    for event in &ordered {
        if let Some((version, since)) = held.take() {
            found.push(Acceptance {
                version,
                span: Interval::new(since, Some(event.occurred_at)),
            });
        }
        if event.action == ConsentAction::Accept {
            held = Some((event.agreement_version, event.occurred_at));
        }
    }
    if let Some((version, since)) = held {
        found.push(Acceptance {
            version,
            span: Interval::new(since, None),
        });
    }
    found
        .into_iter()
        .map(|a| Acceptance {
            span: a.span.cut_at(user.deactivated_at),
            ..a
        })
        .filter(|a| !a.span.is_empty())
        .collect()
}

/// Whether the user held an acceptance just before `at` (used to tell a withdrawal that changes
/// nothing).
pub fn held_before(user: &UserFacts, events: &[ConsentEvent], at: DateTime<Utc>) -> bool {
    acceptances(user, events)
        .iter()
        .any(|a| a.span.holds_until(at))
}

/// The instant from which an acceptance of `version` stops counting: the publication of the
/// first newer version.
fn superseded_at(versions: &[AgreementVersion], version: u32) -> Option<DateTime<Utc>> {
    versions
        .iter()
        .filter(|v| v.version > version)
        .map(|v| v.published_at)
        .min()
}

/// The version current at `at` (0 before any publication).
pub fn current_version(versions: &[AgreementVersion], at: DateTime<Utc>) -> u32 {
    versions
        .iter()
        .filter(|v| v.published_at <= at)
        .map(|v| v.version)
        .max()
        .unwrap_or(0)
}

/// When a client counted as agreed: the union of its users' acceptances, each cut where a newer
/// version was published. `users` pairs each user with their events of one declaration type.
pub fn client_eligibility(
    client: &ClientFacts,
    users: &[(UserFacts, Vec<ConsentEvent>)],
    versions: &[AgreementVersion],
) -> Vec<Interval> {
    if !client.can_participate() {
        return Vec::new();
    }
    union(users.iter().flat_map(|(user, events)| {
        acceptances(user, events)
            .into_iter()
            .map(|a| a.span.cut_at(superseded_at(versions, a.version)))
    }))
}

/// A user's consent at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConsentState {
    /// Holds an acceptance of the version current at the instant.
    pub accepted: bool,
    /// The version of the latest acceptance (0 when never accepted).
    pub accepted_version: u32,
    pub current_version: u32,
    /// Since when `accepted` has had its value (`None`: never accepted).
    pub since: Option<DateTime<Utc>>,
}

/// Where a user's consent stands at `at`.
pub fn user_consent_at(
    user: &UserFacts,
    events: &[ConsentEvent],
    versions: &[AgreementVersion],
    at: DateTime<Utc>,
) -> UserConsentState {
    let held = acceptances(user, events);
    let counted: Vec<Interval> = held
        .iter()
        .map(|a| a.span.cut_at(superseded_at(versions, a.version)))
        .filter(|span| !span.is_empty() && span.start <= at)
        .collect();
    let merged = union(counted);
    let accepted = merged.iter().any(|span| span.contains(at));
    let since = merged.last().map(|span| {
        if accepted {
            span.start
        } else {
            span.end.unwrap_or(span.start)
        }
    });
    UserConsentState {
        accepted,
        accepted_version: held
            .iter()
            .filter(|a| a.span.start <= at)
            .map(|a| a.version)
            .next_back()
            .unwrap_or(0),
        current_version: current_version(versions, at),
        since,
    }
}

/// What is asked of the stored eligibility to know whether a client counted as agreed on a day
/// (as [`eligible_on`] decides it): whether an interval of the tenant's declaration type
/// reaches the end of that day.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EligibilityProbe {
    pub declaration_type_id: String,
    pub at: DateTime<Utc>,
}

impl EligibilityProbe {
    /// For `day`, under the declaration type and in the time zone of `settings`.
    pub fn end_of(settings: &TenantSettings, day: NaiveDate) -> Self {
        Self {
            declaration_type_id: settings.declaration_type_id.clone(),
            at: end_of_day(settings.time_zone, day),
        }
    }
}

/// Whether a client counted as agreed on `day`: the state at the end of the day decides.
/// `eligibility` must be sorted and disjoint, as [`client_eligibility`] gives it.
pub fn eligible_on(eligibility: &[Interval], tz: Tz, day: NaiveDate) -> bool {
    holds_until(eligibility, end_of_day(tz, day))
}

/// The eligible days in `first..=last`.
pub fn eligible_days(
    eligibility: &[Interval],
    tz: Tz,
    first: NaiveDate,
    last: NaiveDate,
) -> Vec<NaiveDate> {
    days(first, last)
        .filter(|d| eligible_on(eligibility, tz, *d))
        .collect()
}

#[cfg(test)]
#[path = "consent_tests.rs"]
mod tests;
