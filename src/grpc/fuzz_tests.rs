//! Fuzzing of the proto-to-domain converters: arbitrary bytes decoded as requests, and messages
//! built from hostile values, go through every converter. None may panic; every refusal names
//! the fields it refuses (it becomes `INVALID_ARGUMENT` with field violations).
//!
//! `PROPTEST_CASES=200000 cargo test --lib fuzz` runs a longer campaign; a failing case is kept
//! in `proptest-regressions/` and replayed first on every later run.

use proptest::prelude::*;
use prost::Message;

use crate::domain::documents::DocumentKind;
use crate::domain::validation::Invalid;
use crate::proto::loyalty::v1 as pb;

/// Values that have broken parsers elsewhere, and random text.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_owned()),
        Just("-0".to_owned()),
        Just("1e309".to_owned()),
        Just("NaN".to_owned()),
        Just("79228162514264337593543950336".to_owned()),
        Just("0.00001".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("2026-02-30".to_owned()),
        Just("9999-12-31".to_owned()),
        Just("+275760-09-13".to_owned()),
        Just("ＯＲＧ：１".to_owned()),
        Just("\u{0}\u{202e}".to_owned()),
        Just("x".repeat(5_000)),
        any::<String>(),
        "[0-9.\\-]{0,40}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}",
    ]
}

fn refusal_names_fields(result: Result<impl Sized, Invalid>) {
    if let Err(invalid) = result {
        assert!(!invalid.0.is_empty(), "a refusal without a field");
        assert!(invalid.0.iter().all(|v| !v.field.is_empty()));
    }
}

fn line() -> impl Strategy<Value = pb::DocumentLine> {
    (any::<u32>(), hostile(), hostile(), hostile(), any::<u32>()).prop_map(
        |(line_no, product_id, quantity, order_number, corrected_line_no)| pb::DocumentLine {
            line_no,
            product_id,
            quantity,
            order_number,
            corrected_line_no,
        },
    )
}

fn document() -> impl Strategy<Value = pb::Document> {
    (
        hostile(),
        hostile(),
        any::<i32>(),
        hostile(),
        hostile(),
        prop::collection::vec(line(), 0..4),
        any::<i32>(),
        hostile(),
        any::<bool>(),
        prop::option::of((any::<i64>(), any::<i32>())),
    )
        .prop_map(
            |(id, number, kind, client, day, lines, correction, corrected, offline, issued)| {
                pb::Document {
                    document_id: id,
                    number,
                    kind,
                    client_id: client,
                    sale_date: day,
                    customer_purchase_numbers: vec![],
                    lines,
                    correction_type: correction,
                    corrected_document_id: corrected,
                    offline,
                    issued_at: issued
                        .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                }
            },
        )
}

fn coupon_spec() -> impl Strategy<Value = pb::CouponSpec> {
    (
        any::<i32>(),
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        (hostile(), hostile(), hostile()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        (hostile(), hostile()),
    )
        .prop_map(
            |(
                kind,
                name,
                pool,
                email,
                points,
                (appear, expire, deadline),
                stock,
                limit,
                (amount, currency),
            )| {
                pb::CouponSpec {
                    r#type: kind,
                    name,
                    pool_id: pool,
                    email,
                    point_value: points,
                    image_url: "https://x.example/i.png".into(),
                    appearance_date: appear,
                    expiration_date: expire,
                    redemption_deadline: deadline,
                    stock,
                    per_client_limit: limit,
                    discount: Some(pb::Discount {
                        value: Some(pb::discount::Value::FixedAmount(pb::FixedAmount {
                            amount,
                            currency,
                        })),
                    }),
                    ..Default::default()
                }
            },
        )
}

/// Every file of the corpus kept in the repository (`tests/fuzz-corpus/`): inputs that once
/// mattered, replayed through every decoder and converter on every run.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("the fuzz corpus")
        .filter_map(Result::ok)
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("a corpus file");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// One input through every decoder and converter.
fn replay(bytes: &[u8]) {
    if let Ok(m) = pb::ProcessInvoiceRequest::decode(bytes) {
        refusal_names_fields(super::earn::document_from_proto(
            m.invoice.as_ref(),
            DocumentKind::Invoice,
        ));
    }
    if let Ok(m) = pb::CreateCouponRequest::decode(bytes) {
        refusal_names_fields(super::coupons::spec_from_proto(m.spec.as_ref()));
    }
    if let Ok(m) = pb::CreateMultiplierRuleRequest::decode(bytes) {
        refusal_names_fields(super::rules::spec_from_proto(m.spec.as_ref()));
    }
    if let Ok(m) = pb::UpdateSettingsRequest::decode(bytes) {
        refusal_names_fields(super::convert::settings_patch(
            m.settings.as_ref(),
            m.update_mask.as_ref(),
        ));
    }
    if let Ok(m) = pb::RecordConsentEventsRequest::decode(bytes) {
        refusal_names_fields(super::agreements::consents_from_proto(&m.events));
    }
    let text = String::from_utf8_lossy(bytes);
    for result in [
        super::convert::amount("f", &text).map(|_| ()),
        super::convert::day("f", &text).map(|_| ()),
        super::convert::page_position(&text).map(|_| ()),
    ] {
        if let Err(violation) = result {
            assert!(!violation.field.is_empty());
        }
    }
}

#[test]
fn the_kept_corpus_replays_without_a_panic() {
    let corpus = corpus();
    assert!(corpus.len() >= 10, "the corpus is in the repository");
    for (name, bytes) in &corpus {
        let outcome = std::panic::catch_unwind(|| replay(bytes));
        assert!(outcome.is_ok(), "corpus file {name} panics");
    }
}

proptest! {
    // PROPTEST_CASES sets a longer campaign; 512 cases per property by default.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn scalar_converters_never_panic_and_name_the_field(text in hostile()) {
        for result in [
            super::convert::amount("f", &text).map(|_| ()),
            super::convert::day("f", &text).map(|_| ()),
            super::convert::page_position(&text).map(|_| ()),
        ] {
            if let Err(violation) = result {
                prop_assert!(!violation.field.is_empty());
            }
        }
    }

    #[test]
    fn documents_from_hostile_values_never_panic(d in document()) {
        refusal_names_fields(super::earn::document_from_proto(Some(&d), DocumentKind::Invoice));
        refusal_names_fields(super::earn::document_from_proto(Some(&d), DocumentKind::Correction));
    }

    #[test]
    fn coupon_specs_from_hostile_values_never_panic(spec in coupon_spec()) {
        refusal_names_fields(super::coupons::spec_from_proto(Some(&spec)));
    }

    #[test]
    fn requests_decoded_from_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        replay(&bytes);
    }
}
