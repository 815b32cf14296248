//! Who is calling: API keys carry a tenant and roles.

use chrono::{DateTime, Utc};

use crate::domain::tenant::TenantId;

/// A stored API key. Only the hash of the secret is ever kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub tenant: TenantId,
    pub key_id: String,
    pub key_hash: String,
    pub roles: Vec<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An authenticated caller, attached to every loyalty call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub key_id: String,
    pub roles: Vec<String>,
}
