//! `LedgerService` adapter and its conversions.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{amount, instant, page_position, page_size, page_token, timestamp};
use super::status::invalid;
use super::{caller, client_in_reach, request_key, visible};
use crate::domain::ledger::{EventType, HistoryQuery, LedgerEvent};
use crate::domain::points::format_points;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;
use crate::service::ledger::{Adjustment, LedgerService};

pub struct LedgerGrpc {
    service: Arc<LedgerService>,
}

impl LedgerGrpc {
    pub fn new(service: Arc<LedgerService>) -> Self {
        Self { service }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn bad(found: Vec<FieldViolation>) -> Status {
    invalid(&Invalid(found))
}

fn required(field: &str, value: &str) -> Result<String, Status> {
    let value = value.trim();
    if value.is_empty() {
        return Err(bad(vec![FieldViolation::new(field, "is required")]));
    }
    Ok(value.to_owned())
}

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for LedgerGrpc {
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Reply<pb::GetBalanceResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let client_id = required("client_id", &client_in_reach(&caller, &m.client_id)?)?;
        let view = self
            .service
            .balance(&caller, &client_id, Some(m.expiring_within_days))
            .await?;
        let scale = view.points_scale;
        let b = view.balance;
        Ok(Response::new(pb::GetBalanceResponse {
            balance: Some(pb::Balance {
                client_id: b.client_id,
                total: format_points(b.total, scale),
                available: format_points(b.available, scale),
                locked: format_points(b.locked, scale),
                reserved: format_points(b.reserved, scale),
                expiring: format_points(view.expiring, scale),
                expiring_within_days: view.expiring_within_days,
                last_event_id: b.last_event_id.map(|id| id.to_string()).unwrap_or_default(),
                updated_at: Some(timestamp(b.updated_at)),
            }),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Reply<pb::ListEventsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let client_id = required("client_id", &client_in_reach(&caller, &m.client_id)?)?;
        let mut found = Vec::new();
        let types = m
            .types
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                event_type_from_proto(*t)
                    .ok_or_else(|| {
                        found.push(FieldViolation::new(
                            format!("types[{i}]"),
                            "is not an event type",
                        ));
                    })
                    .ok()
            })
            .collect();
        let from = m
            .from
            .as_ref()
            .map(|ts| instant("from", Some(ts)))
            .transpose()
            .map_err(|v| found.push(v))
            .ok()
            .flatten();
        let to =
            m.to.as_ref()
                .map(|ts| instant("to", Some(ts)))
                .transpose()
                .map_err(|v| found.push(v))
                .ok()
                .flatten();
        let before = match page_position(&m.page_token) {
            Ok(None) => None,
            Ok(Some(position)) => position
                .parse::<i64>()
                .map_err(|_| {
                    found.push(FieldViolation::new(
                        "page_token",
                        "is not a token this service issued",
                    ));
                })
                .ok(),
            Err(violation) => {
                found.push(violation);
                None
            }
        };
        if !found.is_empty() {
            return Err(bad(found));
        }
        let query = HistoryQuery {
            client_id,
            types,
            from,
            to,
            before_event_id: before,
            limit: page_size(m.page_size),
        };
        let scale = self.service.points_scale(&caller).await?;
        let (events, next) = self.service.history(&caller, query).await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: events.iter().map(|e| event_to_proto(e, scale)).collect(),
            next_page_token: next
                .map(|id| page_token(&id.to_string()))
                .unwrap_or_default(),
        }))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Reply<pb::GetEventResponse> {
        let caller = caller(&request)?;
        let id = request
            .get_ref()
            .event_id
            .trim()
            .parse::<i64>()
            .map_err(|_| bad(vec![FieldViolation::new("event_id", "is not an event id")]))?;
        let scale = self.service.points_scale(&caller).await?;
        let (event, lines) = self.service.event_detail(&caller, id).await?;
        visible(&caller, &event.event.client_id, &format!("event {id}"))?;
        let mut detail = event_to_proto(&event, scale);
        detail.lines = lines
            .iter()
            .map(|l| super::earn::line_to_proto(l, scale))
            .collect();
        Ok(Response::new(pb::GetEventResponse {
            event: Some(detail),
        }))
    }

    async fn adjust_points(
        &self,
        request: Request<pb::AdjustPointsRequest>,
    ) -> Reply<pb::AdjustPointsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let points = amount("points", &m.points).map_err(|v| bad(vec![v]))?;
        let adjustment = Adjustment {
            client_id: m.client_id.trim().to_owned(),
            points,
            reason_code: m.reason_code.trim().to_owned(),
            reason: m.reason.clone(),
            user_id: m.user_id.clone(),
        };
        let event = self
            .service
            .adjust(&caller, &request_key(&m.request_id, &m), &adjustment)
            .await?;
        let scale = self.service.points_scale(&caller).await?;
        Ok(Response::new(pb::AdjustPointsResponse {
            event: Some(event_to_proto(&event, scale)),
        }))
    }
}

fn event_type_from_proto(value: i32) -> Option<EventType> {
    match pb::EventType::try_from(value).ok()? {
        pb::EventType::Earn => Some(EventType::Earn),
        pb::EventType::Use => Some(EventType::Use),
        pb::EventType::Lose => Some(EventType::Lose),
        pb::EventType::Expire => Some(EventType::Expire),
        pb::EventType::Adjust => Some(EventType::Adjust),
        pb::EventType::Refund => Some(EventType::Refund),
        pb::EventType::Unspecified => None,
    }
}

fn event_type_to_proto(value: EventType) -> pb::EventType {
    match value {
        EventType::Earn => pb::EventType::Earn,
        EventType::Use => pb::EventType::Use,
        EventType::Lose => pb::EventType::Lose,
        EventType::Expire => pb::EventType::Expire,
        EventType::Adjust => pb::EventType::Adjust,
        EventType::Refund => pb::EventType::Refund,
    }
}

fn event_to_proto(e: &LedgerEvent, scale: u32) -> pb::LedgerEvent {
    let n = &e.event;
    pb::LedgerEvent {
        event_id: e.event_id.to_string(),
        client_id: n.client_id.clone(),
        r#type: event_type_to_proto(n.event_type) as i32,
        points: format_points(n.points, scale),
        balance_after: format_points(e.balance_after, scale),
        occurred_at: Some(timestamp(n.occurred_at)),
        recorded_at: Some(timestamp(e.recorded_at)),
        document_id: n.document_id.clone().unwrap_or_default(),
        request_id: n.request_id.clone().unwrap_or_default(),
        reason_code: n.reason_code.clone().unwrap_or_default(),
        reason: n.reason.clone().unwrap_or_default(),
        related_event_id: n
            .related_event_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        stacking_mode: n.stacking_mode.map_or(
            pb::StackingMode::Unspecified,
            super::convert::stacking_mode_to_proto,
        ) as i32,
        actor: Some(pb::Actor {
            key_id: n.actor_key_id.clone().unwrap_or_default(),
            user_id: n.actor_user_id.clone().unwrap_or_default(),
        }),
        ..Default::default()
    }
}
