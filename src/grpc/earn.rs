//! `EarnService` adapter and its conversions.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{amount, day, instant, stacking_mode_to_proto, timestamp};
use super::status::invalid;
use crate::domain::documents::{
    CorrectionType, Document, DocumentKind, DocumentLine, DocumentRecord, DocumentSource,
    DocumentStatus, NonEarningReason,
};
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

impl EarnGrpc {
    /// Receives a pushed invoice or correction; answers with where it stands.
    async fn receive(
        &self,
        caller: &crate::domain::access::Caller,
        request_id: &str,
        document: Option<&pb::Document>,
        kind: DocumentKind,
    ) -> Result<(pb::DocumentResult, bool), Status> {
        let document = document_from_proto(document, kind).map_err(|e| invalid(&e))?;
        let (record, replayed) = self
            .service
            .receive(caller, request_id, document, DocumentSource::Api)
            .await?;
        let scale = self.service.points_scale(caller).await?;
        Ok((result_to_proto(&record, scale), replayed))
    }
}

#[tonic::async_trait]
impl pb::earn_service_server::EarnService for EarnGrpc {
    async fn process_invoice(
        &self,
        request: Request<pb::ProcessInvoiceRequest>,
    ) -> Result<Response<pb::ProcessInvoiceResponse>, Status> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let (result, replayed) = self
            .receive(
                &caller,
                &m.request_id,
                m.invoice.as_ref(),
                DocumentKind::Invoice,
            )
            .await?;
        Ok(Response::new(pb::ProcessInvoiceResponse {
            result: Some(result),
            replayed,
        }))
    }

    async fn process_correction(
        &self,
        request: Request<pb::ProcessCorrectionRequest>,
    ) -> Result<Response<pb::ProcessCorrectionResponse>, Status> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let (result, replayed) = self
            .receive(
                &caller,
                &m.request_id,
                m.correction.as_ref(),
                DocumentKind::Correction,
            )
            .await?;
        Ok(Response::new(pb::ProcessCorrectionResponse {
            result: Some(result),
            replayed,
        }))
    }

    async fn explain_document(
        &self,
        request: Request<pb::ExplainDocumentRequest>,
    ) -> Result<Response<pb::ExplainDocumentResponse>, Status> {
        let caller = caller(&request)?;
        let id = request.get_ref().document_id.trim().to_owned();
        if id.is_empty() {
            return Err(invalid(&Invalid::field("document_id", "is required")));
        }
        let e = self.service.explain(&caller, &id).await?;
        super::visible(
            &caller,
            &e.record.document.client_id,
            &format!("document {id}"),
        )?;
        Ok(Response::new(pb::ExplainDocumentResponse {
            result: Some(result_to_proto(&e.record, e.points_scale)),
            lines: e
                .lines
                .iter()
                .map(|l| line_to_proto(l, e.points_scale))
                .collect(),
            stacking_mode: e
                .stacking_mode
                .map_or(pb::StackingMode::Unspecified, stacking_mode_to_proto)
                as i32,
            corrected_event_id: e
                .corrected_event_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }))
    }

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

pub(crate) fn document_from_proto(
    document: Option<&pb::Document>,
    expected: DocumentKind,
) -> Result<Document, Invalid> {
    let prefix = match expected {
        DocumentKind::Invoice => "invoice",
        DocumentKind::Correction => "correction",
    };
    let Some(d) = document else {
        return Err(Invalid::field(prefix, "is required"));
    };
    let mut found = Vec::new();
    let field = |name: &str| format!("{prefix}.{name}");
    let kind_ok = match pb::DocumentKind::try_from(d.kind) {
        Ok(pb::DocumentKind::Unspecified) => true,
        Ok(pb::DocumentKind::Invoice) => expected == DocumentKind::Invoice,
        Ok(pb::DocumentKind::Correction) => expected == DocumentKind::Correction,
        Err(_) => false,
    };
    if !kind_ok {
        found.push(FieldViolation::new(
            field("kind"),
            format!("must be {} or unspecified", expected.as_str()),
        ));
    }
    let sale_date = day(&field("sale_date"), &d.sale_date)
        .map_err(|v| found.push(v))
        .ok();
    let issued_at = d.issued_at.as_ref().and_then(|ts| {
        instant(&field("issued_at"), Some(ts))
            .map_err(|v| found.push(v))
            .ok()
    });
    let correction_type = match pb::CorrectionType::try_from(d.correction_type) {
        Ok(pb::CorrectionType::Valuable) => Some(CorrectionType::Valuable),
        Ok(pb::CorrectionType::Quantitative) => Some(CorrectionType::Quantitative),
        _ => None,
    };
    let lines: Vec<DocumentLine> = d
        .lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let quantity = amount(&field(&format!("lines[{i}].quantity")), &l.quantity)
                .map_err(|v| found.push(v))
                .ok()?;
            Some(DocumentLine {
                line_no: l.line_no,
                product_id: l.product_id.trim().to_owned(),
                quantity,
                order_number: Some(l.order_number.trim().to_owned()).filter(|n| !n.is_empty()),
                corrected_line_no: Some(l.corrected_line_no).filter(|n| *n > 0),
            })
        })
        .collect();
    let Some(sale_date) = sale_date.filter(|_| found.is_empty()) else {
        return Err(Invalid(found));
    };
    Ok(Document {
        document_id: d.document_id.trim().to_owned(),
        number: d.number.trim().to_owned(),
        kind: expected,
        client_id: d.client_id.trim().to_owned(),
        sale_date,
        customer_purchase_numbers: d.customer_purchase_numbers.clone(),
        lines,
        correction_type: if expected == DocumentKind::Correction {
            correction_type
        } else {
            None
        },
        corrected_document_id: Some(d.corrected_document_id.trim().to_owned())
            .filter(|id| !id.is_empty()),
        offline: d.offline,
        issued_at,
    })
}

fn result_to_proto(r: &DocumentRecord, scale: u32) -> pb::DocumentResult {
    let d = &r.document;
    pb::DocumentResult {
        document_id: d.document_id.clone(),
        number: d.number.clone(),
        kind: match d.kind {
            DocumentKind::Invoice => pb::DocumentKind::Invoice,
            DocumentKind::Correction => pb::DocumentKind::Correction,
        } as i32,
        client_id: d.client_id.clone(),
        sale_date: d.sale_date.to_string(),
        status: match r.status {
            // Received is a moment inside one call; a caller sees it only after a crash, and the
            // job finishes it like a pending document.
            DocumentStatus::Received | DocumentStatus::PendingDayClose => {
                pb::DocumentStatus::PendingDayClose
            }
            DocumentStatus::WaitingForData => pb::DocumentStatus::WaitingForData,
            DocumentStatus::Processed => pb::DocumentStatus::Processed,
            DocumentStatus::NotEarning => pb::DocumentStatus::NotEarning,
        } as i32,
        non_earning_reason: r.non_earning_reason.map_or(
            pb::NonEarningReason::Unspecified,
            |reason| match reason {
                NonEarningReason::NoAgreement => pb::NonEarningReason::NoAgreement,
                NonEarningReason::IndividualClient => pb::NonEarningReason::IndividualClient,
                NonEarningReason::NoAccount => pb::NonEarningReason::NoAccount,
                NonEarningReason::OfflineExcluded => pb::NonEarningReason::OfflineExcluded,
                NonEarningReason::NoBasePoints => pb::NonEarningReason::NoBasePoints,
            },
        ) as i32,
        event_id: r.event_id.map(|id| id.to_string()).unwrap_or_default(),
        points: format_points(r.points, scale),
        source: match r.source {
            DocumentSource::Sync => pb::DocumentSource::Sync,
            DocumentSource::Api => pb::DocumentSource::Api,
            DocumentSource::Import => pb::DocumentSource::Import,
        } as i32,
        received_at: Some(timestamp(r.received_at)),
        processed_at: r.processed_at.map(timestamp),
        correction_type: d
            .correction_type
            .map_or(pb::CorrectionType::Unspecified, |c| match c {
                CorrectionType::Valuable => pb::CorrectionType::Valuable,
                CorrectionType::Quantitative => pb::CorrectionType::Quantitative,
            }) as i32,
        corrected_document_id: d.corrected_document_id.clone().unwrap_or_default(),
    }
}
