//! A tenant's settings (DOMAIN.md §8): defaults, partial updates and their validation.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::domain::points::MAX_POINTS_SCALE;
use crate::domain::validation::{FieldViolation, Invalid, check_range};

/// How several multiplier rules matching one line combine (DOMAIN.md §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StackingMode {
    /// The highest factor applies.
    #[default]
    Max,
    /// The product of the factors.
    Multiply,
    /// 1 + the sum of (factor − 1).
    Add,
}

impl StackingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Max => "MAX",
            Self::Multiply => "MULTIPLY",
            Self::Add => "ADD",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "MAX" => Some(Self::Max),
            "MULTIPLY" => Some(Self::Multiply),
            "ADD" => Some(Self::Add),
            _ => None,
        }
    }
}

/// The ONe document kinds the synchronization pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncDocumentKind {
    Invoice,
    Correction,
}

impl SyncDocumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invoice => "INVOICE",
            Self::Correction => "CORRECTION",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "INVOICE" => Some(Self::Invoice),
            "CORRECTION" => Some(Self::Correction),
            _ => None,
        }
    }
}

/// The "document synchronization settings".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSyncSettings {
    pub kinds: Vec<SyncDocumentKind>,
    pub from_date: Option<NaiveDate>,
    pub interval_seconds: u32,
}

/// Everything a tenant can set. The revision and time of the last change travel with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    pub company_logo_url: String,
    pub document_sync: DocumentSyncSettings,
    pub declaration_type_id: String,
    pub points_scale: u32,
    pub stacking_mode: StackingMode,
    pub offline_lines_earn: bool,
    pub lock_days: u32,
    pub expiry_months: u32,
    pub reservation_ttl_seconds: u32,
    pub time_zone: Tz,
    pub day_close_grace_minutes: u32,
    pub expiring_window_days: u32,
    /// 0 while the tenant never changed anything (the defaults).
    pub revision: u32,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            company_logo_url: String::new(),
            document_sync: DocumentSyncSettings {
                kinds: vec![SyncDocumentKind::Invoice, SyncDocumentKind::Correction],
                from_date: None,
                interval_seconds: 300,
            },
            declaration_type_id: String::new(),
            points_scale: 2,
            stacking_mode: StackingMode::Max,
            offline_lines_earn: true,
            lock_days: 0,
            expiry_months: 0,
            reservation_ttl_seconds: 900,
            time_zone: chrono_tz::Europe::Warsaw,
            day_close_grace_minutes: 60,
            expiring_window_days: 30,
            revision: 0,
            updated_at: None,
        }
    }
}

/// A partial update: `None` leaves a field as it is. Text fields that need parsing arrive raw so
/// that every problem is reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    pub company_logo_url: Option<String>,
    pub document_sync_kinds: Option<Vec<SyncDocumentKind>>,
    /// An empty string clears the date.
    pub document_sync_from_date: Option<String>,
    pub document_sync_interval_seconds: Option<u32>,
    pub declaration_type_id: Option<String>,
    pub points_scale: Option<u32>,
    pub stacking_mode: Option<StackingMode>,
    pub offline_lines_earn: Option<bool>,
    pub lock_days: Option<u32>,
    pub expiry_months: Option<u32>,
    pub reservation_ttl_seconds: Option<u32>,
    pub time_zone: Option<String>,
    pub day_close_grace_minutes: Option<u32>,
    pub expiring_window_days: Option<u32>,
}

impl SettingsPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl TenantSettings {
    /// The settings with the patch applied, or every field the patch gets wrong. The revision
    /// and time are left for the store to advance.
    ///
    /// # Errors
    /// The violations of the patched settings, field paths as in the API's `TenantSettings`.
    pub fn apply(&self, patch: &SettingsPatch) -> Result<Self, Invalid> {
        let mut found = Vec::new();
        let mut next = self.clone();
        if let Some(url) = &patch.company_logo_url {
            url.trim().clone_into(&mut next.company_logo_url);
        }
        if let Some(kinds) = &patch.document_sync_kinds {
            let mut kinds = kinds.clone();
            kinds.sort();
            kinds.dedup();
            next.document_sync.kinds = kinds;
        }
        if let Some(date) = &patch.document_sync_from_date {
            next.document_sync.from_date =
                parse_optional_day(date, "document_sync.from_date", &mut found);
        }
        if let Some(zone) = &patch.time_zone {
            match zone.parse::<Tz>() {
                Ok(tz) => next.time_zone = tz,
                Err(_) => found.push(FieldViolation::new(
                    "time_zone",
                    format!("{zone:?} is not an IANA time zone such as \"Europe/Warsaw\""),
                )),
            }
        }
        let copy = |target: &mut u32, value: Option<u32>| {
            if let Some(v) = value {
                *target = v;
            }
        };
        copy(
            &mut next.document_sync.interval_seconds,
            patch.document_sync_interval_seconds,
        );
        copy(&mut next.points_scale, patch.points_scale);
        copy(&mut next.lock_days, patch.lock_days);
        copy(&mut next.expiry_months, patch.expiry_months);
        copy(
            &mut next.reservation_ttl_seconds,
            patch.reservation_ttl_seconds,
        );
        copy(
            &mut next.day_close_grace_minutes,
            patch.day_close_grace_minutes,
        );
        copy(&mut next.expiring_window_days, patch.expiring_window_days);
        if let Some(id) = &patch.declaration_type_id {
            id.trim().clone_into(&mut next.declaration_type_id);
        }
        if let Some(mode) = patch.stacking_mode {
            next.stacking_mode = mode;
        }
        if let Some(earn) = patch.offline_lines_earn {
            next.offline_lines_earn = earn;
        }
        found.extend(next.violations());
        Invalid::check(found)?;
        Ok(next)
    }

    /// Every rule the settings break.
    pub fn violations(&self) -> Vec<FieldViolation> {
        let mut found = Vec::new();
        if !self.company_logo_url.is_empty() && !is_web_url(&self.company_logo_url) {
            found.push(FieldViolation::new(
                "company_logo_url",
                "must be an http(s) URL or empty",
            ));
        }
        if self.declaration_type_id.len() > 128 {
            found.push(FieldViolation::new(
                "loyalty_declaration_type_id",
                "must be at most 128 characters",
            ));
        }
        check_range(
            &mut found,
            "document_sync.interval_seconds",
            self.document_sync.interval_seconds,
            60,
            86_400,
        );
        check_range(
            &mut found,
            "points_scale",
            self.points_scale,
            0,
            MAX_POINTS_SCALE,
        );
        check_range(&mut found, "lock_days", self.lock_days, 0, 3_650);
        check_range(&mut found, "expiry_months", self.expiry_months, 0, 600);
        check_range(
            &mut found,
            "reservation_ttl_seconds",
            self.reservation_ttl_seconds,
            60,
            86_400,
        );
        check_range(
            &mut found,
            "day_close_grace_minutes",
            self.day_close_grace_minutes,
            0,
            1_440,
        );
        check_range(
            &mut found,
            "expiring_window_days",
            self.expiring_window_days,
            1,
            366,
        );
        found
    }
}

fn parse_optional_day(
    text: &str,
    field: &str,
    found: &mut Vec<FieldViolation>,
) -> Option<NaiveDate> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Some(day)
    } else {
        found.push(FieldViolation::new(
            field,
            format!("{text:?} is not a day in the form YYYY-MM-DD"),
        ));
        None
    }
}

/// An absolute http or https URL with a host.
fn is_web_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_specification() {
        let settings = TenantSettings::default();
        assert!(settings.violations().is_empty());
        assert_eq!(settings.points_scale, 2);
        assert_eq!(settings.stacking_mode, StackingMode::Max);
        assert!(settings.offline_lines_earn);
        assert_eq!((settings.lock_days, settings.expiry_months), (0, 0));
    }

    #[test]
    fn a_patch_changes_only_the_fields_it_names() {
        let patch = SettingsPatch {
            points_scale: Some(0),
            time_zone: Some("America/New_York".into()),
            document_sync_from_date: Some("2026-01-31".into()),
            ..SettingsPatch::default()
        };
        let next = TenantSettings::default().apply(&patch).expect("valid");
        assert_eq!(next.points_scale, 0);
        assert_eq!(next.time_zone, chrono_tz::America::New_York);
        assert_eq!(
            next.document_sync.from_date,
            NaiveDate::from_ymd_opt(2026, 1, 31)
        );
        assert_eq!(next.reservation_ttl_seconds, 900);
    }

    #[test]
    fn every_bad_field_is_reported_together() {
        let patch = SettingsPatch {
            company_logo_url: Some("ftp://logo".into()),
            points_scale: Some(5),
            time_zone: Some("Mars/Olympus".into()),
            reservation_ttl_seconds: Some(10),
            document_sync_from_date: Some("31/01/2026".into()),
            expiring_window_days: Some(0),
            ..SettingsPatch::default()
        };
        let Invalid(found) = TenantSettings::default()
            .apply(&patch)
            .expect_err("invalid");
        let mut fields: Vec<_> = found.iter().map(|v| v.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "company_logo_url",
                "document_sync.from_date",
                "expiring_window_days",
                "points_scale",
                "reservation_ttl_seconds",
                "time_zone"
            ]
        );
    }

    #[test]
    fn an_empty_date_clears_it_and_kinds_are_deduplicated() {
        let mut settings = TenantSettings::default();
        settings.document_sync.from_date = NaiveDate::from_ymd_opt(2026, 1, 1);
        let patch = SettingsPatch {
            document_sync_from_date: Some(String::new()),
            document_sync_kinds: Some(vec![
                SyncDocumentKind::Correction,
                SyncDocumentKind::Invoice,
                SyncDocumentKind::Correction,
            ]),
            ..SettingsPatch::default()
        };
        let next = settings.apply(&patch).expect("valid");
        assert_eq!(next.document_sync.from_date, None);
        assert_eq!(
            next.document_sync.kinds,
            [SyncDocumentKind::Invoice, SyncDocumentKind::Correction]
        );
    }
}
