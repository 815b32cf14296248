//! Protos to domain types and back. Bad input becomes a field violation naming the field.

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};

use crate::domain::settings::{SettingsPatch, StackingMode, SyncDocumentKind, TenantSettings};
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;

/// A timestamp for the wire.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A required instant from the wire, to the microsecond (what both databases keep).
///
/// # Errors
/// Unset or out of range.
pub fn instant(
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Result<DateTime<Utc>, FieldViolation> {
    let ts = value.ok_or_else(|| FieldViolation::new(field, "is required"))?;
    let nanos =
        u32::try_from(ts.nanos).map_err(|_| FieldViolation::new(field, "has negative nanos"))?;
    DateTime::from_timestamp(ts.seconds, nanos)
        .map(|at| at.trunc_subsecs(6))
        .ok_or_else(|| FieldViolation::new(field, "is out of range"))
}

/// A calendar day "YYYY-MM-DD".
///
/// # Errors
/// Not a day in that form.
pub fn day(field: &str, text: &str) -> Result<NaiveDate, FieldViolation> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
        FieldViolation::new(
            field,
            format!("{text:?} is not a day in the form YYYY-MM-DD"),
        )
    })
}

/// A decimal amount from the wire (points, factors, rates, quantities).
///
/// # Errors
/// Not a plain decimal with at most 4 fractional digits.
pub fn amount(field: &str, text: &str) -> Result<rust_decimal::Decimal, FieldViolation> {
    crate::domain::points::parse_amount(text.trim())
        .map_err(|e| FieldViolation::new(field, e.to_string()))
}

/// Items per page: 50 when unset, at most 1000.
pub fn page_size(requested: u32) -> u64 {
    match requested {
        0 => 50,
        n => u64::from(n.min(1000)),
    }
}

/// An opaque page token for a position.
pub fn page_token(position: &str) -> String {
    hex::encode(position)
}

/// The position a page token names; empty for the first page.
///
/// # Errors
/// A token this service did not issue.
pub fn page_position(token: &str) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    hex::decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| FieldViolation::new("page_token", "is not a token this service issued"))
}

/// The API's stacking mode.
pub fn stacking_mode_to_proto(mode: StackingMode) -> pb::StackingMode {
    match mode {
        StackingMode::Max => pb::StackingMode::Max,
        StackingMode::Multiply => pb::StackingMode::Multiply,
        StackingMode::Add => pb::StackingMode::Add,
    }
}

fn stacking_mode_from_proto(
    value: i32,
    field: &str,
    found: &mut Vec<FieldViolation>,
) -> Option<StackingMode> {
    match pb::StackingMode::try_from(value) {
        Ok(pb::StackingMode::Max) => Some(StackingMode::Max),
        Ok(pb::StackingMode::Multiply) => Some(StackingMode::Multiply),
        Ok(pb::StackingMode::Add) => Some(StackingMode::Add),
        Ok(pb::StackingMode::Unspecified) | Err(_) => {
            found.push(FieldViolation::new(
                field,
                "must be STACKING_MODE_MAX, STACKING_MODE_MULTIPLY or STACKING_MODE_ADD",
            ));
            None
        }
    }
}

fn sync_kind_from_proto(
    value: i32,
    field: &str,
    found: &mut Vec<FieldViolation>,
) -> Option<SyncDocumentKind> {
    match pb::SyncDocumentKind::try_from(value) {
        Ok(pb::SyncDocumentKind::Invoice) => Some(SyncDocumentKind::Invoice),
        Ok(pb::SyncDocumentKind::Correction) => Some(SyncDocumentKind::Correction),
        Ok(pb::SyncDocumentKind::Unspecified) | Err(_) => {
            found.push(FieldViolation::new(
                field,
                "must be SYNC_DOCUMENT_KIND_INVOICE or SYNC_DOCUMENT_KIND_CORRECTION",
            ));
            None
        }
    }
}

/// Settings for the wire.
pub fn settings_to_proto(settings: &TenantSettings) -> pb::TenantSettings {
    let TenantSettings {
        company_logo_url,
        document_sync,
        declaration_type_id,
        points_scale,
        stacking_mode,
        offline_lines_earn,
        lock_days,
        expiry_months,
        reservation_ttl_seconds,
        time_zone,
        day_close_grace_minutes,
        expiring_window_days,
        revision,
        updated_at,
    } = settings;
    pb::TenantSettings {
        company_logo_url: company_logo_url.clone(),
        document_sync: Some(pb::DocumentSyncSettings {
            kinds: document_sync
                .kinds
                .iter()
                .map(|k| match k {
                    SyncDocumentKind::Invoice => pb::SyncDocumentKind::Invoice as i32,
                    SyncDocumentKind::Correction => pb::SyncDocumentKind::Correction as i32,
                })
                .collect(),
            from_date: document_sync
                .from_date
                .map(|d| d.to_string())
                .unwrap_or_default(),
            interval_seconds: document_sync.interval_seconds,
        }),
        loyalty_declaration_type_id: declaration_type_id.clone(),
        points_scale: *points_scale,
        stacking_mode: stacking_mode_to_proto(*stacking_mode) as i32,
        offline_lines_earn: *offline_lines_earn,
        lock_days: *lock_days,
        expiry_months: *expiry_months,
        reservation_ttl_seconds: *reservation_ttl_seconds,
        time_zone: time_zone.name().to_owned(),
        day_close_grace_minutes: *day_close_grace_minutes,
        expiring_window_days: *expiring_window_days,
        revision: *revision,
        updated_at: updated_at.map(timestamp),
    }
}

/// The writable paths of `TenantSettings`, for an empty update mask.
const WRITABLE_PATHS: &[&str] = &[
    "company_logo_url",
    "document_sync",
    "loyalty_declaration_type_id",
    "points_scale",
    "stacking_mode",
    "offline_lines_earn",
    "lock_days",
    "expiry_months",
    "reservation_ttl_seconds",
    "time_zone",
    "day_close_grace_minutes",
    "expiring_window_days",
];

/// The partial update that `settings` and `update_mask` describe.
///
/// # Errors
/// Missing settings, unknown or read-only mask paths, unspecified enums.
pub fn settings_patch(
    settings: Option<&pb::TenantSettings>,
    mask: Option<&prost_types::FieldMask>,
) -> Result<SettingsPatch, Invalid> {
    let Some(s) = settings else {
        return Err(Invalid::field("settings", "is required"));
    };
    let paths: Vec<&str> = match mask.map(|m| m.paths.as_slice()) {
        Some(paths) if !paths.is_empty() => paths.iter().map(String::as_str).collect(),
        _ => WRITABLE_PATHS.to_vec(),
    };
    let mut found = Vec::new();
    let mut patch = SettingsPatch::default();
    let sync = s.document_sync.clone().unwrap_or_default();
    for path in paths {
        match path {
            "company_logo_url" => patch.company_logo_url = Some(s.company_logo_url.clone()),
            "document_sync" => {
                patch.document_sync_kinds = Some(sync_kinds(&sync.kinds, &mut found));
                patch.document_sync_from_date = Some(sync.from_date.clone());
                patch.document_sync_interval_seconds = Some(sync.interval_seconds);
            }
            "document_sync.kinds" => {
                patch.document_sync_kinds = Some(sync_kinds(&sync.kinds, &mut found));
            }
            "document_sync.from_date" => {
                patch.document_sync_from_date = Some(sync.from_date.clone());
            }
            "document_sync.interval_seconds" => {
                patch.document_sync_interval_seconds = Some(sync.interval_seconds);
            }
            "loyalty_declaration_type_id" => {
                patch.declaration_type_id = Some(s.loyalty_declaration_type_id.clone());
            }
            "points_scale" => patch.points_scale = Some(s.points_scale),
            "stacking_mode" => {
                patch.stacking_mode =
                    stacking_mode_from_proto(s.stacking_mode, "settings.stacking_mode", &mut found);
            }
            "offline_lines_earn" => patch.offline_lines_earn = Some(s.offline_lines_earn),
            "lock_days" => patch.lock_days = Some(s.lock_days),
            "expiry_months" => patch.expiry_months = Some(s.expiry_months),
            "reservation_ttl_seconds" => {
                patch.reservation_ttl_seconds = Some(s.reservation_ttl_seconds);
            }
            "time_zone" => patch.time_zone = Some(s.time_zone.clone()),
            "day_close_grace_minutes" => {
                patch.day_close_grace_minutes = Some(s.day_close_grace_minutes);
            }
            "expiring_window_days" => patch.expiring_window_days = Some(s.expiring_window_days),
            "revision" | "updated_at" => found.push(FieldViolation::new(
                "update_mask",
                format!("{path:?} is read-only"),
            )),
            other => found.push(FieldViolation::new(
                "update_mask",
                format!("{other:?} is not a field of TenantSettings"),
            )),
        }
    }
    Invalid::check(found)?;
    Ok(patch)
}

fn sync_kinds(kinds: &[i32], found: &mut Vec<FieldViolation>) -> Vec<SyncDocumentKind> {
    kinds
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            sync_kind_from_proto(*k, &format!("settings.document_sync.kinds[{i}]"), found)
        })
        .collect()
}

/// Field paths of domain violations, as the request names them.
pub fn prefix_fields(mut invalid: Invalid, prefix: &str) -> Invalid {
    for v in &mut invalid.0 {
        if v.field != "request_id" && v.field != "update_mask" && !v.field.starts_with(prefix) {
            v.field = format!("{prefix}{}", v.field);
        }
    }
    invalid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_selects_fields_and_unknown_paths_are_violations() {
        let settings = pb::TenantSettings {
            points_scale: 3,
            time_zone: "UTC".into(),
            ..Default::default()
        };
        let mask = prost_types::FieldMask {
            paths: vec!["points_scale".into()],
        };
        let patch = settings_patch(Some(&settings), Some(&mask)).expect("patch");
        assert_eq!(patch.points_scale, Some(3));
        assert_eq!(patch.time_zone, None);

        let mask = prost_types::FieldMask {
            paths: vec!["nope".into(), "revision".into(), "stacking_mode".into()],
        };
        let Invalid(found) = settings_patch(Some(&settings), Some(&mask)).expect_err("invalid");
        assert_eq!(found.len(), 3);
        assert!(settings_patch(None, None).is_err());
    }

    #[test]
    fn settings_survive_the_wire_both_ways() {
        let settings = TenantSettings::default();
        let wire = settings_to_proto(&settings);
        let patch = settings_patch(Some(&wire), None).expect("patch");
        assert_eq!(settings.apply(&patch).expect("valid"), settings);
    }
}
