//! Registration with the ONe plugin framework, observed by a registry started by the test: the
//! plugin registers (through the registry's first failures), sends heartbeats, serves its
//! manifest without a key, and deregisters on graceful shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use one_loyalty::domain::clock::SystemClock;
use one_loyalty::proto::plugin::v1 as plugin;
use one_loyalty::startup::LOYALTY_SERVICES;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::helpers::{Backend, TestApp};

#[derive(Debug, Default)]
struct Seen {
    failures_left: u32,
    attempts: u32,
    registered: Vec<plugin::RegisterPluginRequest>,
    heartbeats: Vec<String>,
    deregistered: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct FakeRegistry {
    seen: Arc<Mutex<Seen>>,
}

#[tonic::async_trait]
impl plugin::plugin_registry_service_server::PluginRegistryService for FakeRegistry {
    async fn register_plugin(
        &self,
        request: tonic::Request<plugin::RegisterPluginRequest>,
    ) -> Result<tonic::Response<plugin::RegisterPluginResponse>, tonic::Status> {
        let mut seen = self.seen.lock().expect("lock");
        seen.attempts += 1;
        if seen.failures_left > 0 {
            seen.failures_left -= 1;
            return Err(tonic::Status::unavailable("the registry is starting"));
        }
        seen.registered.push(request.into_inner());
        Ok(tonic::Response::new(plugin::RegisterPluginResponse {
            registration_id: "reg-1".into(),
            heartbeat_interval_seconds: 1,
        }))
    }

    async fn heartbeat(
        &self,
        request: tonic::Request<plugin::HeartbeatRequest>,
    ) -> Result<tonic::Response<plugin::HeartbeatResponse>, tonic::Status> {
        let beat = request.into_inner();
        assert!(beat.serving);
        self.seen
            .lock()
            .expect("lock")
            .heartbeats
            .push(beat.registration_id);
        Ok(tonic::Response::new(plugin::HeartbeatResponse {
            expires_at: None,
        }))
    }

    async fn deregister_plugin(
        &self,
        request: tonic::Request<plugin::DeregisterPluginRequest>,
    ) -> Result<tonic::Response<plugin::DeregisterPluginResponse>, tonic::Status> {
        self.seen
            .lock()
            .expect("lock")
            .deregistered
            .push(request.into_inner().registration_id);
        Ok(tonic::Response::new(plugin::DeregisterPluginResponse {}))
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_registers_heartbeats_and_deregisters_on_shutdown() {
    let registry = FakeRegistry::default();
    registry.seen.lock().expect("lock").failures_left = 2;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let serving = registry.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                plugin::plugin_registry_service_server::PluginRegistryServiceServer::new(serving),
            )
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let app = TestApp::configured(Backend::Sqlite, Arc::new(SystemClock), |s| {
        s.plugin.registry_endpoint = url;
        s.plugin.advertised_endpoint = "http://loyalty.test:50051".into();
        s.plugin.instance_id = "replica-1".into();
    })
    .await;

    let seen = Arc::clone(&registry.seen);
    wait_for("registration", || {
        !seen.lock().expect("lock").registered.is_empty()
    })
    .await;
    let registered = seen.lock().expect("lock").registered[0].clone();
    assert_eq!(
        seen.lock().expect("lock").attempts,
        3,
        "two refusals, then registered"
    );
    assert_eq!(registered.endpoint, "http://loyalty.test:50051");
    assert_eq!(registered.instance_id, "replica-1");
    let manifest = registered.manifest.expect("manifest");
    assert_eq!(manifest.plugin_id, "one-loyalty");
    assert_eq!(manifest.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest.services, LOYALTY_SERVICES);
    assert_eq!(manifest.permissions.len(), 14);
    assert!(
        manifest
            .permissions
            .iter()
            .any(|p| p.name == "points.adjust")
    );
    assert!(
        manifest
            .settings
            .iter()
            .any(|s| s.key == "loyalty_declaration_type_id")
    );

    let served = plugin::plugin_manifest_service_client::PluginManifestServiceClient::new(
        app.channel.clone(),
    )
    .get_manifest(plugin::GetManifestRequest {})
    .await
    .expect("the manifest needs no key")
    .into_inner()
    .manifest
    .expect("manifest");
    assert_eq!(served, manifest);

    wait_for("two heartbeats", || {
        seen.lock().expect("lock").heartbeats.len() >= 2
    })
    .await;
    assert!(
        seen.lock()
            .expect("lock")
            .heartbeats
            .iter()
            .all(|r| r == "reg-1")
    );
    assert!(seen.lock().expect("lock").deregistered.is_empty());
    app.stop().await;
    assert_eq!(
        seen.lock().expect("lock").deregistered,
        vec!["reg-1".to_owned()]
    );
}
