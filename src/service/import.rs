//! Offline documents uploaded by an administrator (CSV or JSON lines), validated row by row.
//! Every row is accepted or rejected with its line number and reason. The rows of one document
//! stand or fall together: a document with a rejected row is not stored at all, so that it never
//! earns on part of its lines. Stored documents are marked offline and earn by the same path as
//! every other document.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::domain::access::Caller;
use crate::domain::documents::{
    CorrectionType, Document, DocumentKind, DocumentLine, DocumentSource,
};
use crate::domain::points::parse_amount;
use crate::service::earn::{EarnError, EarnService};

/// The largest upload accepted.
pub const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;
/// The columns of a CSV upload, in any order.
pub const CSV_COLUMNS: [&str; 8] = [
    "document_id",
    "number",
    "client_id",
    "sale_date",
    "line_no",
    "product_id",
    "quantity",
    "order_number",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    JsonLines,
}

/// A row refused, by its 1-based line in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows_accepted: u64,
    pub rejected: Vec<RejectedRow>,
    pub document_ids: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// → `INVALID_ARGUMENT`
    #[error(transparent)]
    Invalid(#[from] crate::domain::validation::Invalid),
    #[error(transparent)]
    Earn(EarnError),
}

/// A document read from the file, with the lines of the file its rows came from.
#[derive(Debug)]
struct Parsed {
    document: Document,
    lines: Vec<u64>,
}

pub struct ImportService {
    earn: Arc<EarnService>,
}

impl ImportService {
    pub fn new(earn: Arc<EarnService>) -> Self {
        Self { earn }
    }

    /// Validates every row of `bytes`, stores the documents whose rows are all valid (each once:
    /// a document id already stored with the same content is accepted again, with other
    /// content its rows are rejected), and earns them.
    ///
    /// # Errors
    /// A malformed request id, or the database.
    pub async fn import(
        &self,
        caller: &Caller,
        request_id: &str,
        format: ImportFormat,
        bytes: &[u8],
    ) -> Result<ImportReport, ImportError> {
        if !crate::domain::idempotency::valid_request_id(request_id) {
            return Err(crate::domain::validation::Invalid::field(
                "header.request_id",
                "must be 1 to 128 printable ASCII characters",
            )
            .into());
        }
        let (documents, mut rejected) = match format {
            ImportFormat::Csv => parse_csv(bytes),
            ImportFormat::JsonLines => parse_json_lines(bytes),
        };
        let mut report = ImportReport::default();
        for parsed in documents {
            let id = parsed.document.document_id.clone();
            if let Err(invalid) = parsed.document.check("") {
                reject_all(&mut rejected, &parsed.lines, &invalid.to_string());
                continue;
            }
            let key = format!("import:{request_id}:{id}");
            match self
                .earn
                .receive(
                    caller,
                    &key[..key.len().min(128)],
                    parsed.document,
                    DocumentSource::Import,
                )
                .await
            {
                Ok(_) => {
                    report.rows_accepted += parsed.lines.len() as u64;
                    report.document_ids.push(id);
                }
                Err(EarnError::DocumentChanged(_)) => reject_all(
                    &mut rejected,
                    &parsed.lines,
                    &format!("document {id} was stored before with other content"),
                ),
                Err(EarnError::Invalid(invalid)) => {
                    reject_all(&mut rejected, &parsed.lines, &invalid.to_string());
                }
                Err(other) => return Err(ImportError::Earn(other)),
            }
        }
        rejected.sort_by_key(|r| r.line);
        report.rejected = rejected;
        Ok(report)
    }
}

fn reject_all(rejected: &mut Vec<RejectedRow>, lines: &[u64], reason: &str) {
    rejected.extend(lines.iter().map(|line| RejectedRow {
        line: *line,
        reason: reason.to_owned(),
    }));
}

fn day(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("sale_date {text:?} is not a YYYY-MM-DD day"))
}

fn quantity(text: &str) -> Result<Decimal, String> {
    let value = parse_amount(text.trim()).map_err(|e| format!("quantity {text:?}: {e}"))?;
    if value <= Decimal::ZERO {
        return Err(format!("quantity {text:?} must be greater than 0"));
    }
    Ok(value)
}

/// One CSV row, checked on its own.
struct CsvRow {
    line: u64,
    document_id: String,
    number: String,
    client_id: String,
    sale_date: NaiveDate,
    line_no: u32,
    product_id: String,
    quantity: Decimal,
    order_number: Option<String>,
}

fn parse_csv(bytes: &[u8]) -> (Vec<Parsed>, Vec<RejectedRow>) {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes);
    let mut rejected = Vec::new();
    let columns: BTreeMap<String, usize> = match reader.headers() {
        Ok(headers) => headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.to_ascii_lowercase(), i))
            .collect(),
        Err(e) => {
            rejected.push(RejectedRow {
                line: 1,
                reason: format!("the header row cannot be read: {e}"),
            });
            return (Vec::new(), rejected);
        }
    };
    let missing: Vec<&str> = CSV_COLUMNS[..7]
        .iter()
        .copied()
        .filter(|c| !columns.contains_key(*c))
        .collect();
    if !missing.is_empty() {
        rejected.push(RejectedRow {
            line: 1,
            reason: format!("the header row lacks the columns {}", missing.join(", ")),
        });
        return (Vec::new(), rejected);
    }
    let mut rows: Vec<CsvRow> = Vec::new();
    // Documents with a row refused on its own: their other rows are refused with them.
    let mut failed = BTreeSet::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                rejected.push(RejectedRow {
                    line,
                    reason: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, csv::Position::line);
        let cell = |name: &str| {
            columns
                .get(name)
                .and_then(|i| record.get(*i))
                .unwrap_or_default()
                .to_owned()
        };
        match csv_row(line, &cell) {
            Ok(row) => rows.push(row),
            Err(reason) => {
                failed.insert(cell("document_id"));
                rejected.push(RejectedRow { line, reason });
            }
        }
    }
    (group_rows(rows, &failed, &mut rejected), rejected)
}

fn csv_row(line: u64, cell: &dyn Fn(&str) -> String) -> Result<CsvRow, String> {
    let mut problems = Vec::new();
    let required = |name: &str, problems: &mut Vec<String>| {
        let value = cell(name);
        if value.is_empty() || value.len() > 128 {
            problems.push(format!("{name} must be 1 to 128 characters"));
        }
        value
    };
    let document_id = required("document_id", &mut problems);
    let number = required("number", &mut problems);
    let client_id = required("client_id", &mut problems);
    let product_id = required("product_id", &mut problems);
    let sale_date = day(&cell("sale_date")).map_err(|e| problems.push(e)).ok();
    let line_no = cell("line_no")
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            problems.push(format!(
                "line_no {:?} must be a whole number from 1",
                cell("line_no")
            ));
        })
        .ok();
    let quantity = quantity(&cell("quantity"))
        .map_err(|e| problems.push(e))
        .ok();
    match (sale_date, line_no, quantity) {
        (Some(sale_date), Some(line_no), Some(quantity)) if problems.is_empty() => Ok(CsvRow {
            line,
            document_id,
            number,
            client_id,
            sale_date,
            line_no,
            product_id,
            quantity,
            order_number: Some(cell("order_number")).filter(|n| !n.is_empty()),
        }),
        _ => Err(problems.join("; ")),
    }
}

/// Rows of one document become one document; rows that disagree with the document's first row
/// (its number, client or day) are rejected, and so are the other rows of a document with any
/// rejected row.
fn group_rows(
    rows: Vec<CsvRow>,
    failed: &BTreeSet<String>,
    rejected: &mut Vec<RejectedRow>,
) -> Vec<Parsed> {
    let mut order: Vec<String> = Vec::new();
    let mut grouped: BTreeMap<String, Vec<CsvRow>> = BTreeMap::new();
    for row in rows {
        if !grouped.contains_key(&row.document_id) {
            order.push(row.document_id.clone());
        }
        grouped
            .entry(row.document_id.clone())
            .or_default()
            .push(row);
    }
    let mut documents = Vec::new();
    for id in order {
        let Some(rows) = grouped.remove(&id) else {
            continue;
        };
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        if failed.contains(&id) {
            reject_all(
                rejected,
                &lines,
                &format!("document {id} has a rejected row; none of its rows is stored"),
            );
            continue;
        }
        let first = &rows[0];
        let disagreeing: Vec<u64> = rows
            .iter()
            .filter(|r| {
                r.number != first.number
                    || r.client_id != first.client_id
                    || r.sale_date != first.sale_date
            })
            .map(|r| r.line)
            .collect();
        if !disagreeing.is_empty() {
            reject_all(
                rejected,
                &lines,
                &format!(
                    "the rows of document {id} disagree on its number, client or sale_date (lines {disagreeing:?})"
                ),
            );
            continue;
        }
        documents.push(Parsed {
            document: Document {
                document_id: id,
                number: first.number.clone(),
                kind: DocumentKind::Invoice,
                client_id: first.client_id.clone(),
                sale_date: first.sale_date,
                customer_purchase_numbers: Vec::new(),
                lines: rows
                    .iter()
                    .map(|r| DocumentLine {
                        line_no: r.line_no,
                        product_id: r.product_id.clone(),
                        quantity: r.quantity,
                        order_number: r.order_number.clone(),
                        corrected_line_no: None,
                    })
                    .collect(),
                correction_type: None,
                corrected_document_id: None,
                offline: true,
                issued_at: None,
            },
            lines,
        });
    }
    documents
}

/// One JSON line: a document shaped like `one.loyalty.v1.Document` (`snake_case` or `camelCase` names).
#[derive(Debug, Deserialize)]
struct JsonDocument {
    #[serde(alias = "documentId")]
    document_id: String,
    number: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(alias = "clientId")]
    client_id: String,
    #[serde(alias = "saleDate")]
    sale_date: String,
    #[serde(default)]
    lines: Vec<JsonLine>,
    #[serde(default, alias = "correctionType")]
    correction_type: Option<String>,
    #[serde(default, alias = "correctedDocumentId")]
    corrected_document_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JsonLine {
    #[serde(alias = "lineNo")]
    line_no: u32,
    #[serde(alias = "productId")]
    product_id: String,
    quantity: serde_json::Value,
    #[serde(default, alias = "orderNumber")]
    order_number: Option<String>,
    #[serde(default, alias = "correctedLineNo")]
    corrected_line_no: Option<u32>,
}

fn parse_json_lines(bytes: &[u8]) -> (Vec<Parsed>, Vec<RejectedRow>) {
    let mut documents = Vec::new();
    let mut rejected = Vec::new();
    let text = String::from_utf8_lossy(bytes);
    for (i, raw) in text.lines().enumerate() {
        let line = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match json_document(raw) {
            Ok(document) => documents.push(Parsed {
                document,
                lines: vec![line],
            }),
            Err(reason) => rejected.push(RejectedRow { line, reason }),
        }
    }
    (documents, rejected)
}

fn json_document(raw: &str) -> Result<Document, String> {
    let d: JsonDocument = serde_json::from_str(raw).map_err(|e| format!("not a document: {e}"))?;
    let kind = match d.kind.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("" | "INVOICE" | "DOCUMENT_KIND_INVOICE") => DocumentKind::Invoice,
        Some("CORRECTION" | "DOCUMENT_KIND_CORRECTION") => DocumentKind::Correction,
        Some(other) => return Err(format!("kind {other:?} is neither INVOICE nor CORRECTION")),
    };
    let correction_type = match d
        .correction_type
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("VALUABLE" | "CORRECTION_TYPE_VALUABLE") => Some(CorrectionType::Valuable),
        Some("QUANTITATIVE" | "CORRECTION_TYPE_QUANTITATIVE") => Some(CorrectionType::Quantitative),
        _ => None,
    };
    let mut lines = Vec::with_capacity(d.lines.len());
    for (i, l) in d.lines.iter().enumerate() {
        let text = match &l.quantity {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(format!("lines[{i}].quantity {other} is not a number")),
        };
        lines.push(DocumentLine {
            line_no: l.line_no,
            product_id: l.product_id.trim().to_owned(),
            quantity: quantity(&text).map_err(|e| format!("lines[{i}].{e}"))?,
            order_number: l.order_number.clone().filter(|n| !n.trim().is_empty()),
            corrected_line_no: l.corrected_line_no.filter(|n| *n > 0),
        });
    }
    Ok(Document {
        document_id: d.document_id.trim().to_owned(),
        number: d.number.trim().to_owned(),
        kind,
        client_id: d.client_id.trim().to_owned(),
        sale_date: day(&d.sale_date)?,
        customer_purchase_numbers: Vec::new(),
        lines,
        correction_type,
        corrected_document_id: d.corrected_document_id.filter(|c| !c.trim().is_empty()),
        offline: true,
        issued_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str =
        "document_id,number,client_id,sale_date,line_no,product_id,quantity,order_number
off-1,OFF/1,org:1,2026-03-18,1,p-1,2,
off-1,OFF/1,org:1,2026-03-18,2,p-2,1.5,
off-2,OFF/2,org:2,2026-03-18,1,p-3,abc,
off-2,OFF/2,org:2,2026-03-18,2,p-4,1,
off-3,OFF/3,org:3,2026-02-30,1,p-5,1,
off-4,OFF/4,org:4,2026-03-18,1,p-6,3,ORD-9
";

    #[test]
    fn csv_rows_are_grouped_by_document_and_bad_rows_named_by_line() {
        let (documents, mut rejected) = parse_csv(CSV.as_bytes());
        let ids: Vec<&str> = documents
            .iter()
            .map(|d| d.document.document_id.as_str())
            .collect();
        assert_eq!(ids, vec!["off-1", "off-4"]);
        assert_eq!(documents[0].lines, vec![2, 3]);
        assert_eq!(documents[0].document.lines[1].quantity, Decimal::new(15, 1));
        assert!(documents[0].document.offline);
        rejected.sort_by_key(|r| r.line);
        assert_eq!(
            rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![4, 5, 6],
            "off-2's good row goes with its bad one"
        );
        assert!(
            rejected[0].reason.contains("quantity \"abc\""),
            "{rejected:?}"
        );
        assert!(
            rejected[1].reason.contains("off-2 has a rejected row"),
            "{rejected:?}"
        );
        assert!(rejected[2].reason.contains("2026-02-30"), "{rejected:?}");
        assert_eq!(
            documents[1].document.lines[0].order_number.as_deref(),
            Some("ORD-9")
        );
    }

    #[test]
    fn a_csv_without_the_needed_columns_is_refused_at_its_header() {
        let (documents, rejected) = parse_csv(b"document_id,number\nx,y\n");
        assert!(documents.is_empty());
        assert_eq!(rejected[0].line, 1);
        assert!(rejected[0].reason.contains("client_id"));
    }

    #[test]
    fn json_lines_accept_both_spellings_and_name_bad_lines() {
        let text = concat!(
            r#"{"document_id":"j-1","number":"J/1","client_id":"org:1","sale_date":"2026-03-18","lines":[{"line_no":1,"product_id":"p-1","quantity":"2"}]}"#,
            "\n\n",
            r#"{"documentId":"j-2","number":"J/2","clientId":"org:2","saleDate":"2026-03-18","lines":[{"lineNo":1,"productId":"p-2","quantity":1.25}]}"#,
            "\n",
            r#"{"documentId":"j-3"}"#,
            "\n",
            r#"{"document_id":"j-4","number":"J/4","client_id":"org:2","sale_date":"2026-03-18","kind":"REFUND","lines":[]}"#,
            "\n"
        );
        let (documents, rejected) = parse_json_lines(text.as_bytes());
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[1].lines, vec![3]);
        assert_eq!(
            documents[1].document.lines[0].quantity,
            Decimal::new(125, 2)
        );
        assert_eq!(
            rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert!(rejected[1].reason.contains("REFUND"));
    }
}
