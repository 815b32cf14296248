//! `EarnService` end to end: previews priced from the rules set through the API.

use chrono::Utc;
use one_loyalty::domain::directory::{CategoryRecord, ClientRecord, ProductRecord};
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::proto::loyalty::v1 as pb;
use pb::earn_service_client::EarnServiceClient;
use pb::rules_service_client::RulesServiceClient;

use crate::helpers::{DEMO_TENANT, TestApp, violated_fields};
use crate::on_both_backends;

on_both_backends!(TestApp:
    the_worked_example_is_previewed_with_the_hand_computed_points,
    a_preview_follows_the_day_and_explains_each_rule,
    a_preview_for_an_unknown_client_or_with_bad_lines_is_refused,
    a_preview_sees_every_change_to_what_prices_a_product_at_once,
);

fn tenant() -> TenantId {
    TenantId::parse(DEMO_TENANT).expect("tenant")
}

/// The rules, catalogue and client of docs/EARNING.md.
pub async fn worked_example(app: &TestApp) {
    seed_catalogue(app).await;
    seed_rules(app).await;
}

/// A product of the worked example, as synchronization would bring it.
fn product(id: &str, category: &str, label: Option<&str>) -> ProductRecord {
    ProductRecord {
        product_id: id.into(),
        name: id.into(),
        sku: id.into(),
        category_id: Some(category.into()),
        label_ids: label.map(str::to_owned).into_iter().collect(),
        manufacturer_id: None,
        is_ecommerce: true,
        active: true,
        updated_at: Utc::now(),
    }
}

/// The categories, products and client, as synchronization would bring them.
async fn seed_catalogue(app: &TestApp) {
    let catalog = &app.services.catalog;
    for (id, parent) in [
        ("C-electrical", None),
        ("C-cables", Some("C-electrical")),
        ("C-lighting", Some("C-electrical")),
        ("C-tools", None),
    ] {
        let category = CategoryRecord {
            category_id: id.into(),
            parent_id: parent.map(str::to_owned),
            name: id.into(),
        };
        catalog
            .save_category(&tenant(), &category)
            .await
            .expect("category");
    }
    for (id, category, label) in [
        ("P1", "C-cables", Some("L-eco")),
        ("P2", "C-lighting", Some("L-eco")),
        ("P3", "C-electrical", None),
        ("P4", "C-electrical", None),
        ("P5", "C-tools", None),
    ] {
        catalog
            .save_product(&tenant(), &product(id, category, label))
            .await
            .expect("product");
    }
    save_acme(app, &["gold", "silver"]).await;
}

/// The worked example's client, in `segments`, as synchronization saves it.
pub async fn save_acme(app: &TestApp, segments: &[&str]) {
    let client = ClientRecord {
        client_id: "org:acme".into(),
        name: "Acme".into(),
        status: "ACTIVE".into(),
        has_account: true,
        segment_ids: segments.iter().map(|s| (*s).to_owned()).collect(),
        updated_at: Utc::now(),
    };
    app.services
        .directory
        .save_client(&tenant(), &client)
        .await
        .expect("client");
}

/// Base points, segment rates and the four rules, through the API.
async fn seed_rules(app: &TestApp) {
    let mut rules = RulesServiceClient::new(app.channel.clone());
    let entries = [("P1", "10"), ("P2", "4"), ("P4", "2.5"), ("P5", "7")].map(|(p, points)| {
        pb::BasePointsEntry {
            product_id: p.into(),
            points: points.into(),
            ..Default::default()
        }
    });
    rules
        .set_base_points(app.request(pb::SetBasePointsRequest {
            request_id: "base".into(),
            effective_from: "2026-01-01".into(),
            entries: entries.to_vec(),
        }))
        .await
        .expect("base points");
    for (segment, rate) in [("gold", "1.1"), ("silver", "1.05")] {
        let request = pb::SetSegmentRateRequest {
            request_id: format!("rate-{segment}"),
            segment_id: segment.into(),
            rate: rate.into(),
            effective_from: "2026-01-01".into(),
        };
        rules
            .set_segment_rate(app.request(request))
            .await
            .expect("rate");
    }
    let specs = [
        (
            "R1 Electrical spring",
            pb::TargetKind::Category,
            "C-electrical",
            "2",
            "2026-03-01",
            "2026-03-31",
            pb::Channel::Unspecified,
        ),
        (
            "R2 Eco label",
            pb::TargetKind::Label,
            "L-eco",
            "1.5",
            "2026-03-01",
            "",
            pb::Channel::Unspecified,
        ),
        (
            "R3 Tools month",
            pb::TargetKind::Category,
            "C-tools",
            "3",
            "2026-03-10",
            "2026-03-31",
            pb::Channel::Unspecified,
        ),
        (
            "R4 Drill online",
            pb::TargetKind::Product,
            "P5",
            "1.2",
            "2026-01-01",
            "",
            pb::Channel::Online,
        ),
    ];
    for (name, kind, target, factor, from, until, channel) in specs {
        let spec = pb::MultiplierRuleSpec {
            name: name.into(),
            targets: vec![pb::RuleTarget {
                kind: kind as i32,
                id: target.into(),
            }],
            factor: factor.into(),
            valid_from: from.into(),
            valid_until: until.into(),
            channel: channel as i32,
            ..Default::default()
        };
        create_published_rule(&mut rules, app, spec).await;
    }
}

/// Creates a rule and publishes its first version.
async fn create_published_rule(
    rules: &mut RulesServiceClient<tonic::transport::Channel>,
    app: &TestApp,
    spec: pb::MultiplierRuleSpec,
) {
    let slug = spec.name.replace(' ', "-");
    let rule = rules
        .create_multiplier_rule(app.request(pb::CreateMultiplierRuleRequest {
            request_id: format!("create-{slug}"),
            spec: Some(spec),
        }))
        .await
        .expect("create rule")
        .into_inner()
        .rule
        .expect("rule");
    let publish = pb::PublishMultiplierRuleRequest {
        request_id: format!("publish-{slug}"),
        rule_id: rule.rule_id,
        version: 1,
    };
    rules
        .publish_multiplier_rule(app.request(publish))
        .await
        .expect("publish");
}

fn line(product: &str, quantity: &str, channel: pb::Channel) -> pb::PreviewLine {
    pb::PreviewLine {
        product_id: product.into(),
        quantity: quantity.into(),
        channel: channel as i32,
    }
}

fn invoice_lines() -> Vec<pb::PreviewLine> {
    vec![
        line("P1", "3", pb::Channel::Online),
        line("P2", "2", pb::Channel::Offline),
        line("P3", "5", pb::Channel::Online),
        line("P5", "1", pb::Channel::Online),
        line("P4", "3", pb::Channel::Online),
        line("P4", "0.333", pb::Channel::Online),
    ]
}

async fn preview(
    app: &TestApp,
    date: &str,
    lines: Vec<pb::PreviewLine>,
) -> Result<pb::PreviewPointsResponse, tonic::Status> {
    let request = pb::PreviewPointsRequest {
        client_id: "org:acme".into(),
        date: date.into(),
        lines,
    };
    EarnServiceClient::new(app.channel.clone())
        .preview_points(app.request(request))
        .await
        .map(tonic::Response::into_inner)
}

async fn set_stacking(app: &TestApp, mode: pb::StackingMode) {
    let request = pb::UpdateSettingsRequest {
        request_id: format!("stacking-{mode:?}"),
        settings: Some(pb::TenantSettings {
            stacking_mode: mode as i32,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["stacking_mode".into()],
        }),
        expected_revision: 0,
    };
    app.settings_client()
        .update_settings(app.request(request))
        .await
        .expect("stacking mode");
}

async fn the_worked_example_is_previewed_with_the_hand_computed_points(app: &TestApp) {
    worked_example(app).await;
    let expected = [
        (
            pb::StackingMode::Max,
            ["66.00", "17.60", "0.00", "9.24", "16.50", "1.83"],
            "111.17",
        ),
        (
            pb::StackingMode::Multiply,
            ["99.00", "26.40", "0.00", "9.24", "16.50", "1.83"],
            "152.97",
        ),
        (
            pb::StackingMode::Add,
            ["82.50", "22.00", "0.00", "9.24", "16.50", "1.83"],
            "132.07",
        ),
    ];
    for (mode, lines, total) in expected {
        set_stacking(app, mode).await;
        let answer = preview(app, "2026-03-05", invoice_lines())
            .await
            .expect("preview");
        let points: Vec<&str> = answer.lines.iter().map(|l| l.points.as_str()).collect();
        assert_eq!(points, lines, "{mode:?}");
        assert_eq!(answer.total_points, total, "{mode:?}");
        assert_eq!(answer.stacking_mode, mode as i32);
    }
}

async fn a_preview_follows_the_day_and_explains_each_rule(app: &TestApp) {
    worked_example(app).await;
    let answer = preview(app, "2026-03-05", invoice_lines())
        .await
        .expect("preview");
    let cable = &answer.lines[0];
    let rules: Vec<(&str, bool, &str)> = cable
        .rules
        .iter()
        .map(|r| (r.rule_name.as_str(), r.applied, r.matched_by.as_str()))
        .collect();
    assert!(
        rules.contains(&("R1 Electrical spring", true, "category:C-electrical")),
        "a sub-category matches its parent's rule: {rules:?}"
    );
    assert!(rules.contains(&("R2 Eco label", false, "label:L-eco")));
    assert_eq!(
        (
            cable.segment_id.as_str(),
            cable.segment_rate.as_str(),
            cable.base_points.as_str()
        ),
        ("gold", "1.1", "10")
    );
    assert_eq!(
        answer.lines[2].note,
        "no base points for product P3 on 2026-03-05"
    );
    assert_eq!(answer.lines[5].unrounded_points, "1.8315");
    let drill_early = &answer.lines[3];
    assert!(drill_early.rules.iter().any(|r| r.reason
        == "pricing date 2026-03-05 is before the rule's window 2026-03-10..2026-03-31"));
    let later = preview(
        app,
        "2026-03-15",
        vec![line("P5", "1", pb::Channel::Online)],
    )
    .await
    .expect("preview");
    assert_eq!(later.total_points, "23.10", "R3 is in its window on 03-15");
    let offline = preview(
        app,
        "2026-03-15",
        vec![line("P5", "1", pb::Channel::Offline)],
    )
    .await
    .expect("preview");
    assert_eq!(
        offline.total_points, "23.10",
        "R4 is online only and outranked anyway"
    );
    let april = preview(
        app,
        "2026-04-02",
        vec![line("P1", "1", pb::Channel::Online)],
    )
    .await
    .expect("preview");
    assert_eq!(
        april.total_points, "16.50",
        "R1 ended with March; R2 goes on: 10 x 1.5 x 1.1"
    );
}

async fn a_preview_for_an_unknown_client_or_with_bad_lines_is_refused(app: &TestApp) {
    worked_example(app).await;
    let request = pb::PreviewPointsRequest {
        client_id: "org:ghost".into(),
        date: "2026-03-05".into(),
        lines: vec![line("P1", "1", pb::Channel::Online)],
    };
    let status = EarnServiceClient::new(app.channel.clone())
        .preview_points(app.request(request))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = preview(
        app,
        "05/03/2026",
        vec![
            line("", "0", pb::Channel::Online),
            line("P1", "x", pb::Channel::Online),
        ],
    )
    .await
    .expect_err("invalid");
    assert_eq!(violated_fields(&status), ["date", "lines[1].quantity"]);
    let status = preview(app, "2026-03-05", vec![line("", "0", pb::Channel::Online)])
        .await
        .expect_err("invalid");
    assert_eq!(
        violated_fields(&status),
        ["lines[0].product_id", "lines[0].quantity"]
    );
    let status = preview(app, "2026-03-05", vec![]).await.expect_err("empty");
    assert_eq!(violated_fields(&status), ["lines"]);
}

/// What prices a product is cached per pricing revision: each change, by the API or by
/// synchronization, is seen by the very next call.
async fn a_preview_sees_every_change_to_what_prices_a_product_at_once(app: &TestApp) {
    worked_example(app).await;
    let cable = || async {
        let answer = preview(
            app,
            "2026-03-05",
            vec![line("P1", "1", pb::Channel::Online)],
        )
        .await
        .expect("preview");
        let line = answer.lines.into_iter().next().expect("line");
        let mut rules: Vec<String> = line.rules.iter().map(|r| r.rule_name.clone()).collect();
        rules.sort();
        (line.base_points, rules)
    };
    let (base, rules) = cable().await;
    assert_eq!(base, "10");
    assert_eq!(rules, ["R1 Electrical spring", "R2 Eco label"]);
    // Twice: the second is priced from the cache.
    assert_eq!(cable().await, (base, rules));

    let mut api = RulesServiceClient::new(app.channel.clone());
    api.set_base_points(app.request(pb::SetBasePointsRequest {
        request_id: "base-again".into(),
        effective_from: "2026-01-01".into(),
        entries: vec![pb::BasePointsEntry {
            product_id: "P1".into(),
            points: "20".into(),
            ..Default::default()
        }],
    }))
    .await
    .expect("base points");
    assert_eq!(cable().await.0, "20", "new base points");

    let catalog = &app.services.catalog;
    let mut product = product("P1", "C-cables", None);
    catalog
        .save_product(&tenant(), &product)
        .await
        .expect("product");
    assert_eq!(
        cable().await.1,
        ["R1 Electrical spring"],
        "the label is gone"
    );

    let moved = CategoryRecord {
        category_id: "C-cables".into(),
        parent_id: Some("C-tools".into()),
        name: "C-cables".into(),
    };
    catalog
        .save_category(&tenant(), &moved)
        .await
        .expect("category");
    assert_eq!(
        cable().await.1,
        ["R3 Tools month"],
        "the category moved under tools"
    );

    product.label_ids = vec!["L-eco".into()];
    catalog
        .save_product(&tenant(), &product)
        .await
        .expect("product");
    let spec = pb::MultiplierRuleSpec {
        name: "R5 Cable week".into(),
        targets: vec![pb::RuleTarget {
            kind: pb::TargetKind::Product as i32,
            id: "P1".into(),
        }],
        factor: "1.1".into(),
        valid_from: "2026-03-01".into(),
        ..Default::default()
    };
    create_published_rule(&mut api, app, spec).await;
    assert_eq!(
        cable().await.1,
        ["R2 Eco label", "R3 Tools month", "R5 Cable week"],
        "the label back and a new rule"
    );
}
