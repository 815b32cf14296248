//! The points calculation (DOMAIN.md §3.2–3.7): for each line, base points of the product on the
//! pricing day × quantity × the multiplier of the rules in force × the client's segment rate,
//! computed exactly and rounded once, with a breakdown that explains every rule considered.

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::domain::points::round_points;
use crate::domain::rules::{
    Channel, EffectiveDated, MultiplierRule, ProductFacts, RuleIndex, RuleTarget,
};
use crate::domain::settings::StackingMode;

/// One line to price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput {
    pub line_no: u32,
    pub product: ProductFacts,
    pub quantity: Decimal,
    pub channel: Channel,
    pub order_number: Option<String>,
    /// The order date, else the document's sale date.
    pub pricing_date: NaiveDate,
}

/// The tenant's choices that shape a calculation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalculationPolicy {
    pub points_scale: u32,
    pub stacking_mode: StackingMode,
    pub offline_lines_earn: bool,
}

/// Everything known about the client and the rules, loaded for one document.
#[derive(Debug, Clone, Default)]
pub struct PricingBook {
    pub rules: RuleIndex,
    /// Base points per product id.
    pub base_points: HashMap<String, EffectiveDated>,
    /// Rates of the client's segments.
    pub segment_rates: HashMap<String, EffectiveDated>,
    /// The client's segments.
    pub client_segments: BTreeSet<String>,
}

/// How one rule was judged for one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEvaluation {
    pub rule_id: String,
    pub rule_version: u32,
    pub rule_name: String,
    pub factor: Decimal,
    pub applied: bool,
    /// Why it did not apply; empty when it did.
    pub reason: String,
    pub matched_by: RuleTarget,
}

/// The calculation of one line, kept with the earn event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineCalculation {
    pub line_no: u32,
    pub product_id: String,
    pub quantity: Decimal,
    pub channel: Channel,
    pub order_number: Option<String>,
    pub pricing_date: NaiveDate,
    pub base_points: Option<Decimal>,
    pub rules: Vec<RuleEvaluation>,
    pub stacking_mode: StackingMode,
    pub multiplier: Decimal,
    pub segment_id: Option<String>,
    pub segment_rate: Decimal,
    pub unrounded_points: Decimal,
    pub points: Decimal,
    /// Why the line earned nothing, when it did not.
    pub note: Option<String>,
}

/// A whole document: its lines and their sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentCalculation {
    pub lines: Vec<LineCalculation>,
    pub total: Decimal,
    pub stacking_mode: StackingMode,
}

/// Prices every line; the total is the sum of the rounded lines.
pub fn calculate(
    lines: &[LineInput],
    book: &PricingBook,
    policy: CalculationPolicy,
) -> DocumentCalculation {
    let lines: Vec<LineCalculation> = lines
        .iter()
        .map(|line| calculate_line(line, book, policy))
        .collect();
    let total = lines.iter().map(|l| l.points).sum();
    DocumentCalculation {
        lines,
        total,
        stacking_mode: policy.stacking_mode,
    }
}

/// Prices one line.
pub fn calculate_line(
    line: &LineInput,
    book: &PricingBook,
    policy: CalculationPolicy,
) -> LineCalculation {
    let day = line.pricing_date;
    let mut rules: Vec<RuleEvaluation> = book
        .rules
        .candidates(&line.product)
        .into_iter()
        .map(|(rule, matched_by)| judge(rule, matched_by, line, &book.client_segments))
        .collect();
    let multiplier = stack(&mut rules, policy.stacking_mode);
    let (segment_id, segment_rate) = segment_rate(book, day);
    let base_points = book
        .base_points
        .get(&line.product.product_id)
        .and_then(|b| b.on(day));
    let excluded_offline = line.channel == Channel::Offline && !policy.offline_lines_earn;
    let note = match base_points {
        _ if excluded_offline => {
            Some("offline lines are excluded by the tenant's settings".to_owned())
        }
        None => Some(format!(
            "no base points for product {} on {day}",
            line.product.product_id
        )),
        Some(points) if points.is_zero() => Some(format!(
            "base points of product {} are 0 on {day}",
            line.product.product_id
        )),
        Some(_) => None,
    };
    let unrounded = match (note.is_none(), base_points) {
        (true, Some(base)) => base * line.quantity * multiplier * segment_rate,
        _ => Decimal::ZERO,
    };
    LineCalculation {
        line_no: line.line_no,
        product_id: line.product.product_id.clone(),
        quantity: line.quantity,
        channel: line.channel,
        order_number: line.order_number.clone(),
        pricing_date: day,
        base_points,
        rules,
        stacking_mode: policy.stacking_mode,
        multiplier: multiplier.normalize(),
        segment_id,
        segment_rate: segment_rate.normalize(),
        unrounded_points: unrounded.normalize(),
        points: round_points(unrounded, policy.points_scale).normalize(),
        note,
    }
}

/// Whether a rule applies to a line, before stacking.
fn judge(
    rule: &MultiplierRule,
    matched_by: RuleTarget,
    line: &LineInput,
    client_segments: &BTreeSet<String>,
) -> RuleEvaluation {
    let day = line.pricing_date;
    let window = || match rule.valid_until {
        Some(until) => format!("{}..{until}", rule.valid_from),
        None => format!("{}..", rule.valid_from),
    };
    let reason = if day < rule.valid_from {
        format!(
            "pricing date {day} is before the rule's window {}",
            window()
        )
    } else if !rule.in_window(day) {
        format!("pricing date {day} is after the rule's window {}", window())
    } else if rule.channel.is_some_and(|c| c != line.channel) {
        format!(
            "the line is {}; the rule is for {} lines",
            line.channel.as_str().to_lowercase(),
            rule.channel.map_or("", |c| c.as_str()).to_lowercase()
        )
    } else if !rule.segment_ids.is_empty()
        && !rule.segment_ids.iter().any(|s| client_segments.contains(s))
    {
        format!(
            "the client is in none of the rule's segments {}",
            rule.segment_ids.join(", ")
        )
    } else {
        String::new()
    };
    RuleEvaluation {
        rule_id: rule.rule_id.clone(),
        rule_version: rule.version,
        rule_name: rule.name.clone(),
        factor: rule.factor,
        applied: reason.is_empty(),
        reason,
        matched_by,
    }
}

/// Combines the factors of the rules that passed `judge`; under MAX marks the others as
/// outranked. Returns the multiplier (1 when none applies).
fn stack(rules: &mut [RuleEvaluation], mode: StackingMode) -> Decimal {
    let applicable = rules.iter().filter(|r| r.applied).map(|r| r.factor);
    match mode {
        StackingMode::Multiply => applicable.product(),
        StackingMode::Add => Decimal::ONE + applicable.map(|f| f - Decimal::ONE).sum::<Decimal>(),
        StackingMode::Max => {
            // The highest factor wins; a tie goes to the smallest rule id (rules are in id order).
            let Some(best) =
                rules
                    .iter()
                    .filter(|r| r.applied)
                    .fold(None::<&RuleEvaluation>, |best, r| match best {
                        Some(b) if b.factor >= r.factor => Some(b),
                        _ => Some(r),
                    })
            else {
                return Decimal::ONE;
            };
            let (best_id, best_factor) = (best.rule_id.clone(), best.factor);
            for rule in rules
                .iter_mut()
                .filter(|r| r.applied && r.rule_id != best_id)
            {
                rule.applied = false;
                rule.reason = format!(
                    "outranked by rule {best_id} (factor {best_factor}) under MAX stacking"
                );
            }
            best_factor
        }
    }
}

/// The highest rate in force on `day` among the client's segments, with its segment.
fn segment_rate(book: &PricingBook, day: NaiveDate) -> (Option<String>, Decimal) {
    book.client_segments
        .iter()
        .filter_map(|s| {
            book.segment_rates
                .get(s)
                .and_then(|r| r.on(day))
                .map(|rate| (s, rate))
        })
        .fold(None::<(&String, Decimal)>, |best, (s, rate)| match best {
            Some((_, b)) if b >= rate => best,
            _ => Some((s, rate)),
        })
        .map_or((None, Decimal::ONE), |(s, rate)| (Some(s.clone()), rate))
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
