//! The server as tooling sees it: reflection, health, shutdown, the RPCs still to come.

use one_loyalty::proto::loyalty::v1 as pb;
use one_loyalty::startup::LOYALTY_SERVICES;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(TestApp:
    reflection_v1alpha_lists_exactly_the_loyalty_services_the_manifest_and_health,
    reflection_v1_lists_the_same_services,
    health_reports_every_loyalty_service_serving_without_credentials,
    without_an_one_endpoint_sync_reports_why_it_cannot_run,
);

/// The services a reflection protocol version lists, sorted, without the reflection service
/// itself (each version lists only its own).
macro_rules! listed_services {
    ($version:ident, $app:expr) => {{
        use tonic_reflection::pb::$version as r;
        let mut client =
            r::server_reflection_client::ServerReflectionClient::new($app.channel.clone());
        let request = r::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.next().await.expect("one response").expect("ok");
        let Some(r::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            response.message_response
        else {
            panic!("unexpected reflection answer");
        };
        let mut names: Vec<String> = list
            .service
            .into_iter()
            .map(|s| s.name)
            .filter(|n| !n.starts_with("grpc.reflection."))
            .collect();
        names.sort();
        names
    }};
}

async fn reflection_v1alpha_lists_exactly_the_loyalty_services_the_manifest_and_health(
    app: &TestApp,
) {
    let names = listed_services!(v1alpha, app);
    let loyalty: Vec<&String> = names.iter().filter(|n| n.starts_with("one.")).collect();
    let mut expected: Vec<&str> = LOYALTY_SERVICES.to_vec();
    expected.push(one_loyalty::startup::MANIFEST_SERVICE);
    expected.sort_unstable();
    assert_eq!(loyalty, expected);
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()));
    assert!(
        !names.iter().any(|n| n.starts_with("one.core.")),
        "the ONe core services are called, not served"
    );
}

async fn reflection_v1_lists_the_same_services(app: &TestApp) {
    assert_eq!(listed_services!(v1, app), listed_services!(v1alpha, app));
}

async fn health_reports_every_loyalty_service_serving_without_credentials(app: &TestApp) {
    let mut health = HealthClient::new(app.channel.clone());
    for service in LOYALTY_SERVICES.iter().chain(&[""]) {
        let status = health
            .check(HealthCheckRequest {
                service: (*service).to_owned(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
}

async fn without_an_one_endpoint_sync_reports_why_it_cannot_run(app: &TestApp) {
    let mut sync = pb::sync_service_client::SyncServiceClient::new(app.channel.clone());
    let status = sync
        .get_sync_status(pb::GetSyncStatusRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let fresh = sync
        .get_sync_status(app.request(pb::GetSyncStatusRequest::default()))
        .await
        .expect("status")
        .into_inner()
        .streams;
    assert_eq!(fresh.len(), 8);
    assert!(
        fresh
            .iter()
            .all(|s| s.cursor.is_empty() && s.items_synced == 0)
    );
    sync.trigger_sync(app.request(pb::TriggerSyncRequest {
        request_id: "t1".into(),
        streams: vec![pb::SyncStream::Clients as i32],
        full_resync: false,
    }))
    .await
    .expect("scheduled");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let clients = sync
            .get_sync_status(app.request(pb::GetSyncStatusRequest {
                streams: vec![pb::SyncStream::Clients as i32],
            }))
            .await
            .expect("status")
            .into_inner()
            .streams;
        if clients[0].last_error.contains("no ONe core endpoint") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{clients:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_health_not_serving_before_the_server_stops() {
    let app = TestApp::with_drain(Backend::Sqlite, 3_000).await;
    let mut health = HealthClient::new(app.channel.clone());
    let watch = health
        .watch(HealthCheckRequest {
            service: "one.loyalty.v1.SettingsService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let stopping = tokio::spawn(async move { app.stop().await });
    let statuses: Vec<i32> = watch
        .take(2)
        .map(|r| r.expect("health update").status)
        .collect()
        .await;
    assert_eq!(
        statuses,
        [
            ServingStatus::Serving as i32,
            ServingStatus::NotServing as i32
        ]
    );
    stopping.await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_status_code() {
    // A free port for the exporter, which binds its own listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let app = TestApp::with_metrics(Backend::Sqlite, format!("127.0.0.1:{port}")).await;
    let mut settings = pb::settings_service_client::SettingsServiceClient::new(app.channel.clone());
    settings
        .get_settings(app.request(pb::GetSettingsRequest {}))
        .await
        .expect("allowed");
    settings
        .get_settings(pb::GetSettingsRequest {})
        .await
        .expect_err("no key");
    let mut body = String::new();
    for _ in 0..50 {
        body = scrape(port).await;
        if body.contains("UNAUTHENTICATED") {
            break;
        }
        tokio::task::yield_now().await;
    }
    let line = |code: &str| {
        body.lines().any(|l| {
            l.starts_with("grpc_server_requests_total")
                && l.contains("SettingsService/GetSettings")
                && l.contains(&format!("code=\"{code}\""))
        })
    };
    assert!(line("OK") && line("UNAUTHENTICATED"), "{body}");
    assert!(
        body.contains("grpc_server_request_duration_seconds"),
        "{body}"
    );
    app.stop().await;
}

/// GET /metrics over a plain TCP connection.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}
