//! TLS (rustls) end to end, and mutual TLS: certificates from a CA made by the test; a client
//! that trusts the CA talks to the server, a plaintext client does not, and with mutual TLS a
//! client without a certificate signed by the configured CA is refused.

use std::sync::Arc;

use one_loyalty::config::TlsSettings;
use one_loyalty::domain::clock::SystemClock;
use one_loyalty::proto::loyalty::v1 as pb;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{Backend, TestApp};

/// A CA, a server certificate for "localhost" and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let server_key = KeyPair::generate().expect("key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &ca)
            .expect("server cert");
        let client_key = KeyPair::generate().expect("key");
        let mut client_params =
            CertificateParams::new(vec!["one-core.test".to_owned()]).expect("client params");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params
            .signed_by(&client_key, &ca)
            .expect("client cert");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.path().join("server.pem"), server.pem()).expect("write");
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).expect("write");
        Self {
            ca: ca.pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
            dir,
        }
    }

    fn server(&self, mutual: bool) -> TlsSettings {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        TlsSettings {
            cert_path: path("server.pem"),
            key_path: path("server.key"),
            client_ca_path: if mutual {
                path("ca.pem")
            } else {
                String::new()
            },
        }
    }
}

async fn server(pki: &Pki, mutual: bool) -> TestApp {
    let tls = pki.server(mutual);
    TestApp::configured(Backend::Sqlite, Arc::new(SystemClock), |s| {
        s.server.tls = tls;
    })
    .await
}

/// Reads the settings over a TLS channel that trusts the test CA, with a client certificate
/// when `identity`.
async fn read_settings(app: &TestApp, pki: &Pki, identity: bool) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", app.port))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    pb::settings_service_client::SettingsServiceClient::new(channel)
        .get_settings(app.request(pb::GetSettingsRequest::default()))
        .await
        .map(|_| ())
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_not_plaintext_ones() {
    let pki = Pki::new();
    let app = server(&pki, false).await;
    read_settings(&app, &pki, false)
        .await
        .expect("a TLS client that trusts the CA");
    let plaintext = pb::settings_service_client::SettingsServiceClient::new(app.channel.clone())
        .get_settings(app.request(pb::GetSettingsRequest::default()))
        .await;
    assert!(plaintext.is_err(), "a plaintext client is not served");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let app = server(&pki, true).await;
    read_settings(&app, &pki, true)
        .await
        .expect("a client with a certificate of the CA");
    let refused = read_settings(&app, &pki, false).await;
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );
    app.stop().await;
}
