//! The per-line calculation kept with an earn or lose event, so that every point can be explained
//! later exactly as it was computed.

use rust_decimal::Decimal;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};

use super::entities::ledger_event_lines;
use super::error::{RepoError, classify};
use crate::domain::engine::{LineCalculation, RuleEvaluation};
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::rules::{Channel, RuleTarget, TargetKind};
use crate::domain::tenant::TenantId;

/// Rows per INSERT, below SQLite's bound-value limit.
const CHUNK: usize = 500;

/// Writes the lines of an event inside the caller's transaction.
pub(crate) async fn insert_lines(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    event_id: i64,
    lines: &[LineCalculation],
) -> Result<(), RepoError> {
    for chunk in lines.chunks(CHUNK) {
        let rows = chunk
            .iter()
            .map(|l| row(tenant, event_id, l))
            .collect::<Result<Vec<_>, _>>()?;
        ledger_event_lines::Entity::insert_many(rows)
            .exec(conn)
            .await
            .map_err(classify)?;
    }
    Ok(())
}

/// The lines of an event, in line order.
pub(crate) async fn read_lines(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    event_id: i64,
) -> Result<Vec<LineCalculation>, RepoError> {
    let rows = ledger_event_lines::Entity::find()
        .filter(ledger_event_lines::Column::TenantId.eq(tenant.as_str()))
        .filter(ledger_event_lines::Column::EventId.eq(event_id))
        .order_by_asc(ledger_event_lines::Column::LineNo)
        .all(conn)
        .await
        .map_err(classify)?;
    rows.iter().map(from_row).collect()
}

pub(crate) fn row(
    tenant: &TenantId,
    event_id: i64,
    l: &LineCalculation,
) -> Result<ledger_event_lines::ActiveModel, RepoError> {
    let rules: Vec<Value> = l
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
    Ok(ledger_event_lines::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        event_id: Set(event_id),
        line_no: Set(i32::try_from(l.line_no)
            .map_err(|_| RepoError::Other("line number out of range".into()))?),
        product_id: Set(l.product_id.clone()),
        quantity: Set(to_minor_units(l.quantity)?),
        channel: Set(l.channel.as_str().to_owned()),
        order_number: Set(l.order_number.clone()),
        pricing_date: Set(l.pricing_date),
        base_points: Set(l.base_points.map(to_minor_units).transpose()?),
        multiplier: Set(l.multiplier.to_string()),
        segment_id: Set(l.segment_id.clone()),
        segment_rate: Set(l.segment_rate.to_string()),
        unrounded_points: Set(l.unrounded_points.to_string()),
        points: Set(to_minor_units(l.points)?),
        rules: Set(Value::Array(rules).to_string()),
        note: Set(l.note.clone()),
    })
}

fn from_row(r: &ledger_event_lines::Model) -> Result<LineCalculation, RepoError> {
    let corrupt = |what: &str| {
        RepoError::Corrupt(format!("ledger_event_lines.{what} of event {}", r.event_id))
    };
    let decimal = |text: &str, what: &str| text.parse::<Decimal>().map_err(|_| corrupt(what));
    let rules: Vec<Value> = serde_json::from_str(&r.rules).map_err(|_| corrupt("rules"))?;
    let rules = rules
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
        line_no: u32::try_from(r.line_no).map_err(|_| corrupt("line_no"))?,
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
