//! The calculation engine: a 100-line invoice against 100, 1,000 and 10,000 active rules, with
//! the ratios to the 100-rule run printed at the end. Two catalogues:
//! - `fixed_matches`: the invoice's lines always meet the same 50 rules; the other rules target
//!   the rest of the catalogue. Rule lookup is indexed, so the cost per line should stay flat.
//! - `growing_matches`: rules drawn over the whole catalogue, so more of them target the
//!   invoice's products as the total grows; every matching rule is evaluated and explained, so
//!   the cost follows the number of matches (reported per evaluation).
//!
//! `cargo bench --bench engine`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use one_loyalty::domain::engine::{CalculationPolicy, LineInput, PricingBook, calculate};
use one_loyalty::domain::rules::{
    Channel, EffectiveDated, MultiplierRule, ProductFacts, RuleIndex, RuleStatus, RuleTarget,
    TargetKind,
};
use one_loyalty::domain::settings::StackingMode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

const PRODUCTS: usize = 20_000;
const CATEGORIES: usize = 400;
const LABELS: usize = 200;
const MANUFACTURERS: usize = 100;
const LINES: usize = 100;

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("day")
}

/// A product with a leaf category under a two-level tree, two labels and a manufacturer.
fn product(rng: &mut StdRng) -> ProductFacts {
    let leaf = rng.random_range(0..CATEGORIES);
    ProductFacts {
        product_id: format!("P{}", rng.random_range(0..PRODUCTS)),
        categories: vec![
            format!("C{leaf}"),
            format!("C{}", CATEGORIES + leaf / 20),
            format!("C{}", CATEGORIES + 100),
        ],
        label_ids: (0..2)
            .map(|_| format!("L{}", rng.random_range(0..LABELS)))
            .collect(),
        manufacturer_id: Some(format!("M{}", rng.random_range(0..MANUFACTURERS))),
    }
}

/// Rules whose targets are drawn from the catalogue, shifted by `offset` ids (an offset past the
/// catalogue makes them target products, categories, labels and manufacturers the invoice does
/// not have).
fn rules(count: usize, offset: usize, rng: &mut StdRng) -> Vec<MultiplierRule> {
    (0..count)
        .map(|i| {
            let (kind, id) = match i % 10 {
                0..=5 => (
                    TargetKind::Product,
                    format!("P{}", offset + rng.random_range(0..PRODUCTS)),
                ),
                6 | 7 => (
                    TargetKind::Category,
                    format!("C{}", offset + rng.random_range(0..CATEGORIES)),
                ),
                8 => (
                    TargetKind::Label,
                    format!("L{}", offset + rng.random_range(0..LABELS)),
                ),
                _ => (
                    TargetKind::Manufacturer,
                    format!("M{}", offset + rng.random_range(0..MANUFACTURERS)),
                ),
            };
            MultiplierRule {
                rule_id: format!("R{i:05}"),
                version: 1,
                status: RuleStatus::Published,
                name: format!("rule {i}"),
                description: String::new(),
                targets: vec![RuleTarget { kind, id }],
                factor: Decimal::new(rng.random_range(10_001..30_000), 4),
                valid_from: day(2026, 1, 1),
                valid_until: Some(day(2026, 12, 31)),
                segment_ids: if i % 7 == 0 {
                    vec!["gold".into()]
                } else {
                    vec![]
                },
                channel: if i % 5 == 0 {
                    Some(Channel::Online)
                } else {
                    None
                },
            }
        })
        .collect()
}

/// The rules the invoice meets in the `fixed_matches` catalogue: one per line's product.
fn matching_rules(lines: &[LineInput]) -> Vec<MultiplierRule> {
    lines
        .iter()
        .take(50)
        .enumerate()
        .map(|(i, line)| MultiplierRule {
            rule_id: format!("M{i:05}"),
            version: 1,
            status: RuleStatus::Published,
            name: format!("matching rule {i}"),
            description: String::new(),
            targets: vec![RuleTarget {
                kind: TargetKind::Product,
                id: line.product.product_id.clone(),
            }],
            factor: Decimal::new(15, 1),
            valid_from: day(2026, 1, 1),
            valid_until: None,
            segment_ids: vec![],
            channel: None,
        })
        .collect()
}

fn setup(rule_count: usize, fixed_matches: bool) -> (Vec<LineInput>, PricingBook) {
    let mut rng = StdRng::seed_from_u64(7);
    let lines: Vec<LineInput> = (0..LINES)
        .map(|i| LineInput {
            line_no: u32::try_from(i + 1).expect("line"),
            product: product(&mut rng),
            quantity: Decimal::new(rng.random_range(1..100_000), 2),
            channel: if i % 4 == 0 {
                Channel::Offline
            } else {
                Channel::Online
            },
            order_number: Some(format!("O{i}")),
            pricing_date: day(2026, 6, 15),
        })
        .collect();
    let base_points: HashMap<String, EffectiveDated> = lines
        .iter()
        .map(|l| {
            (
                l.product.product_id.clone(),
                EffectiveDated::new(vec![(day(2026, 1, 1), Decimal::new(1_250, 2))]),
            )
        })
        .collect();
    let book = PricingBook {
        rules: RuleIndex::new(if fixed_matches {
            let mut all = matching_rules(&lines);
            all.extend(rules(rule_count - all.len(), 1_000_000, &mut rng));
            all
        } else {
            rules(rule_count, 0, &mut rng)
        }),
        base_points,
        segment_rates: [(
            "gold".to_owned(),
            EffectiveDated::new(vec![(day(2026, 1, 1), Decimal::new(11, 1))]),
        )]
        .into_iter()
        .collect(),
        client_segments: ["gold".to_owned()].into_iter().collect(),
    };
    (lines, book)
}

fn bench(c: &mut Criterion) {
    let policy = CalculationPolicy {
        points_scale: 2,
        stacking_mode: StackingMode::Multiply,
        offline_lines_earn: true,
    };
    let mut report = Vec::new();
    for (scenario, fixed) in [("fixed_matches", true), ("growing_matches", false)] {
        report.push(run(c, scenario, fixed, policy));
    }
    for line in report.concat() {
        println!("{line}");
    }
}

fn run(c: &mut Criterion, scenario: &str, fixed: bool, policy: CalculationPolicy) -> Vec<String> {
    let mut group = c.benchmark_group(format!("engine/100_line_invoice/{scenario}"));
    let mut per_line = Vec::new();
    for rule_count in [100, 1_000, 10_000] {
        let (lines, book) = setup(rule_count, fixed);
        let considered: usize = calculate(&lines, &book, policy)
            .lines
            .iter()
            .map(|l| l.rules.len())
            .sum();
        group.bench_with_input(
            BenchmarkId::from_parameter(rule_count),
            &rule_count,
            |b, _| {
                b.iter(|| calculate(black_box(&lines), black_box(&book), policy));
            },
        );
        let runs = 2_000_u32;
        let started = Instant::now();
        for _ in 0..runs {
            black_box(calculate(black_box(&lines), &book, policy));
        }
        per_line.push((
            rule_count,
            started.elapsed() / runs / u32::try_from(LINES).expect("lines"),
            considered,
        ));
    }
    group.finish();
    let baseline = per_line[0].1.as_secs_f64();
    per_line
        .into_iter()
        .map(|(rules, cost, considered)| {
            format!(
                "{scenario}: {rules} rules: {cost:?} per line ({:.2}x the 100-rule run), {considered} rule evaluations in the invoice",
                cost.as_secs_f64() / baseline
            )
        })
        .collect()
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
