//! The points rules (DOMAIN.md §3): effective-dated base points and segment rates, and multiplier
//! rules with their targets, window, segments and channel.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use rust_decimal::Decimal;

/// Where a line was sold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Online,
    Offline,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "ONLINE",
            Self::Offline => "OFFLINE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ONLINE" => Some(Self::Online),
            "OFFLINE" => Some(Self::Offline),
            _ => None,
        }
    }
}

/// What a multiplier rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    Product,
    /// A category and its sub-categories.
    Category,
    Label,
    Manufacturer,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Product => "PRODUCT",
            Self::Category => "CATEGORY",
            Self::Label => "LABEL",
            Self::Manufacturer => "MANUFACTURER",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Product,
            Self::Category,
            Self::Label,
            Self::Manufacturer,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleTarget {
    pub kind: TargetKind,
    pub id: String,
}

impl std::fmt::Display for RuleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.as_str().to_lowercase(), self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleStatus {
    Draft,
    Published,
    Archived,
}

impl RuleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "DRAFT",
            Self::Published => "PUBLISHED",
            Self::Archived => "ARCHIVED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Draft, Self::Published, Self::Archived]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One version of a multiplier rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiplierRule {
    pub rule_id: String,
    pub version: u32,
    pub status: RuleStatus,
    pub name: String,
    pub description: String,
    pub targets: Vec<RuleTarget>,
    /// > 0.
    pub factor: Decimal,
    /// Inclusive days, matched against the order date.
    pub valid_from: NaiveDate,
    pub valid_until: Option<NaiveDate>,
    /// Empty: every client.
    pub segment_ids: Vec<String>,
    /// `None`: both channels.
    pub channel: Option<Channel>,
}

impl MultiplierRule {
    pub fn in_window(&self, day: NaiveDate) -> bool {
        self.valid_from <= day && self.valid_until.is_none_or(|until| day <= until)
    }
}

/// What the rules need to know of a product.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProductFacts {
    pub product_id: String,
    /// Its category and every ancestor, nearest first.
    pub categories: Vec<String>,
    pub label_ids: Vec<String>,
    pub manufacturer_id: Option<String>,
}

impl ProductFacts {
    /// Every target that selects this product.
    pub fn targets(&self) -> Vec<RuleTarget> {
        let mut targets = vec![RuleTarget {
            kind: TargetKind::Product,
            id: self.product_id.clone(),
        }];
        let mut add = |kind, ids: &[String]| {
            targets.extend(ids.iter().map(|id| RuleTarget {
                kind,
                id: id.clone(),
            }));
        };
        add(TargetKind::Category, &self.categories);
        add(TargetKind::Label, &self.label_ids);
        add(TargetKind::Manufacturer, self.manufacturer_id.as_slice());
        targets
    }
}

/// Rules indexed by target: finding a line's rules costs a few hash probes, not a scan.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    rules: Vec<MultiplierRule>,
    by_target: HashMap<RuleTarget, Vec<usize>>,
}

impl RuleIndex {
    pub fn new(rules: Vec<MultiplierRule>) -> Self {
        let mut by_target: HashMap<RuleTarget, Vec<usize>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            for target in &rule.targets {
                by_target.entry(target.clone()).or_default().push(i);
            }
        }
        Self { rules, by_target }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Each rule that targets the product once, with the first target that matched, in rule-id
    /// order.
    pub fn candidates(&self, product: &ProductFacts) -> Vec<(&MultiplierRule, RuleTarget)> {
        let mut found: BTreeMap<(&str, u32), (&MultiplierRule, RuleTarget)> = BTreeMap::new();
        for target in product.targets() {
            for &i in self.by_target.get(&target).map_or(&[][..], Vec::as_slice) {
                let rule = &self.rules[i];
                found
                    .entry((rule.rule_id.as_str(), rule.version))
                    .or_insert_with(|| (rule, target.clone()));
            }
        }
        found.into_values().collect()
    }
}

/// Values that change on given days: base points of a product, the rate of a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveDated {
    /// Sorted by day.
    entries: Vec<(NaiveDate, Decimal)>,
}

impl EffectiveDated {
    pub fn new(mut entries: Vec<(NaiveDate, Decimal)>) -> Self {
        entries.sort();
        entries.dedup_by_key(|e| e.0);
        Self { entries }
    }

    /// The value in force on `day`: the latest entry on or before it.
    pub fn on(&self, day: NaiveDate) -> Option<Decimal> {
        let after = self.entries.partition_point(|(from, _)| *from <= day);
        after.checked_sub(1).map(|i| self.entries[i].1)
    }

    pub fn entries(&self) -> &[(NaiveDate, Decimal)] {
        &self.entries
    }
}

/// A rule version as stored, with its life-cycle times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRule {
    pub rule: MultiplierRule,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub published_at: Option<chrono::DateTime<chrono::Utc>>,
    pub archived_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What editing a rule does, from its versions (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditPlan {
    /// The latest version is a draft: it is edited in place.
    ReplaceDraft { version: u32 },
    /// The latest version is published: the edit becomes the next version, as a draft.
    NewVersion { version: u32 },
}

/// Why a life-cycle step is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("rule {0} does not exist")]
    NoSuchRule(String),
    #[error("rule {rule_id} has no version {version}")]
    NoSuchVersion { rule_id: String, version: u32 },
    #[error("rule {0} is archived; create a new rule instead")]
    Archived(String),
    #[error("rule {rule_id} version {version} is {status}, only a draft can be published")]
    NotADraft {
        rule_id: String,
        version: u32,
        status: &'static str,
    },
}

/// How an edit of a rule is stored.
///
/// # Errors
/// An unknown or archived rule.
pub fn plan_edit(rule_id: &str, versions: &[StoredRule]) -> Result<EditPlan, LifecycleError> {
    let latest = versions
        .last()
        .ok_or_else(|| LifecycleError::NoSuchRule(rule_id.to_owned()))?;
    match latest.rule.status {
        RuleStatus::Draft => Ok(EditPlan::ReplaceDraft {
            version: latest.rule.version,
        }),
        RuleStatus::Published => Ok(EditPlan::NewVersion {
            version: latest.rule.version + 1,
        }),
        RuleStatus::Archived => Err(LifecycleError::Archived(rule_id.to_owned())),
    }
}

/// Checks that `version` can be published.
///
/// # Errors
/// An unknown rule or version, or a version that is not a draft.
pub fn check_publish(
    rule_id: &str,
    versions: &[StoredRule],
    version: u32,
) -> Result<(), LifecycleError> {
    if versions.is_empty() {
        return Err(LifecycleError::NoSuchRule(rule_id.to_owned()));
    }
    let found = versions
        .iter()
        .find(|v| v.rule.version == version)
        .ok_or_else(|| LifecycleError::NoSuchVersion {
            rule_id: rule_id.to_owned(),
            version,
        })?;
    if found.rule.status == RuleStatus::Draft {
        Ok(())
    } else {
        Err(LifecycleError::NotADraft {
            rule_id: rule_id.to_owned(),
            version,
            status: found.rule.status.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().expect("day")
    }

    fn stored(version: u32, status: RuleStatus) -> StoredRule {
        StoredRule {
            rule: MultiplierRule {
                rule_id: "r".into(),
                version,
                status,
                name: String::new(),
                description: String::new(),
                targets: vec![],
                factor: Decimal::ONE,
                valid_from: day("2026-01-01"),
                valid_until: None,
                segment_ids: vec![],
                channel: None,
            },
            created_at: chrono::Utc::now(),
            published_at: None,
            archived_at: None,
        }
    }

    #[test]
    fn a_draft_is_edited_in_place_and_a_published_rule_gets_a_new_version() {
        assert_eq!(
            plan_edit("r", &[stored(1, RuleStatus::Draft)]),
            Ok(EditPlan::ReplaceDraft { version: 1 })
        );
        assert_eq!(
            plan_edit("r", &[stored(1, RuleStatus::Published)]),
            Ok(EditPlan::NewVersion { version: 2 })
        );
        assert_eq!(
            plan_edit(
                "r",
                &[
                    stored(1, RuleStatus::Published),
                    stored(2, RuleStatus::Draft)
                ]
            ),
            Ok(EditPlan::ReplaceDraft { version: 2 })
        );
        assert!(matches!(
            plan_edit("r", &[stored(1, RuleStatus::Archived)]),
            Err(LifecycleError::Archived(_))
        ));
        assert!(matches!(
            plan_edit("r", &[]),
            Err(LifecycleError::NoSuchRule(_))
        ));
    }

    #[test]
    fn only_a_draft_can_be_published() {
        let versions = [
            stored(1, RuleStatus::Published),
            stored(2, RuleStatus::Draft),
        ];
        assert_eq!(check_publish("r", &versions, 2), Ok(()));
        assert!(matches!(
            check_publish("r", &versions, 1),
            Err(LifecycleError::NotADraft { .. })
        ));
        assert!(matches!(
            check_publish("r", &versions, 3),
            Err(LifecycleError::NoSuchVersion { .. })
        ));
    }

    #[test]
    fn effective_dated_values_apply_from_their_day_on() {
        let book = EffectiveDated::new(vec![
            (day("2026-03-01"), Decimal::from(5)),
            (day("2026-01-01"), Decimal::from(2)),
        ]);
        assert_eq!(book.on(day("2025-12-31")), None);
        assert_eq!(book.on(day("2026-01-01")), Some(Decimal::from(2)));
        assert_eq!(book.on(day("2026-02-28")), Some(Decimal::from(2)));
        assert_eq!(book.on(day("2026-03-01")), Some(Decimal::from(5)));
    }
}
