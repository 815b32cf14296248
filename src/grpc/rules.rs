//! `RulesService` adapter and its conversions.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{amount, day, page_position, page_size, page_token, timestamp};
use super::status::invalid;
use super::{caller, request_key as key};
use crate::domain::rule_spec::RuleSpec;
use crate::domain::rules::{Channel, RuleStatus, RuleTarget, StoredRule, TargetKind};
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;
use crate::service::rules::{DatedValue, DatedView, RulesService};

pub struct RulesGrpc {
    service: Arc<RulesService>,
}

impl RulesGrpc {
    pub fn new(service: Arc<RulesService>) -> Self {
        Self { service }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn bad(found: Vec<FieldViolation>) -> Status {
    invalid(&Invalid(found))
}

#[tonic::async_trait]
impl pb::rules_service_server::RulesService for RulesGrpc {
    async fn set_base_points(
        &self,
        request: Request<pb::SetBasePointsRequest>,
    ) -> Reply<pb::SetBasePointsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let mut found = Vec::new();
        let from = day("effective_from", &m.effective_from)
            .map_err(|v| found.push(v))
            .ok();
        let entries: Vec<(String, rust_decimal::Decimal)> = m
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let points = amount(&format!("entries[{i}].points"), &e.points)
                    .map_err(|v| found.push(v))
                    .ok()?;
                Some((e.product_id.trim().to_owned(), points))
            })
            .collect();
        let Some(from) = from.filter(|_| found.is_empty()) else {
            return Err(bad(found));
        };
        let count = self
            .service
            .set_base_points(&caller, &key(&m.request_id, &m), from, &entries)
            .await?;
        Ok(Response::new(pb::SetBasePointsResponse {
            products_updated: count,
        }))
    }

    async fn list_base_points(
        &self,
        request: Request<pb::ListBasePointsRequest>,
    ) -> Reply<pb::ListBasePointsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let view = view(m.include_history, &m.as_of)?;
        let after = page_position(&m.page_token).map_err(|v| bad(vec![v]))?;
        let (values, next) = self
            .service
            .base_points(&caller, &m.product_ids, view, after, page_size(m.page_size))
            .await?;
        Ok(Response::new(pb::ListBasePointsResponse {
            entries: values
                .into_iter()
                .map(|v| {
                    let (key, value, from, until) = dated_parts(v);
                    pb::BasePointsEntry {
                        product_id: key,
                        points: value,
                        effective_from: from,
                        effective_until: until,
                    }
                })
                .collect(),
            next_page_token: next.map(|p| page_token(&p)).unwrap_or_default(),
        }))
    }

    async fn create_multiplier_rule(
        &self,
        request: Request<pb::CreateMultiplierRuleRequest>,
    ) -> Reply<pb::CreateMultiplierRuleResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let spec = spec_from_proto(m.spec.as_ref()).map_err(|e| invalid(&e))?;
        let rule = self
            .service
            .create_rule(&caller, &key(&m.request_id, &m), spec)
            .await?;
        Ok(Response::new(pb::CreateMultiplierRuleResponse {
            rule: Some(rule_to_proto(&rule)),
        }))
    }

    async fn update_multiplier_rule(
        &self,
        request: Request<pb::UpdateMultiplierRuleRequest>,
    ) -> Reply<pb::UpdateMultiplierRuleResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let spec = spec_from_proto(m.spec.as_ref()).map_err(|e| invalid(&e))?;
        let rule = self
            .service
            .update_rule(&caller, &key(&m.request_id, &m), m.rule_id.trim(), spec)
            .await?;
        Ok(Response::new(pb::UpdateMultiplierRuleResponse {
            rule: Some(rule_to_proto(&rule)),
        }))
    }

    async fn publish_multiplier_rule(
        &self,
        request: Request<pb::PublishMultiplierRuleRequest>,
    ) -> Reply<pb::PublishMultiplierRuleResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let rule = self
            .service
            .publish_rule(
                &caller,
                &key(&m.request_id, &m),
                m.rule_id.trim(),
                m.version,
            )
            .await?;
        Ok(Response::new(pb::PublishMultiplierRuleResponse {
            rule: Some(rule_to_proto(&rule)),
        }))
    }

    async fn archive_multiplier_rule(
        &self,
        request: Request<pb::ArchiveMultiplierRuleRequest>,
    ) -> Reply<pb::ArchiveMultiplierRuleResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let rule = self
            .service
            .archive_rule(&caller, &key(&m.request_id, &m), m.rule_id.trim())
            .await?;
        Ok(Response::new(pb::ArchiveMultiplierRuleResponse {
            rule: Some(rule_to_proto(&rule)),
        }))
    }

    async fn get_multiplier_rule(
        &self,
        request: Request<pb::GetMultiplierRuleRequest>,
    ) -> Reply<pb::GetMultiplierRuleResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let versions = self
            .service
            .versions(&caller.tenant, m.rule_id.trim())
            .await?;
        let chosen = if m.version == 0 {
            versions.last()
        } else {
            versions.iter().find(|v| v.rule.version == m.version)
        };
        let Some(chosen) = chosen else {
            return Err(Status::not_found(format!(
                "rule {} has no version {}",
                m.rule_id, m.version
            )));
        };
        Ok(Response::new(pb::GetMultiplierRuleResponse {
            rule: Some(rule_to_proto(chosen)),
            versions: versions.iter().map(rule_to_proto).collect(),
        }))
    }

    async fn list_multiplier_rules(
        &self,
        request: Request<pb::ListMultiplierRulesRequest>,
    ) -> Reply<pb::ListMultiplierRulesResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let mut found = Vec::new();
        let status = match pb::RuleStatus::try_from(m.status) {
            Ok(pb::RuleStatus::Draft) => Some(RuleStatus::Draft),
            Ok(pb::RuleStatus::Published) => Some(RuleStatus::Published),
            Ok(pb::RuleStatus::Archived) => Some(RuleStatus::Archived),
            Ok(pb::RuleStatus::Unspecified) => None,
            Err(_) => {
                found.push(FieldViolation::new("status", "is not a rule status"));
                None
            }
        };
        let target = m
            .target
            .as_ref()
            .and_then(|t| target_from_proto(t, "target", &mut found));
        let active_on = (!m.active_on.is_empty())
            .then(|| {
                day("active_on", &m.active_on)
                    .map_err(|v| found.push(v))
                    .ok()
            })
            .flatten();
        let after = page_position(&m.page_token)
            .map_err(|v| found.push(v))
            .ok()
            .flatten();
        if !found.is_empty() {
            return Err(bad(found));
        }
        let (rules, next) = self
            .service
            .list_rules(
                &caller,
                status,
                target,
                active_on,
                after,
                page_size(m.page_size),
            )
            .await?;
        Ok(Response::new(pb::ListMultiplierRulesResponse {
            rules: rules.iter().map(rule_to_proto).collect(),
            next_page_token: next.map(|p| page_token(&p)).unwrap_or_default(),
        }))
    }

    async fn set_segment_rate(
        &self,
        request: Request<pb::SetSegmentRateRequest>,
    ) -> Reply<pb::SetSegmentRateResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let mut found = Vec::new();
        let rate = amount("rate", &m.rate).map_err(|v| found.push(v)).ok();
        let from = day("effective_from", &m.effective_from)
            .map_err(|v| found.push(v))
            .ok();
        let (Some(rate), Some(from)) = (rate, from) else {
            return Err(bad(found));
        };
        let segment_id = m.segment_id.trim().to_owned();
        self.service
            .set_segment_rate(&caller, &key(&m.request_id, &m), &segment_id, rate, from)
            .await?;
        Ok(Response::new(pb::SetSegmentRateResponse {
            rate: Some(pb::SegmentRate {
                segment_id,
                rate: rate.normalize().to_string(),
                effective_from: from.to_string(),
                effective_until: String::new(),
            }),
        }))
    }

    async fn list_segment_rates(
        &self,
        request: Request<pb::ListSegmentRatesRequest>,
    ) -> Reply<pb::ListSegmentRatesResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let view = view(m.include_history, &m.as_of)?;
        let segment = Some(m.segment_id.trim().to_owned()).filter(|s| !s.is_empty());
        let values = self.service.segment_rates(&caller, segment, view).await?;
        let offset = page_position(&m.page_token)
            .map_err(|v| bad(vec![v]))?
            .map_or(Ok(0), |p| {
                p.parse::<usize>().map_err(|_| {
                    bad(vec![FieldViolation::new(
                        "page_token",
                        "is not a token this service issued",
                    )])
                })
            })?;
        let size = usize::try_from(page_size(m.page_size)).unwrap_or(usize::MAX);
        let next = offset + size;
        Ok(Response::new(pb::ListSegmentRatesResponse {
            next_page_token: if next < values.len() {
                page_token(&next.to_string())
            } else {
                String::new()
            },
            rates: values
                .into_iter()
                .skip(offset)
                .take(size)
                .map(|v| {
                    let (key, value, from, until) = dated_parts(v);
                    pb::SegmentRate {
                        segment_id: key,
                        rate: value,
                        effective_from: from,
                        effective_until: until,
                    }
                })
                .collect(),
        }))
    }
}

fn view(include_history: bool, as_of: &str) -> Result<DatedView, Status> {
    if include_history {
        return Ok(DatedView::History);
    }
    if as_of.is_empty() {
        return Ok(DatedView::AsOf(None));
    }
    day("as_of", as_of)
        .map(|d| DatedView::AsOf(Some(d)))
        .map_err(|v| bad(vec![v]))
}

fn dated_parts(v: DatedValue) -> (String, String, String, String) {
    (
        v.key,
        v.value.normalize().to_string(),
        v.effective_from.to_string(),
        v.effective_until.map(|d| d.to_string()).unwrap_or_default(),
    )
}

fn target_from_proto(
    t: &pb::RuleTarget,
    field: &str,
    found: &mut Vec<FieldViolation>,
) -> Option<RuleTarget> {
    let kind = match pb::TargetKind::try_from(t.kind) {
        Ok(pb::TargetKind::Product) => TargetKind::Product,
        Ok(pb::TargetKind::Category) => TargetKind::Category,
        Ok(pb::TargetKind::Label) => TargetKind::Label,
        Ok(pb::TargetKind::Manufacturer) => TargetKind::Manufacturer,
        _ => {
            found.push(FieldViolation::new(
                format!("{field}.kind"),
                "must be PRODUCT, CATEGORY, LABEL or MANUFACTURER",
            ));
            return None;
        }
    };
    Some(RuleTarget {
        kind,
        id: t.id.trim().to_owned(),
    })
}

pub(crate) fn spec_from_proto(spec: Option<&pb::MultiplierRuleSpec>) -> Result<RuleSpec, Invalid> {
    let Some(s) = spec else {
        return Err(Invalid::field("spec", "is required"));
    };
    let mut found = Vec::new();
    let targets = s
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| target_from_proto(t, &format!("spec.targets[{i}]"), &mut found))
        .collect();
    let factor = amount("spec.factor", &s.factor)
        .map_err(|v| found.push(v))
        .ok();
    let valid_from = day("spec.valid_from", &s.valid_from)
        .map_err(|v| found.push(v))
        .ok();
    let valid_until = if s.valid_until.is_empty() {
        None
    } else {
        day("spec.valid_until", &s.valid_until)
            .map_err(|v| found.push(v))
            .ok()
    };
    let channel = match pb::Channel::try_from(s.channel) {
        Ok(pb::Channel::Online) => Some(Channel::Online),
        Ok(pb::Channel::Offline) => Some(Channel::Offline),
        Ok(pb::Channel::Unspecified) => None,
        Err(_) => {
            found.push(FieldViolation::new("spec.channel", "is not a channel"));
            None
        }
    };
    let (Some(factor), Some(valid_from)) = (factor, valid_from) else {
        return Err(Invalid(found));
    };
    let spec = RuleSpec {
        name: s.name.clone(),
        description: s.description.clone(),
        targets,
        factor,
        valid_from,
        valid_until,
        segment_ids: s
            .segment_ids
            .iter()
            .map(|id| id.trim().to_owned())
            .collect(),
        channel,
    };
    found.extend(spec.violations("spec."));
    Invalid::check(found)?;
    Ok(spec)
}

fn rule_to_proto(stored: &StoredRule) -> pb::MultiplierRule {
    let r = &stored.rule;
    pb::MultiplierRule {
        rule_id: r.rule_id.clone(),
        version: r.version,
        status: match r.status {
            RuleStatus::Draft => pb::RuleStatus::Draft,
            RuleStatus::Published => pb::RuleStatus::Published,
            RuleStatus::Archived => pb::RuleStatus::Archived,
        } as i32,
        spec: Some(pb::MultiplierRuleSpec {
            name: r.name.clone(),
            description: r.description.clone(),
            targets: r
                .targets
                .iter()
                .map(|t| pb::RuleTarget {
                    kind: match t.kind {
                        TargetKind::Product => pb::TargetKind::Product,
                        TargetKind::Category => pb::TargetKind::Category,
                        TargetKind::Label => pb::TargetKind::Label,
                        TargetKind::Manufacturer => pb::TargetKind::Manufacturer,
                    } as i32,
                    id: t.id.clone(),
                })
                .collect(),
            factor: r.factor.normalize().to_string(),
            valid_from: r.valid_from.to_string(),
            valid_until: r.valid_until.map(|d| d.to_string()).unwrap_or_default(),
            segment_ids: r.segment_ids.clone(),
            channel: match r.channel {
                None => pb::Channel::Unspecified,
                Some(Channel::Online) => pb::Channel::Online,
                Some(Channel::Offline) => pb::Channel::Offline,
            } as i32,
        }),
        created_at: Some(timestamp(stored.created_at)),
        published_at: stored.published_at.map(timestamp),
        archived_at: stored.archived_at.map(timestamp),
    }
}
