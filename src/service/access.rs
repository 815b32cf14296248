//! API keys: issuing them (the secret is shown once, only its hash is stored) and authenticating
//! calls against them.

use std::sync::Arc;

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

use crate::domain::access::{ApiKeyRecord, Caller};
use crate::domain::clock::Clock;
use crate::domain::tenant::TenantId;
use crate::persistence::{AccessRepository, RepoError};

/// Why a call was refused or a key could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No key, an unknown key, or a revoked key. → UNAUTHENTICATED
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid key used for another tenant. → `PERMISSION_DENIED`
    #[error("{0}")]
    PermissionDenied(String),
    /// Bad input to key management. → `INVALID_ARGUMENT`
    #[error("{0}")]
    Invalid(String),
    /// → UNAVAILABLE / INTERNAL by the repository error.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// The roles a key may carry. `admin` can do everything; the finer permissions come with the
/// permissions work.
pub const KNOWN_ROLES: &[&str] = &["admin", "front-office", "auditor", "sync"];

/// The SHA-256 of a key, hex. Keys are 256-bit random values (or configured local secrets), so a
/// fast hash is enough and makes the lookup one index probe.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

pub struct AccessService {
    repo: Arc<dyn AccessRepository>,
    clock: Arc<dyn Clock>,
}

/// A newly issued key: `secret` is shown once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key_id: String,
    pub secret: String,
}

impl AccessService {
    pub fn new(repo: Arc<dyn AccessRepository>, clock: Arc<dyn Clock>) -> Self {
        Self { repo, clock }
    }

    /// Checks the `one-tenant` and bearer key of a call.
    ///
    /// # Errors
    /// `Unauthenticated` for a missing, unknown or revoked key; `PermissionDenied` when the key
    /// belongs to another tenant or no tenant was named.
    pub async fn authenticate(
        &self,
        tenant: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Caller, AccessError> {
        let Some(key) = bearer.filter(|k| !k.is_empty()) else {
            return Err(AccessError::Unauthenticated(
                "missing credentials: send `authorization: Bearer <api key>`".into(),
            ));
        };
        let record = self
            .repo
            .find_key_by_hash(&hash_key(key))
            .await?
            .filter(|k| k.revoked_at.is_none_or(|at| at > self.clock.now()))
            .ok_or_else(|| AccessError::Unauthenticated("unknown or revoked API key".into()))?;
        let Some(tenant) = tenant.filter(|t| !t.is_empty()) else {
            return Err(AccessError::PermissionDenied(
                "missing `one-tenant` metadata".into(),
            ));
        };
        if tenant != record.tenant.as_str() {
            return Err(AccessError::PermissionDenied(format!(
                "the API key does not belong to tenant {tenant:?}"
            )));
        }
        Ok(Caller {
            tenant: record.tenant,
            key_id: record.key_id,
            roles: record.roles,
            acting_for: None,
        })
    }

    /// Issues a new random key for a tenant, creating the tenant if needed.
    ///
    /// # Errors
    /// A bad tenant id or role, or the database.
    pub async fn issue_key(
        &self,
        tenant: &str,
        roles: &[String],
        label: &str,
    ) -> Result<IssuedKey, AccessError> {
        let key_id = format!("k_{}", random_text(12).to_lowercase());
        let secret = format!("olk_{}", random_text(43));
        self.store_key(tenant, &key_id, &secret, roles, label)
            .await?;
        Ok(IssuedKey { key_id, secret })
    }

    /// Stores a configured key (the local demo key), creating its tenant. Idempotent.
    ///
    /// # Errors
    /// A bad tenant id or role, or the database.
    pub async fn install_key(
        &self,
        tenant: &str,
        secret: &str,
        roles: &[String],
        label: &str,
    ) -> Result<(), AccessError> {
        let key_id = format!("cfg_{}", &hash_key(secret)[..12]);
        self.store_key(tenant, &key_id, secret, roles, label).await
    }

    /// Creates a tenant if it does not exist.
    ///
    /// # Errors
    /// A bad tenant id, or the database.
    pub async fn ensure_tenant(&self, tenant: &str, name: &str) -> Result<TenantId, AccessError> {
        let tenant = TenantId::parse(tenant).map_err(|e| AccessError::Invalid(e.to_string()))?;
        self.repo.ensure_tenant(&tenant, name).await?;
        Ok(tenant)
    }

    async fn store_key(
        &self,
        tenant: &str,
        key_id: &str,
        secret: &str,
        roles: &[String],
        label: &str,
    ) -> Result<(), AccessError> {
        if roles.is_empty() {
            return Err(AccessError::Invalid("a key needs at least one role".into()));
        }
        if let Some(role) = roles.iter().find(|r| !KNOWN_ROLES.contains(&r.as_str())) {
            return Err(AccessError::Invalid(format!(
                "unknown role {role:?}; known: {}",
                KNOWN_ROLES.join(", ")
            )));
        }
        let tenant = self.ensure_tenant(tenant, tenant).await?;
        let record = ApiKeyRecord {
            tenant,
            key_id: key_id.to_owned(),
            key_hash: hash_key(secret),
            roles: roles.to_vec(),
            label: label.to_owned(),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.repo.store_key(&record).await?;
        Ok(())
    }
}

/// Random alphanumeric text from the thread's CSPRNG.
fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::SystemClock;
    use crate::persistence::MockAccessRepository;

    fn key_of(tenant: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            tenant: TenantId::parse(tenant).expect("tenant"),
            key_id: "k1".into(),
            key_hash: hash_key("secret"),
            roles: vec!["admin".into()],
            label: String::new(),
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }
    }

    fn service(found: Option<ApiKeyRecord>) -> AccessService {
        let mut repo = MockAccessRepository::new();
        repo.expect_find_key_by_hash()
            .returning(move |_| Ok(found.clone()));
        AccessService::new(Arc::new(repo), Arc::new(SystemClock))
    }

    #[tokio::test]
    async fn a_key_of_the_named_tenant_authenticates() {
        let caller = service(Some(key_of("acme")))
            .authenticate(Some("acme"), Some("secret"))
            .await
            .expect("caller");
        assert_eq!(caller.tenant.as_str(), "acme");
        assert_eq!(caller.roles, ["admin"]);
    }

    #[tokio::test]
    async fn missing_or_unknown_keys_are_unauthenticated() {
        let none = service(None);
        assert!(matches!(
            none.authenticate(Some("acme"), None).await,
            Err(AccessError::Unauthenticated(_))
        ));
        assert!(matches!(
            none.authenticate(Some("acme"), Some("x")).await,
            Err(AccessError::Unauthenticated(_))
        ));
    }

    #[tokio::test]
    async fn a_key_used_for_another_tenant_is_denied() {
        let svc = service(Some(key_of("acme")));
        assert!(matches!(
            svc.authenticate(Some("other"), Some("secret")).await,
            Err(AccessError::PermissionDenied(_))
        ));
        assert!(matches!(
            svc.authenticate(None, Some("secret")).await,
            Err(AccessError::PermissionDenied(_))
        ));
    }

    #[tokio::test]
    async fn a_revoked_key_is_unauthenticated() {
        let mut key = key_of("acme");
        key.revoked_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
        let svc = service(Some(key));
        assert!(matches!(
            svc.authenticate(Some("acme"), Some("secret")).await,
            Err(AccessError::Unauthenticated(_))
        ));
    }

    #[test]
    fn issued_secrets_are_long_and_distinct() {
        let a = random_text(43);
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_text(43));
    }
}
