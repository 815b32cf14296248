//! What an administrator writes when defining rules, and the checks on it.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::domain::points::to_minor_units;
use crate::domain::rules::{Channel, RuleTarget};
use crate::domain::validation::{FieldViolation, Invalid};

/// Targets per rule.
pub const MAX_TARGETS: usize = 1_000;
/// Base points entries per call.
pub const MAX_BASE_POINTS_ENTRIES: usize = 50_000;
/// The largest factor or rate accepted; a guard against typos such as 150 for 1.5.
pub const MAX_FACTOR: i64 = 1_000;

/// The editable fields of a multiplier rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    pub description: String,
    pub targets: Vec<RuleTarget>,
    pub factor: Decimal,
    pub valid_from: NaiveDate,
    pub valid_until: Option<NaiveDate>,
    pub segment_ids: Vec<String>,
    pub channel: Option<Channel>,
}

impl RuleSpec {
    /// Every rule the spec breaks, with paths under `prefix` ("spec.").
    pub fn violations(&self, prefix: &str) -> Vec<FieldViolation> {
        let mut found = Vec::new();
        let field = |name: &str| format!("{prefix}{name}");
        let name = self.name.trim();
        if name.is_empty() || name.len() > 200 {
            found.push(FieldViolation::new(
                field("name"),
                "must be 1 to 200 characters",
            ));
        }
        if self.description.len() > 2_000 {
            found.push(FieldViolation::new(
                field("description"),
                "must be at most 2000 characters",
            ));
        }
        if self.targets.is_empty() || self.targets.len() > MAX_TARGETS {
            found.push(FieldViolation::new(
                field("targets"),
                format!("must hold 1 to {MAX_TARGETS} targets"),
            ));
        }
        for (i, target) in self.targets.iter().enumerate() {
            if target.id.trim().is_empty() || target.id.len() > 128 {
                found.push(FieldViolation::new(
                    field(&format!("targets[{i}].id")),
                    "must be 1 to 128 characters",
                ));
            }
        }
        if self.targets.iter().collect::<BTreeSet<_>>().len() != self.targets.len() {
            found.push(FieldViolation::new(
                field("targets"),
                "lists a target twice",
            ));
        }
        if let Some(problem) = factor_problem(self.factor) {
            found.push(FieldViolation::new(field("factor"), problem));
        }
        if self
            .valid_until
            .is_some_and(|until| until < self.valid_from)
        {
            found.push(FieldViolation::new(
                field("valid_until"),
                "must not be before valid_from",
            ));
        }
        if self
            .segment_ids
            .iter()
            .any(|s| s.trim().is_empty() || s.len() > 128)
        {
            found.push(FieldViolation::new(
                field("segment_ids"),
                "every segment id must be 1 to 128 characters",
            ));
        }
        found
    }

    /// # Errors
    /// The violations, when there are any.
    pub fn check(&self, prefix: &str) -> Result<(), Invalid> {
        Invalid::check(self.violations(prefix))
    }
}

/// Why a factor or rate is unusable: it must be > 0, at most [`MAX_FACTOR`], storable exactly.
pub fn factor_problem(value: Decimal) -> Option<String> {
    if value <= Decimal::ZERO {
        Some("must be greater than 0".into())
    } else if value > Decimal::from(MAX_FACTOR) {
        Some(format!("must be at most {MAX_FACTOR}"))
    } else {
        to_minor_units(value).err().map(|e| e.to_string())
    }
}

/// Checks a bulk base-points change: product ids present and unique, points ≥ 0.
///
/// # Errors
/// Every bad entry, by index.
pub fn check_base_points(entries: &[(String, Decimal)]) -> Result<(), Invalid> {
    let mut found = Vec::new();
    if entries.is_empty() || entries.len() > MAX_BASE_POINTS_ENTRIES {
        found.push(FieldViolation::new(
            "entries",
            format!("must hold 1 to {MAX_BASE_POINTS_ENTRIES} entries"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, (product_id, points)) in entries.iter().enumerate() {
        if product_id.trim().is_empty() || product_id.len() > 128 {
            found.push(FieldViolation::new(
                format!("entries[{i}].product_id"),
                "must be 1 to 128 characters",
            ));
        } else if !seen.insert(product_id.as_str()) {
            found.push(FieldViolation::new(
                format!("entries[{i}].product_id"),
                "appears twice",
            ));
        }
        if points.is_sign_negative() && !points.is_zero() {
            found.push(FieldViolation::new(
                format!("entries[{i}].points"),
                "must not be negative",
            ));
        }
    }
    Invalid::check(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rules::TargetKind;

    fn spec() -> RuleSpec {
        RuleSpec {
            name: "Spring cables".into(),
            description: String::new(),
            targets: vec![RuleTarget {
                kind: TargetKind::Category,
                id: "C1".into(),
            }],
            factor: Decimal::new(15, 1),
            valid_from: NaiveDate::from_ymd_opt(2026, 3, 1).expect("day"),
            valid_until: None,
            segment_ids: vec![],
            channel: None,
        }
    }

    #[test]
    fn a_sound_spec_passes_and_each_problem_names_its_field() {
        assert!(spec().violations("spec.").is_empty());
        let bad = RuleSpec {
            name: " ".into(),
            targets: vec![],
            factor: Decimal::ZERO,
            valid_until: NaiveDate::from_ymd_opt(2026, 2, 1),
            ..spec()
        };
        let fields: Vec<String> = bad
            .violations("spec.")
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.name",
                "spec.targets",
                "spec.factor",
                "spec.valid_until"
            ]
        );
        assert!(
            factor_problem(Decimal::new(15, 5)).is_some(),
            "more digits than stored"
        );
        assert!(factor_problem(Decimal::from(1_001)).is_some());
    }

    #[test]
    fn base_points_entries_are_checked_one_by_one() {
        let entries = vec![
            ("P1".to_owned(), Decimal::ONE),
            ("P1".to_owned(), Decimal::ONE),
            (String::new(), Decimal::NEGATIVE_ONE),
        ];
        let Invalid(found) = check_base_points(&entries).expect_err("invalid");
        let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "entries[1].product_id",
                "entries[2].product_id",
                "entries[2].points"
            ]
        );
    }
}
