//! `AgreementService` adapter and its conversions.

use std::sync::Arc;

use chrono::DateTime;
use tonic::{Request, Response, Status};

use super::convert::{day, instant, page_position, page_size, page_token, timestamp};
use super::status::invalid;
use super::{caller, client_in_reach, request_hash, user_in_reach};
use crate::domain::consent::{AgreementVersion, ConsentAction, ConsentEvent, ConsentOutcome};
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;
use crate::service::agreements::{AgreementService, NewConsent, PublishVersion, RecordConsents};

pub struct AgreementGrpc {
    service: Arc<AgreementService>,
}

impl AgreementGrpc {
    pub fn new(service: Arc<AgreementService>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl pb::agreement_service_server::AgreementService for AgreementGrpc {
    async fn record_consent_events(
        &self,
        request: Request<pb::RecordConsentEventsRequest>,
    ) -> Result<Response<pb::RecordConsentEventsResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let command = RecordConsents {
            request_id: message.request_id.clone(),
            request_hash: request_hash(&message),
            events: consents_from_proto(&message.events).map_err(|e| invalid(&e))?,
        };
        let outcomes = self.service.record_consents(&caller, &command).await?;
        Ok(Response::new(pb::RecordConsentEventsResponse {
            outcomes: outcomes
                .into_iter()
                .map(|o| outcome_to_proto(o) as i32)
                .collect(),
        }))
    }

    async fn publish_agreement_version(
        &self,
        request: Request<pb::PublishAgreementVersionRequest>,
    ) -> Result<Response<pb::PublishAgreementVersionResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let version = message.version.clone().unwrap_or_default();
        let published_at = match version.published_at {
            Some(ref ts) => Some(
                instant("version.published_at", Some(ts))
                    .map_err(|v| invalid(&Invalid(vec![v])))?,
            ),
            None => None,
        };
        let command = PublishVersion {
            request_id: message.request_id.clone(),
            request_hash: request_hash(&message),
            declaration_type_id: version.declaration_type_id.trim().to_owned(),
            version: version.version,
            published_at,
            title: version.title,
            content_url: version.content_url,
        };
        let published = self.service.publish_version(&caller, &command).await?;
        Ok(Response::new(pb::PublishAgreementVersionResponse {
            version: Some(version_to_proto(&published)),
        }))
    }

    async fn list_agreement_versions(
        &self,
        request: Request<pb::ListAgreementVersionsRequest>,
    ) -> Result<Response<pb::ListAgreementVersionsResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let offset = offset_of(&message.page_token).map_err(|v| invalid(&Invalid(vec![v])))?;
        let size = usize::try_from(page_size(message.page_size)).unwrap_or(usize::MAX);
        let versions = self
            .service
            .versions(&caller, message.declaration_type_id.trim())
            .await?;
        let page: Vec<pb::AgreementVersion> = versions
            .iter()
            .skip(offset)
            .take(size)
            .map(version_to_proto)
            .collect();
        let next = offset + page.len();
        Ok(Response::new(pb::ListAgreementVersionsResponse {
            versions: page,
            next_page_token: if next < versions.len() {
                page_token(&next.to_string())
            } else {
                String::new()
            },
        }))
    }

    async fn get_user_consent(
        &self,
        request: Request<pb::GetUserConsentRequest>,
    ) -> Result<Response<pb::GetUserConsentResponse>, Status> {
        let caller = caller(&request)?;
        let requested = user_in_reach(&caller, &request.get_ref().user_id)?.unwrap_or_default();
        let user_id = required("user_id", &requested)?;
        let consent = self.service.user_consent(&caller, &user_id).await?;
        Ok(Response::new(pb::GetUserConsentResponse {
            user_id: consent.user.user_id.clone(),
            client_id: consent.user.client_id.clone(),
            accepted: consent.state.accepted,
            accepted_version: consent.state.accepted_version,
            current_version: consent.state.current_version,
            since: consent.state.since.map(timestamp),
            user_active: consent.user.active,
        }))
    }

    async fn list_user_consent_history(
        &self,
        request: Request<pb::ListUserConsentHistoryRequest>,
    ) -> Result<Response<pb::ListUserConsentHistoryResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let requested = user_in_reach(&caller, &message.user_id)?.unwrap_or_default();
        let user_id = required("user_id", &requested)?;
        let before =
            history_position(&message.page_token).map_err(|v| invalid(&Invalid(vec![v])))?;
        let (events, next) = self
            .service
            .user_history(&caller, &user_id, before, page_size(message.page_size))
            .await?;
        Ok(Response::new(pb::ListUserConsentHistoryResponse {
            events: events.iter().map(event_to_proto).collect(),
            next_page_token: next
                .map(|(at, id)| page_token(&format!("{}:{id}", at.timestamp_micros())))
                .unwrap_or_default(),
        }))
    }

    async fn anonymize_user(
        &self,
        request: Request<pb::AnonymizeUserRequest>,
    ) -> Result<Response<pb::AnonymizeUserResponse>, Status> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let pseudonym = self
            .service
            .anonymize_user(&caller, &m.request_id, &request_hash(&m), &m.user_id)
            .await?;
        Ok(Response::new(pb::AnonymizeUserResponse { pseudonym }))
    }

    async fn get_client_eligibility(
        &self,
        request: Request<pb::GetClientEligibilityRequest>,
    ) -> Result<Response<pb::GetClientEligibilityResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let client_id = required("client_id", &client_in_reach(&caller, &message.client_id)?)?;
        let mut found = Vec::new();
        let first = day("from_date", &message.from_date)
            .map_err(|v| found.push(v))
            .ok();
        let last = day("to_date", &message.to_date)
            .map_err(|v| found.push(v))
            .ok();
        let (Some(first), Some(last)) = (first, last) else {
            return Err(invalid(&Invalid(found)));
        };
        let eligibility = self
            .service
            .client_eligibility(&caller, &client_id, first, last)
            .await?;
        Ok(Response::new(pb::GetClientEligibilityResponse {
            client_id,
            intervals: eligibility
                .intervals
                .iter()
                .map(|i| pb::TimeInterval {
                    start: Some(timestamp(i.start)),
                    end: i.end.map(timestamp),
                })
                .collect(),
            eligible_days: eligibility
                .eligible_days
                .iter()
                .map(ToString::to_string)
                .collect(),
        }))
    }
}

fn required(field: &str, value: &str) -> Result<String, Status> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(&Invalid::field(field, "is required")));
    }
    Ok(value.to_owned())
}

fn offset_of(token: &str) -> Result<usize, FieldViolation> {
    page_position(token)?.map_or(Ok(0), |p| {
        p.parse()
            .map_err(|_| FieldViolation::new("page_token", "is not a token this service issued"))
    })
}

fn history_position(
    token: &str,
) -> Result<Option<(chrono::DateTime<chrono::Utc>, String)>, FieldViolation> {
    let Some(position) = page_position(token)? else {
        return Ok(None);
    };
    let bad = || FieldViolation::new("page_token", "is not a token this service issued");
    let (micros, event_id) = position.split_once(':').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok(Some((at, event_id.to_owned())))
}

pub(crate) fn consents_from_proto(events: &[pb::ConsentEvent]) -> Result<Vec<NewConsent>, Invalid> {
    let mut found = Vec::new();
    let mut converted = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let action = match pb::ConsentAction::try_from(e.action) {
            Ok(pb::ConsentAction::Accept) => Some(ConsentAction::Accept),
            Ok(pb::ConsentAction::Withdraw) => Some(ConsentAction::Withdraw),
            _ => {
                found.push(FieldViolation::new(
                    format!("events[{i}].action"),
                    "must be CONSENT_ACTION_ACCEPT or CONSENT_ACTION_WITHDRAW",
                ));
                None
            }
        };
        let occurred_at = instant(&format!("events[{i}].occurred_at"), e.occurred_at.as_ref())
            .map_err(|v| found.push(v))
            .ok();
        if let (Some(action), Some(occurred_at)) = (action, occurred_at) {
            converted.push(NewConsent {
                event_id: e.event_id.trim().to_owned(),
                user_id: e.user_id.trim().to_owned(),
                action,
                occurred_at,
                declaration_type_id: e.declaration_type_id.trim().to_owned(),
                agreement_version: e.agreement_version,
                source: e.source.trim().to_owned(),
                client_id: e.client_id.trim().to_owned(),
            });
        }
    }
    Invalid::check(found)?;
    Ok(converted)
}

fn outcome_to_proto(outcome: ConsentOutcome) -> pb::ConsentEventOutcome {
    match outcome {
        ConsentOutcome::Recorded => pb::ConsentEventOutcome::Recorded,
        ConsentOutcome::Duplicate => pb::ConsentEventOutcome::Duplicate,
        ConsentOutcome::NoEffect => pb::ConsentEventOutcome::NoEffect,
    }
}

fn version_to_proto(v: &AgreementVersion) -> pb::AgreementVersion {
    pb::AgreementVersion {
        declaration_type_id: v.declaration_type_id.clone(),
        version: v.version,
        published_at: Some(timestamp(v.published_at)),
        title: v.title.clone(),
        content_url: v.content_url.clone(),
    }
}

fn event_to_proto(e: &ConsentEvent) -> pb::ConsentEvent {
    pb::ConsentEvent {
        event_id: e.event_id.clone(),
        user_id: e.user_id.clone(),
        action: match e.action {
            ConsentAction::Accept => pb::ConsentAction::Accept,
            ConsentAction::Withdraw => pb::ConsentAction::Withdraw,
        } as i32,
        occurred_at: Some(timestamp(e.occurred_at)),
        declaration_type_id: e.declaration_type_id.clone(),
        agreement_version: e.agreement_version,
        source: e.source.clone(),
        client_id: e.client_id.clone(),
        recorded_at: Some(timestamp(e.recorded_at)),
    }
}
