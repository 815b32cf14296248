//! Invoices and corrections (DOMAIN.md §3): what they are, how they are checked, why one earns
//! nothing, and what a quantitative correction loses.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use crate::domain::engine::{DocumentCalculation, LineCalculation};
use crate::domain::points::round_points;
use crate::domain::rules::Channel;
use crate::domain::validation::{FieldViolation, Invalid};

/// Lines per document.
pub const MAX_LINES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Invoice,
    Correction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrectionType {
    /// A price correction: no points change.
    Valuable,
    /// Goods returned: the returned quantity's points are lost.
    Quantitative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentStatus {
    /// Stored, not decided yet (a crash between storing and deciding leaves this; the job
    /// finishes it).
    Received,
    PendingDayClose,
    WaitingForData,
    Processed,
    NotEarning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonEarningReason {
    NoAgreement,
    IndividualClient,
    NoAccount,
    OfflineExcluded,
    NoBasePoints,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentSource {
    Sync,
    Api,
    Import,
}

names!(DocumentKind { Invoice => "INVOICE", Correction => "CORRECTION" });
names!(CorrectionType { Valuable => "VALUABLE", Quantitative => "QUANTITATIVE" });
names!(DocumentStatus {
    Received => "RECEIVED",
    PendingDayClose => "PENDING_DAY_CLOSE",
    WaitingForData => "WAITING_FOR_DATA",
    Processed => "PROCESSED",
    NotEarning => "NOT_EARNING",
});
names!(NonEarningReason {
    NoAgreement => "NO_AGREEMENT",
    IndividualClient => "INDIVIDUAL_CLIENT",
    NoAccount => "NO_ACCOUNT",
    OfflineExcluded => "OFFLINE_EXCLUDED",
    NoBasePoints => "NO_BASE_POINTS",
});
names!(DocumentSource { Sync => "SYNC", Api => "API", Import => "IMPORT" });

impl DocumentStatus {
    /// Decided for good.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Processed | Self::NotEarning)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentLine {
    pub line_no: u32,
    pub product_id: String,
    pub quantity: Decimal,
    pub order_number: Option<String>,
    pub corrected_line_no: Option<u32>,
}

/// A document as ONe sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub document_id: String,
    pub number: String,
    pub kind: DocumentKind,
    pub client_id: String,
    pub sale_date: NaiveDate,
    pub customer_purchase_numbers: Vec<String>,
    pub lines: Vec<DocumentLine>,
    pub correction_type: Option<CorrectionType>,
    pub corrected_document_id: Option<String>,
    /// Uploaded as offline sales: every line is offline.
    pub offline: bool,
    pub issued_at: Option<DateTime<Utc>>,
}

/// A stored document and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRecord {
    pub document: Document,
    pub source: DocumentSource,
    pub status: DocumentStatus,
    pub non_earning_reason: Option<NonEarningReason>,
    /// Signed points of its event (0 when none).
    pub points: Decimal,
    pub event_id: Option<i64>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    /// When the job may take it next.
    pub earn_after: Option<DateTime<Utc>>,
}

impl Document {
    /// Every problem of the document, with field paths under `prefix`.
    pub fn violations(&self, prefix: &str) -> Vec<FieldViolation> {
        let mut found = Vec::new();
        let field = |name: &str| format!("{prefix}{name}");
        for (name, value) in [
            ("document_id", &self.document_id),
            ("number", &self.number),
            ("client_id", &self.client_id),
        ] {
            if value.trim().is_empty() || value.len() > 128 {
                found.push(FieldViolation::new(
                    field(name),
                    "must be 1 to 128 characters",
                ));
            }
        }
        if self.lines.is_empty() || self.lines.len() > MAX_LINES {
            found.push(FieldViolation::new(
                field("lines"),
                format!("must hold 1 to {MAX_LINES} lines"),
            ));
        }
        let mut numbers = std::collections::BTreeSet::new();
        for (i, line) in self.lines.iter().enumerate() {
            let line_field = |name: &str| field(&format!("lines[{i}].{name}"));
            if line.line_no == 0 || !numbers.insert(line.line_no) {
                found.push(FieldViolation::new(
                    line_field("line_no"),
                    "must be 1 or more and unique in the document",
                ));
            }
            if line.product_id.trim().is_empty() {
                found.push(FieldViolation::new(line_field("product_id"), "is required"));
            }
            if line.quantity <= Decimal::ZERO {
                found.push(FieldViolation::new(
                    line_field("quantity"),
                    "must be greater than 0",
                ));
            }
            if self.kind == DocumentKind::Correction
                && self.correction_type == Some(CorrectionType::Quantitative)
                && line.corrected_line_no.is_none()
            {
                found.push(FieldViolation::new(
                    line_field("corrected_line_no"),
                    "is required on a quantitative correction",
                ));
            }
        }
        if self.kind == DocumentKind::Correction {
            if self.correction_type.is_none() {
                found.push(FieldViolation::new(
                    field("correction_type"),
                    "must be VALUABLE or QUANTITATIVE",
                ));
            }
            if self
                .corrected_document_id
                .as_ref()
                .is_none_or(|id| id.trim().is_empty())
            {
                found.push(FieldViolation::new(
                    field("corrected_document_id"),
                    "is required on a correction",
                ));
            }
        }
        found
    }

    /// # Errors
    /// The violations, when there are any.
    pub fn check(&self, prefix: &str) -> Result<(), Invalid> {
        Invalid::check(self.violations(prefix))
    }
}

/// Why a calculated invoice earns nothing, if it does not.
pub fn calculation_shortfall(
    calc: &DocumentCalculation,
    offline_lines_earn: bool,
) -> Option<NonEarningReason> {
    if !calc.total.is_zero() {
        return None;
    }
    if !offline_lines_earn && calc.lines.iter().all(|l| l.channel == Channel::Offline) {
        Some(NonEarningReason::OfflineExcluded)
    } else {
        Some(NonEarningReason::NoBasePoints)
    }
}

/// The lines a quantitative correction loses: for each corrected line, the original line's points
/// per unit × the returned quantity (at most the line's quantity), rounded once. Lines that
/// earned nothing lose nothing and are left out.
pub fn correction_losses(
    original: &[LineCalculation],
    correction: &[DocumentLine],
    correction_id: &str,
    scale: u32,
) -> Vec<LineCalculation> {
    correction
        .iter()
        .filter_map(|line| {
            let source = original
                .iter()
                .find(|o| Some(o.line_no) == line.corrected_line_no)?;
            if source.points.is_zero() || source.quantity.is_zero() {
                return None;
            }
            let returned = line.quantity.min(source.quantity);
            let unrounded = source.points / source.quantity * returned;
            let lost = round_points(unrounded, scale);
            Some(LineCalculation {
                line_no: line.line_no,
                quantity: -returned,
                unrounded_points: (-unrounded).normalize(),
                points: (-lost).normalize(),
                note: Some(format!(
                    "correction {correction_id} returns {} of {} on line {}: {} points per unit",
                    returned.normalize(),
                    source.quantity.normalize(),
                    source.line_no,
                    (source.points / source.quantity).normalize()
                )),
                ..source.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::settings::StackingMode;

    fn dec(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    fn earned(line_no: u32, quantity: &str, points: &str) -> LineCalculation {
        LineCalculation {
            line_no,
            product_id: format!("P{line_no}"),
            quantity: dec(quantity),
            channel: Channel::Online,
            order_number: None,
            pricing_date: NaiveDate::from_ymd_opt(2026, 3, 5).expect("day"),
            base_points: Some(dec("10")),
            rules: vec![],
            stacking_mode: StackingMode::Max,
            multiplier: Decimal::ONE,
            segment_id: None,
            segment_rate: Decimal::ONE,
            unrounded_points: dec(points),
            points: dec(points),
            note: None,
        }
    }

    fn returned(line_no: u32, corrected: u32, quantity: &str) -> DocumentLine {
        DocumentLine {
            line_no,
            product_id: format!("P{corrected}"),
            quantity: dec(quantity),
            order_number: None,
            corrected_line_no: Some(corrected),
        }
    }

    #[test]
    fn a_return_loses_the_points_per_unit_of_its_line_times_the_quantity() {
        let original = [
            earned(1, "3", "66"),
            earned(2, "0.333", "1.83"),
            earned(3, "5", "0"),
        ];
        let losses = correction_losses(
            &original,
            &[
                returned(1, 1, "2"),
                returned(2, 2, "0.111"),
                returned(3, 3, "5"),
            ],
            "K1",
            2,
        );
        let points: Vec<Decimal> = losses.iter().map(|l| l.points).collect();
        assert_eq!(
            points,
            [dec("-44"), dec("-0.61")],
            "a line that earned nothing loses nothing"
        );
        assert_eq!(losses[0].quantity, dec("-2"));
        let capped = correction_losses(&original, &[returned(1, 1, "10")], "K2", 2);
        assert_eq!(
            capped[0].points,
            dec("-66"),
            "never more than the line earned"
        );
    }

    #[test]
    fn a_correction_names_its_type_its_invoice_and_the_lines_it_corrects() {
        let correction = Document {
            document_id: "K1".into(),
            number: "KOR/1".into(),
            kind: DocumentKind::Correction,
            client_id: "org:c".into(),
            sale_date: NaiveDate::from_ymd_opt(2026, 3, 5).expect("day"),
            customer_purchase_numbers: vec![],
            lines: vec![DocumentLine {
                corrected_line_no: None,
                ..returned(1, 1, "1")
            }],
            correction_type: Some(CorrectionType::Quantitative),
            corrected_document_id: None,
            offline: false,
            issued_at: None,
        };
        let fields: Vec<String> = correction
            .violations("correction.")
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "correction.lines[0].corrected_line_no",
                "correction.corrected_document_id"
            ]
        );
    }
}
