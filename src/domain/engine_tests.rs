use super::*;
use crate::domain::rules::{RuleStatus, TargetKind};
use proptest::prelude::*;

fn day(text: &str) -> NaiveDate {
    text.parse().expect("day")
}

fn dec(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

fn rule(
    id: &str,
    kind: TargetKind,
    target: &str,
    factor: &str,
    from: &str,
    until: Option<&str>,
) -> MultiplierRule {
    MultiplierRule {
        rule_id: id.into(),
        version: 1,
        status: RuleStatus::Published,
        name: format!("rule {id}"),
        description: String::new(),
        targets: vec![RuleTarget {
            kind,
            id: target.into(),
        }],
        factor: dec(factor),
        valid_from: day(from),
        valid_until: until.map(day),
        segment_ids: vec![],
        channel: None,
    }
}

fn product(
    id: &str,
    categories: &[&str],
    labels: &[&str],
    manufacturer: Option<&str>,
) -> ProductFacts {
    ProductFacts {
        product_id: id.into(),
        categories: categories.iter().map(|c| (*c).to_owned()).collect(),
        label_ids: labels.iter().map(|l| (*l).to_owned()).collect(),
        manufacturer_id: manufacturer.map(str::to_owned),
    }
}

fn line(no: u32, product: ProductFacts, quantity: &str, channel: Channel, date: &str) -> LineInput {
    LineInput {
        line_no: no,
        product,
        quantity: dec(quantity),
        channel,
        order_number: Some(format!("ORD-{no}")),
        pricing_date: day(date),
    }
}

fn policy(mode: StackingMode) -> CalculationPolicy {
    CalculationPolicy {
        points_scale: 2,
        stacking_mode: mode,
        offline_lines_earn: true,
    }
}

/// The worked example of docs/EARNING.md, priced by hand there.
fn worked_example() -> (Vec<LineInput>, PricingBook) {
    let cable = product("P1", &["C-cables", "C-electrical"], &["L-eco"], Some("M1"));
    let lamp = product("P2", &["C-lighting", "C-electrical"], &["L-eco"], None);
    let sample = product("P3", &["C-electrical"], &[], None);
    let switch = product("P4", &["C-electrical"], &[], None);
    let drill = product("P5", &["C-tools"], &[], None);
    let mut r4 = rule("R4", TargetKind::Product, "P5", "1.2", "2026-01-01", None);
    r4.channel = Some(Channel::Online);
    let rules = vec![
        rule(
            "R1",
            TargetKind::Category,
            "C-electrical",
            "2",
            "2026-03-01",
            Some("2026-03-31"),
        ),
        rule("R2", TargetKind::Label, "L-eco", "1.5", "2026-03-01", None),
        rule(
            "R3",
            TargetKind::Category,
            "C-tools",
            "3",
            "2026-03-10",
            Some("2026-03-31"),
        ),
        r4,
    ];
    let base = |points: &str| EffectiveDated::new(vec![(day("2026-01-01"), dec(points))]);
    let book = PricingBook {
        rules: RuleIndex::new(rules),
        base_points: [("P1", "10"), ("P2", "4"), ("P4", "2.5"), ("P5", "7")]
            .into_iter()
            .map(|(p, points)| (p.to_owned(), base(points)))
            .collect(),
        segment_rates: [
            ("gold".to_owned(), base("1.1")),
            ("silver".to_owned(), base("1.05")),
        ]
        .into_iter()
        .collect(),
        client_segments: ["gold".to_owned(), "silver".to_owned()]
            .into_iter()
            .collect(),
    };
    let lines = vec![
        line(1, cable, "3", Channel::Online, "2026-03-05"),
        line(2, lamp, "2", Channel::Offline, "2026-03-05"),
        line(3, sample, "5", Channel::Online, "2026-03-05"),
        line(4, drill, "1", Channel::Online, "2026-03-08"),
        line(5, switch.clone(), "3", Channel::Online, "2026-03-05"),
        line(6, switch, "0.333", Channel::Online, "2026-03-05"),
    ];
    (lines, book)
}

fn points(calc: &DocumentCalculation) -> Vec<Decimal> {
    calc.lines.iter().map(|l| l.points).collect()
}

#[test]
fn the_worked_example_gives_the_hand_computed_points_in_each_stacking_mode() {
    let (lines, book) = worked_example();
    let expected = [
        (
            StackingMode::Max,
            ["66", "17.6", "0", "9.24", "16.5", "1.83"],
            "111.17",
        ),
        (
            StackingMode::Multiply,
            ["99", "26.4", "0", "9.24", "16.5", "1.83"],
            "152.97",
        ),
        (
            StackingMode::Add,
            ["82.5", "22", "0", "9.24", "16.5", "1.83"],
            "132.07",
        ),
    ];
    for (mode, lines_expected, total) in expected {
        let calc = calculate(&lines, &book, policy(mode));
        assert_eq!(points(&calc), lines_expected.map(dec), "{mode:?}");
        assert_eq!(calc.total, dec(total), "{mode:?}");
    }
}

#[test]
fn the_breakdown_explains_every_rule_considered() {
    let (lines, book) = worked_example();
    let calc = calculate(&lines, &book, policy(StackingMode::Max));
    let cable = &calc.lines[0];
    assert_eq!(cable.rules.len(), 2);
    assert!(cable.rules[0].applied && cable.rules[0].rule_id == "R1");
    assert_eq!(
        cable.rules[0].matched_by.to_string(),
        "category:C-electrical"
    );
    assert_eq!(
        cable.rules[1].reason,
        "outranked by rule R1 (factor 2) under MAX stacking"
    );
    assert_eq!(
        (cable.segment_id.as_deref(), cable.segment_rate),
        (Some("gold"), dec("1.1")),
        "the highest rate applies"
    );
    assert_eq!(cable.unrounded_points, dec("66"));
    let sample = &calc.lines[2];
    assert_eq!(
        sample.note.as_deref(),
        Some("no base points for product P3 on 2026-03-05")
    );
    let drill = &calc.lines[3];
    assert_eq!(
        drill.rules[0].reason,
        "pricing date 2026-03-08 is before the rule's window 2026-03-10..2026-03-31"
    );
    assert!(drill.rules[1].applied, "the online product rule");
    assert_eq!(calc.lines[5].unrounded_points, dec("1.8315"));
}

#[test]
fn channel_and_segment_restrictions_are_explained() {
    let mut online_only = rule("R9", TargetKind::Product, "P1", "2", "2026-01-01", None);
    online_only.channel = Some(Channel::Online);
    let mut vip_only = rule("R8", TargetKind::Product, "P1", "5", "2026-01-01", None);
    vip_only.segment_ids = vec!["vip".into()];
    let book = PricingBook {
        rules: RuleIndex::new(vec![online_only, vip_only]),
        base_points: [(
            "P1".to_owned(),
            EffectiveDated::new(vec![(day("2026-01-01"), dec("1"))]),
        )]
        .into_iter()
        .collect(),
        ..PricingBook::default()
    };
    let offline = line(
        1,
        product("P1", &[], &[], None),
        "1",
        Channel::Offline,
        "2026-03-05",
    );
    let calc = calculate_line(&offline, &book, policy(StackingMode::Max));
    let reasons: Vec<&str> = calc.rules.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "the client is in none of the rule's segments vip",
            "the line is offline; the rule is for online lines"
        ]
    );
    assert_eq!((calc.multiplier, calc.points), (Decimal::ONE, Decimal::ONE));
    let excluded = calculate_line(
        &offline,
        &book,
        CalculationPolicy {
            offline_lines_earn: false,
            ..policy(StackingMode::Max)
        },
    );
    assert_eq!(excluded.points, Decimal::ZERO);
    assert_eq!(
        excluded.note.as_deref(),
        Some("offline lines are excluded by the tenant's settings")
    );
}

#[test]
fn rules_follow_the_order_date_not_the_time_of_processing() {
    let book = PricingBook {
        base_points: [(
            "P1".to_owned(),
            EffectiveDated::new(vec![
                (day("2026-01-01"), dec("10")),
                (day("2026-03-01"), dec("20")),
            ]),
        )]
        .into_iter()
        .collect(),
        ..PricingBook::default()
    };
    let before = line(
        1,
        product("P1", &[], &[], None),
        "1",
        Channel::Online,
        "2026-02-28",
    );
    let after = line(
        2,
        product("P1", &[], &[], None),
        "1",
        Channel::Online,
        "2026-03-01",
    );
    let calc = calculate(&[before, after], &book, policy(StackingMode::Max));
    assert_eq!(points(&calc), [dec("10"), dec("20")]);
}

fn arb_factor() -> impl Strategy<Value = Decimal> {
    (1_i64..50_000).prop_map(|units| Decimal::new(units, 4))
}

fn arb_book(factors: &[Decimal]) -> PricingBook {
    let rules = factors
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let kind = [
                TargetKind::Product,
                TargetKind::Category,
                TargetKind::Label,
                TargetKind::Manufacturer,
            ][i % 4];
            let target = ["P1", "C1", "L1", "M1"][i % 4];
            let mut r = rule(&format!("R{i:02}"), kind, target, "1", "2026-01-01", None);
            r.factor = *f;
            r
        })
        .collect();
    PricingBook {
        rules: RuleIndex::new(rules),
        base_points: [(
            "P1".to_owned(),
            EffectiveDated::new(vec![(day("2026-01-01"), dec("3.3333"))]),
        )]
        .into_iter()
        .collect(),
        ..PricingBook::default()
    }
}

fn the_product() -> ProductFacts {
    product("P1", &["C1"], &["L1"], Some("M1"))
}

proptest! {
    #[test]
    fn stacking_modes_follow_their_definitions(factors in proptest::collection::vec(arb_factor(), 0..6)) {
        let book = arb_book(&factors);
        let input = line(1, the_product(), "1", Channel::Online, "2026-03-05");
        let multiplier = |mode| calculate_line(&input, &book, policy(mode)).multiplier;
        let max = factors.iter().copied().max().unwrap_or(Decimal::ONE);
        let product: Decimal = factors.iter().copied().product();
        let add = Decimal::ONE + factors.iter().map(|f| *f - Decimal::ONE).sum::<Decimal>();
        prop_assert_eq!(multiplier(StackingMode::Max), max.normalize());
        prop_assert_eq!(multiplier(StackingMode::Multiply), product.normalize());
        prop_assert_eq!(multiplier(StackingMode::Add), add.normalize());
        if factors.len() <= 1 {
            prop_assert_eq!(multiplier(StackingMode::Max), multiplier(StackingMode::Multiply));
            prop_assert_eq!(multiplier(StackingMode::Max), multiplier(StackingMode::Add));
        }
        if factors.iter().all(|f| *f >= Decimal::ONE) {
            prop_assert!(multiplier(StackingMode::Multiply) >= multiplier(StackingMode::Add));
            prop_assert!(multiplier(StackingMode::Add) >= multiplier(StackingMode::Max));
        }
    }

    #[test]
    fn every_targeting_rule_is_listed_once_and_max_applies_exactly_one(factors in proptest::collection::vec(arb_factor(), 1..6)) {
        let book = arb_book(&factors);
        let calc = calculate_line(&line(1, the_product(), "1", Channel::Online, "2026-03-05"), &book, policy(StackingMode::Max));
        prop_assert_eq!(calc.rules.len(), factors.len());
        prop_assert_eq!(calc.rules.iter().filter(|r| r.applied).count(), 1);
        let multiply = calculate_line(&line(1, the_product(), "1", Channel::Online, "2026-03-05"), &book, policy(StackingMode::Multiply));
        prop_assert!(multiply.rules.iter().all(|r| r.applied));
    }

    #[test]
    fn each_line_is_rounded_once_half_away_from_zero_and_the_total_is_their_sum(
        quantities in proptest::collection::vec(1_i64..10_000_000, 1..20),
        factors in proptest::collection::vec(arb_factor(), 0..4),
        scale in 0_u32..=4,
        mode in prop_oneof![Just(StackingMode::Max), Just(StackingMode::Multiply), Just(StackingMode::Add)],
    ) {
        let book = arb_book(&factors);
        let lines: Vec<LineInput> = quantities
            .iter()
            .enumerate()
            .map(|(i, q)| LineInput { quantity: Decimal::new(*q, 4), ..line(u32::try_from(i).unwrap_or(0), the_product(), "1", Channel::Online, "2026-03-05") })
            .collect();
        let calc = calculate(&lines, &book, CalculationPolicy { points_scale: scale, ..policy(mode) });
        let half = Decimal::new(5, scale + 1);
        for l in &calc.lines {
            prop_assert!(l.points.scale() <= scale);
            prop_assert!((l.points - l.unrounded_points).abs() <= half);
            prop_assert_eq!(l.points, round_points(l.unrounded_points, scale).normalize());
        }
        prop_assert_eq!(calc.total, calc.lines.iter().map(|l| l.points).sum::<Decimal>());
    }

    #[test]
    fn the_order_rules_were_defined_in_does_not_matter(factors in proptest::collection::vec(arb_factor(), 1..6)) {
        let book = arb_book(&factors);
        let mut reversed_rules: Vec<MultiplierRule> = arb_book(&factors).rules.candidates(&the_product()).into_iter().map(|(r, _)| r.clone()).collect();
        reversed_rules.reverse();
        let reversed = PricingBook { rules: RuleIndex::new(reversed_rules), ..book.clone() };
        for mode in [StackingMode::Max, StackingMode::Multiply, StackingMode::Add] {
            let input = line(1, the_product(), "2", Channel::Online, "2026-03-05");
            prop_assert_eq!(calculate_line(&input, &book, policy(mode)), calculate_line(&input, &reversed, policy(mode)));
        }
    }
}
