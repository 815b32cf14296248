//! The per-line calculation kept with an earn or lose event, so that every point can be explained
//! later exactly as it was computed.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::RepoError;
use crate::domain::engine::{LineCalculation, RuleEvaluation};
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::rules::{Channel, RuleTarget, TargetKind};

/// One line of an event's calculation as `ledger_events.lines` keeps it (a JSON array of these,
/// in line order; migration `m20261207_000020_lines_in_their_rows`). Quantities and points are
/// minor units; factors, rates and unrounded points exact decimal text, as the columns of the
/// view `ledger_event_lines` give them.
#[derive(Debug, Serialize, Deserialize)]
struct StoredLine {
    line_no: u32,
    product_id: String,
    quantity: i64,
    channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order_number: Option<String>,
    pricing_date: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_points: Option<i64>,
    multiplier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segment_id: Option<String>,
    segment_rate: String,
    unrounded_points: String,
    points: i64,
    /// Every rule considered, applied or not and why.
    rules: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// `ledger_events.lines` for an event with these lines: `None` for an event without any.
///
/// # Errors
/// Points that do not fit the storage scale.
pub(crate) fn stored(lines: &[LineCalculation]) -> Result<Option<String>, RepoError> {
    if lines.is_empty() {
        return Ok(None);
    }
    let stored = lines
        .iter()
        .map(stored_line)
        .collect::<Result<Vec<_>, _>>()?;
    serde_json::to_string(&stored)
        .map(Some)
        .map_err(|e| RepoError::Other(e.to_string()))
}

/// The lines of event `event_id` from its `ledger_events.lines`, in line order.
pub(crate) fn from_stored(
    event_id: i64,
    lines: Option<&str>,
) -> Result<Vec<LineCalculation>, RepoError> {
    let Some(lines) = lines else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredLine> = serde_json::from_str(lines)
        .map_err(|e| RepoError::Corrupt(format!("ledger_events.lines of event {event_id}: {e}")))?;
    stored.iter().map(|l| from_line(event_id, l)).collect()
}

fn stored_line(l: &LineCalculation) -> Result<StoredLine, RepoError> {
    let rules = l
        .rules
        .iter()
        .map(|r| {
            json!({
                "rule_id": r.rule_id,
                "rule_version": r.rule_version,
                "rule_name": r.rule_name,
                "factor": r.factor.to_string(),
                "applied": r.applied,
                "reason": r.reason,
                "matched_by": {"kind": r.matched_by.kind.as_str(), "id": r.matched_by.id},
            })
        })
        .collect();
    Ok(StoredLine {
        line_no: l.line_no,
        product_id: l.product_id.clone(),
        quantity: to_minor_units(l.quantity)?,
        channel: l.channel.as_str().to_owned(),
        order_number: l.order_number.clone(),
        pricing_date: l.pricing_date,
        base_points: l.base_points.map(to_minor_units).transpose()?,
        multiplier: l.multiplier.to_string(),
        segment_id: l.segment_id.clone(),
        segment_rate: l.segment_rate.to_string(),
        unrounded_points: l.unrounded_points.to_string(),
        points: to_minor_units(l.points)?,
        rules,
        note: l.note.clone(),
    })
}

fn from_line(event_id: i64, r: &StoredLine) -> Result<LineCalculation, RepoError> {
    let corrupt = |what: &str| {
        RepoError::Corrupt(format!(
            "ledger_events.lines of event {event_id}: line {}'s {what}",
            r.line_no
        ))
    };
    let decimal = |text: &str, what: &str| text.parse::<Decimal>().map_err(|_| corrupt(what));
    let rules = r
        .rules
        .iter()
        .map(|v| {
            let text = |key: &str| {
                v.get(key)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| corrupt("rules"))
            };
            let target = v.get("matched_by").ok_or_else(|| corrupt("rules"))?;
            Ok(RuleEvaluation {
                rule_id: text("rule_id")?,
                rule_version: v
                    .get("rule_version")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| corrupt("rules"))?,
                rule_name: text("rule_name")?,
                factor: decimal(&text("factor")?, "rules")?,
                applied: v
                    .get("applied")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| corrupt("rules"))?,
                reason: text("reason")?,
                matched_by: RuleTarget {
                    kind: target
                        .get("kind")
                        .and_then(Value::as_str)
                        .and_then(TargetKind::parse)
                        .ok_or_else(|| corrupt("rules"))?,
                    id: target
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| corrupt("rules"))?
                        .to_owned(),
                },
            })
        })
        .collect::<Result<Vec<_>, RepoError>>()?;
    Ok(LineCalculation {
        line_no: r.line_no,
        product_id: r.product_id.clone(),
        quantity: from_minor_units(r.quantity),
        channel: Channel::parse(&r.channel).ok_or_else(|| corrupt("channel"))?,
        order_number: r.order_number.clone(),
        pricing_date: r.pricing_date,
        base_points: r.base_points.map(from_minor_units),
        rules,
        // The event row carries the mode; the caller sets it.
        stacking_mode: crate::domain::settings::StackingMode::Max,
        multiplier: decimal(&r.multiplier, "multiplier")?,
        segment_id: r.segment_id.clone(),
        segment_rate: decimal(&r.segment_rate, "segment_rate")?,
        unrounded_points: decimal(&r.unrounded_points, "unrounded_points")?,
        points: from_minor_units(r.points),
        note: r.note.clone(),
    })
}
