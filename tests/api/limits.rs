//! Rate limits: a flood from one key is refused with `RESOURCE_EXHAUSTED` while another tenant's
//! calls keep being answered, and quickly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use one_loyalty::domain::clock::SystemClock;
use one_loyalty::proto::loyalty::v1 as pb;
use tonic::Code;

use crate::helpers::{
    Backend, DEMO_KEY, DEMO_TENANT, OTHER_KEY, OTHER_TENANT, TestApp, request_as,
};

async fn settings_call(app: &TestApp, tenant: &str, key: &str) -> (Code, Duration) {
    let started = Instant::now();
    let reply = pb::settings_service_client::SettingsServiceClient::new(app.channel.clone())
        .get_settings(request_as(tenant, key, pb::GetSettingsRequest::default()))
        .await;
    (
        reply.map_or_else(|s| s.code(), |_| Code::Ok),
        started.elapsed(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// 20 calls of the other tenant, one after another; their latencies.
async fn quiet_tenant_latencies(app: &TestApp) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let (code, took) = settings_call(app, OTHER_TENANT, OTHER_KEY).await;
        assert_eq!(code, Code::Ok, "the other tenant is served");
        latencies.push(took);
    }
    latencies.sort();
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_key_is_refused_while_another_tenant_keeps_its_latency() {
    let app = TestApp::configured(Backend::Sqlite, Arc::new(SystemClock), |s| {
        s.limits.per_key_per_second = 50;
        s.limits.per_key_burst = 50;
        s.limits.per_tenant_per_second = 200;
        s.limits.per_tenant_burst = 200;
    })
    .await;
    let quiet = quiet_tenant_latencies(&app).await;

    // 600 calls at once from the demo key, while the other tenant calls as before.
    let flood = join_all((0..600).map(|_| settings_call(&app, DEMO_TENANT, DEMO_KEY)));
    let (flooded, during) = tokio::join!(flood, quiet_tenant_latencies(&app));
    let served = flooded.iter().filter(|(c, _)| *c == Code::Ok).count();
    let refused = flooded
        .iter()
        .filter(|(c, _)| *c == Code::ResourceExhausted)
        .count();
    assert_eq!(served + refused, 600, "only served or refused");
    assert!(
        (50..300).contains(&served) && refused > 300,
        "{served} served: the burst and what refilled during the flood"
    );
    eprintln!(
        "flood of 600 calls from one key: {served} served, {refused} RESOURCE_EXHAUSTED; \
         other tenant p50 {:?} p99 {:?} before, p50 {:?} p99 {:?} during",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
    );
    assert!(
        percentile(&during, 0.5) < Duration::from_millis(250),
        "the other tenant stays fast: {:?}",
        percentile(&during, 0.5)
    );
    app.finish().await;
}
