//! `EarnService` adapter: `PreviewPoints` for now; the document RPCs answer UNIMPLEMENTED (the
//! generated defaults) until processing lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{amount, day, stacking_mode_to_proto};
use super::status::invalid;
use crate::domain::engine::{LineCalculation, RuleEvaluation};
use crate::domain::points::format_points;
use crate::domain::rules::Channel;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;
use crate::service::earn::{EarnService, PreviewItem};

pub struct EarnGrpc {
    service: Arc<EarnService>,
}

impl EarnGrpc {
    pub fn new(service: Arc<EarnService>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl pb::earn_service_server::EarnService for EarnGrpc {
    async fn preview_points(
        &self,
        request: Request<pb::PreviewPointsRequest>,
    ) -> Result<Response<pb::PreviewPointsResponse>, Status> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let mut found = Vec::new();
        let client_id = m.client_id.trim().to_owned();
        if client_id.is_empty() {
            found.push(FieldViolation::new("client_id", "is required"));
        }
        let date = (!m.date.is_empty())
            .then(|| day("date", &m.date).map_err(|v| found.push(v)).ok())
            .flatten();
        let items: Vec<PreviewItem> = m
            .lines
            .iter()
            .enumerate()
            .filter_map(|(i, line)| {
                let quantity = if line.quantity.is_empty() {
                    Some(rust_decimal::Decimal::ONE)
                } else {
                    amount(&format!("lines[{i}].quantity"), &line.quantity)
                        .map_err(|v| found.push(v))
                        .ok()
                };
                let channel = match pb::Channel::try_from(line.channel) {
                    Ok(pb::Channel::Offline) => Some(Channel::Offline),
                    Ok(pb::Channel::Online | pb::Channel::Unspecified) => Some(Channel::Online),
                    Err(_) => {
                        found.push(FieldViolation::new(
                            format!("lines[{i}].channel"),
                            "is not a channel",
                        ));
                        None
                    }
                };
                Some(PreviewItem {
                    product_id: line.product_id.trim().to_owned(),
                    quantity: quantity?,
                    channel: channel?,
                })
            })
            .collect();
        if !found.is_empty() {
            return Err(invalid(&Invalid(found)));
        }
        let preview = self
            .service
            .preview(&caller, &client_id, date, &items)
            .await?;
        let scale = preview.points_scale;
        Ok(Response::new(pb::PreviewPointsResponse {
            total_points: format_points(preview.calculation.total, scale),
            lines: preview
                .calculation
                .lines
                .iter()
                .map(|l| line_to_proto(l, scale))
                .collect(),
            stacking_mode: stacking_mode_to_proto(preview.calculation.stacking_mode) as i32,
            date: preview.day.to_string(),
        }))
    }
}

fn channel_to_proto(channel: Channel) -> pb::Channel {
    match channel {
        Channel::Online => pb::Channel::Online,
        Channel::Offline => pb::Channel::Offline,
    }
}

fn rule_to_proto(r: &RuleEvaluation) -> pb::RuleEvaluation {
    pb::RuleEvaluation {
        rule_id: r.rule_id.clone(),
        rule_version: r.rule_version,
        rule_name: r.rule_name.clone(),
        factor: r.factor.normalize().to_string(),
        applied: r.applied,
        reason: r.reason.clone(),
        matched_by: r.matched_by.to_string(),
    }
}

/// A line's calculation for the wire; points at the tenant's scale, factors exact.
pub fn line_to_proto(l: &LineCalculation, scale: u32) -> pb::LineCalculation {
    pb::LineCalculation {
        line_no: l.line_no,
        product_id: l.product_id.clone(),
        quantity: l.quantity.normalize().to_string(),
        channel: channel_to_proto(l.channel) as i32,
        order_number: l.order_number.clone().unwrap_or_default(),
        pricing_date: l.pricing_date.to_string(),
        base_points: l
            .base_points
            .map(|b| b.normalize().to_string())
            .unwrap_or_default(),
        rules: l.rules.iter().map(rule_to_proto).collect(),
        stacking_mode: stacking_mode_to_proto(l.stacking_mode) as i32,
        multiplier: l.multiplier.to_string(),
        segment_id: l.segment_id.clone().unwrap_or_default(),
        segment_rate: l.segment_rate.to_string(),
        unrounded_points: l.unrounded_points.to_string(),
        points: format_points(l.points, scale),
        note: l.note.clone().unwrap_or_default(),
    }
}
