//! Typed settings of the process, loaded in layers: the embedded `config/default.toml`, an
//! optional file, `LOYALTY__SECTION__KEY` environment variables, then command-line flags.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The defaults, compiled in so that the binary runs from any directory.
const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub metrics: MetricsSettings,
    pub database: DatabaseSettings,
    pub telemetry: TelemetrySettings,
    pub jobs: JobsSettings,
    pub core: CoreSettings,
    pub sync: SyncSettings,
    pub outbox: OutboxSettings,
    pub smtp: SmtpSettings,
    pub codes: CodeSettings,
    pub plugin: PluginSettings,
    pub limits: LimitSettings,
    #[serde(default)]
    pub bootstrap: BootstrapSettings,
    /// Role → the permissions it grants (`"*"`: all).
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
}

/// The ONe core services this plugin calls (the promotions service receives coupon codes).
#[derive(Debug, Clone, Deserialize)]
pub struct CoreSettings {
    /// e.g. `http://one-core:50061`; empty: not connected, deliveries wait in the outbox.
    #[serde(default)]
    pub endpoint: String,
    /// Sent as `authorization: Bearer …` when not empty.
    #[serde(default)]
    pub token: String,
    /// Each tenant's own ONe credentials (tenant id → token), used instead of `token`.
    #[serde(default)]
    pub tenant_tokens: std::collections::BTreeMap<String, String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

/// Synchronization with ONe core.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncSettings {
    pub enabled: bool,
    /// How often the scheduler looks for tenants whose interval has passed.
    pub interval_ms: u64,
    /// Changes per read of a change feed (ONe asks for at most about 10,000 lines).
    pub batch_size: u32,
    /// Items per page of a full list.
    pub page_size: u32,
    /// Reads per run of one stream.
    pub max_batches: u32,
}

/// The dispatcher of the outbox (codes into ONe pools, SPECIAL e-mails).
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    pub enabled: bool,
    pub interval_ms: u64,
    pub batch_size: u64,
    /// How long a replica owns a message it is delivering.
    pub lease_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

/// SMTP for the SPECIAL coupons' alert e-mails.
#[derive(Debug, Clone, Deserialize)]
pub struct SmtpSettings {
    /// Empty: not configured, e-mails wait in the outbox.
    #[serde(default)]
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    pub from: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain text: only for a relay on the same host or a test listener.
    None,
    Starttls,
    Tls,
}

/// Rate limits of loyalty calls; 0 turns a limit off.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LimitSettings {
    pub per_key_per_second: u32,
    pub per_key_burst: u32,
    pub per_tenant_per_second: u32,
    pub per_tenant_burst: u32,
    /// Calls of one tenant in flight at once.
    #[serde(default)]
    pub per_tenant_concurrency: u32,
    /// Calls of one key in flight at once.
    #[serde(default)]
    pub per_key_concurrency: u32,
}

/// Registration with the ONe plugin framework's registry.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginSettings {
    /// e.g. `http://one-plugins:50071`; empty: the plugin does not register.
    #[serde(default)]
    pub registry_endpoint: String,
    /// Where the framework reaches this replica.
    pub advertised_endpoint: String,
    /// Tells replicas apart; a random one when empty.
    #[serde(default)]
    pub instance_id: String,
}

/// How coupon codes look.
#[derive(Debug, Clone, Deserialize)]
pub struct CodeSettings {
    pub prefix: String,
    pub length: usize,
    pub alphabet: String,
}

impl CodeSettings {
    pub fn format(&self) -> crate::domain::redemption::CodeFormat {
        crate::domain::redemption::CodeFormat {
            prefix: self.prefix.clone(),
            length: self.length,
            alphabet: self.alphabet.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub request_timeout_ms: u64,
    pub max_message_bytes: usize,
    pub shutdown_drain_ms: u64,
    #[serde(default)]
    pub tls: TlsSettings,
}

/// TLS for the gRPC server (rustls). Plaintext when no certificate is configured.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsSettings {
    /// PEM certificate chain of the server.
    #[serde(default)]
    pub cert_path: String,
    /// PEM private key of the server.
    #[serde(default)]
    pub key_path: String,
    /// PEM certificates of the CAs whose client certificates are accepted; when set, every
    /// client must present one (mutual TLS).
    #[serde(default)]
    pub client_ca_path: String,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        !self.cert_path.trim().is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// Empty disables the exporter.
    #[serde(default)]
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    pub sqlite_busy_timeout_ms: u64,
    /// SQLite only: how much of the file is read through a memory map (0: none).
    #[serde(default)]
    pub sqlite_mmap_bytes: u64,
    /// The most earns (or redemptions) written together, in one call on PostgreSQL or one
    /// transaction on SQLite, and one commit (group commit); 1 writes each alone.
    #[serde(default = "default_write_batch_max")]
    pub write_batch_max: usize,
    pub auto_migrate: bool,
    /// PostgreSQL only: how often the tables that have doubled since they were last analyzed are
    /// analyzed (0: never; autovacuum's own analyze goes on either way).
    #[serde(default = "default_analyze_interval_ms")]
    pub analyze_interval_ms: u64,
    /// PostgreSQL only: the schema to use instead of `public` (tests use one per test).
    #[serde(default)]
    pub schema: Option<String>,
}

/// The most earns (or redemptions) written together unless configured.
pub const DEFAULT_WRITE_BATCH_MAX: usize = 64;

fn default_write_batch_max() -> usize {
    DEFAULT_WRITE_BATCH_MAX
}

fn default_analyze_interval_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobsSettings {
    pub enabled: bool,
    pub interval_ms: u64,
    pub batch_size: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BootstrapSettings {
    #[serde(default)]
    pub tenants: Vec<BootstrapTenant>,
    #[serde(default)]
    pub api_keys: Vec<BootstrapApiKey>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BootstrapTenant {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BootstrapApiKey {
    pub tenant: String,
    pub key: String,
    #[serde(default)]
    pub label: String,
    pub roles: Vec<String>,
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
}

impl Settings {
    /// Loads the layers.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a value of the wrong type.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, config::ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_CONFIG,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("LOYALTY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        if let Some(listen) = overrides.listen {
            builder = builder.set_override("server.listen", listen.to_string())?;
        }
        if let Some(url) = &overrides.database_url {
            builder = builder.set_override("database.url", url.as_str())?;
        }
        builder.build()?.try_deserialize()
    }
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_flags_override_them() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            database_url: Some("sqlite://x.db".into()),
        };
        let settings = Settings::load(None, &overrides).expect("settings");
        assert_eq!(settings.server.listen.port(), 0);
        assert_eq!(settings.database.url, "sqlite://x.db");
        assert_eq!(settings.bootstrap.tenants[0].id, "demo");
        assert_eq!(settings.telemetry.log_format, LogFormat::Text);
    }
}
