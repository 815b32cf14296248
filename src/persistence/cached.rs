//! Read-through caches in front of the two repositories every call reads: the caller's API key
//! and the tenant's settings. Both change rarely; a round trip each on every call was a third of
//! a balance read (docs/PERFORMANCE.md). A change made through this process clears its cache at
//! once; one made by another replica is seen within the time-to-live.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::error::RepoError;
use super::{AccessRepository, SettingsRepository};
use crate::domain::access::ApiKeyRecord;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::settings::TenantSettings;
use crate::domain::tenant::TenantId;

/// How long a cached API key or settings revision is served before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Entries kept at most; beyond it the cache starts again empty.
const CAPACITY: usize = 10_000;

/// Values by key, each served for `ttl` after it was read.
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(_, read_at)| read_at.elapsed() < self.ttl)
            .map(|(value, _)| value.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(key, (value, Instant::now()));
    }

    fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Caches the keys found by hash (unknown keys are always looked up, so a key created elsewhere
/// works at once); storing a key clears the cache.
pub struct CachedAccessRepository {
    inner: Arc<dyn AccessRepository>,
    keys: TtlCache<String, ApiKeyRecord>,
}

impl CachedAccessRepository {
    pub fn new(inner: Arc<dyn AccessRepository>, ttl: Duration) -> Self {
        Self {
            inner,
            keys: TtlCache::new(ttl),
        }
    }
}

#[async_trait]
impl AccessRepository for CachedAccessRepository {
    async fn ensure_tenant(&self, tenant: &TenantId, name: &str) -> Result<(), RepoError> {
        self.inner.ensure_tenant(tenant, name).await
    }

    async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, RepoError> {
        self.inner.tenant_exists(tenant).await
    }

    async fn store_key(&self, key: &ApiKeyRecord) -> Result<(), RepoError> {
        let stored = self.inner.store_key(key).await;
        self.keys.clear();
        stored
    }

    async fn find_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, RepoError> {
        if let Some(found) = self.keys.get(key_hash) {
            return Ok(Some(found));
        }
        let found = self.inner.find_key_by_hash(key_hash).await?;
        if let Some(record) = &found {
            self.keys.put(key_hash.to_owned(), record.clone());
        }
        Ok(found)
    }
}

/// Caches each tenant's settings in force; saving a revision clears the cache (also when the
/// save lost to a concurrent change, so that the retry reads the winner).
pub struct CachedSettingsRepository {
    inner: Arc<dyn SettingsRepository>,
    current: TtlCache<TenantId, TenantSettings>,
}

impl CachedSettingsRepository {
    pub fn new(inner: Arc<dyn SettingsRepository>, ttl: Duration) -> Self {
        Self {
            inner,
            current: TtlCache::new(ttl),
        }
    }
}

#[async_trait]
impl SettingsRepository for CachedSettingsRepository {
    async fn current(&self, tenant: &TenantId) -> Result<TenantSettings, RepoError> {
        if let Some(settings) = self.current.get(tenant) {
            return Ok(settings);
        }
        let settings = self.inner.current(tenant).await?;
        self.current.put(tenant.clone(), settings.clone());
        Ok(settings)
    }

    async fn revision(
        &self,
        tenant: &TenantId,
        revision: u32,
    ) -> Result<Option<TenantSettings>, RepoError> {
        self.inner.revision(tenant, revision).await
    }

    async fn save(
        &self,
        tenant: &TenantId,
        settings: &TenantSettings,
        request: &IdempotencyRecord,
        changed_by_key_id: &str,
    ) -> Result<(), RepoError> {
        let saved = self
            .inner
            .save(tenant, settings, request, changed_by_key_id)
            .await;
        self.current.clear();
        saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::{MockAccessRepository, MockSettingsRepository};

    fn record() -> ApiKeyRecord {
        ApiKeyRecord {
            tenant: TenantId::parse("demo").expect("tenant"),
            key_id: "k1".into(),
            key_hash: "h".into(),
            roles: vec!["admin".into()],
            label: String::new(),
            created_at: chrono::DateTime::UNIX_EPOCH,
            revoked_at: None,
        }
    }

    #[tokio::test]
    async fn a_found_key_is_read_once_within_the_ttl_and_again_after_a_store() {
        let mut inner = MockAccessRepository::new();
        inner
            .expect_find_key_by_hash()
            .times(2)
            .returning(|_| Ok(Some(record())));
        inner.expect_store_key().times(1).returning(|_| Ok(()));
        let cached = CachedAccessRepository::new(Arc::new(inner), Duration::from_mins(1));
        for _ in 0..3 {
            assert_eq!(
                cached.find_key_by_hash("h").await.expect("key"),
                Some(record())
            );
        }
        cached.store_key(&record()).await.expect("store");
        assert!(cached.find_key_by_hash("h").await.expect("key").is_some());
    }

    #[tokio::test]
    async fn an_unknown_key_is_looked_up_every_time() {
        let mut inner = MockAccessRepository::new();
        inner
            .expect_find_key_by_hash()
            .times(3)
            .returning(|_| Ok(None));
        let cached = CachedAccessRepository::new(Arc::new(inner), Duration::from_mins(1));
        for _ in 0..3 {
            assert_eq!(cached.find_key_by_hash("h").await.expect("key"), None);
        }
    }

    #[tokio::test]
    async fn settings_are_read_again_after_the_ttl_and_after_a_save() {
        let mut inner = MockSettingsRepository::new();
        inner
            .expect_current()
            .times(3)
            .returning(|_| Ok(TenantSettings::default()));
        inner
            .expect_save()
            .times(1)
            .returning(|_, _, _, _| Err(RepoError::Conflict("a concurrent change won".into())));
        let cached = CachedSettingsRepository::new(Arc::new(inner), Duration::from_millis(50));
        let tenant = TenantId::parse("demo").expect("tenant");
        cached.current(&tenant).await.expect("first read");
        cached.current(&tenant).await.expect("cached");
        tokio::time::sleep(Duration::from_millis(60)).await;
        cached
            .current(&tenant)
            .await
            .expect("read again after the ttl");
        let record = IdempotencyRecord {
            request_id: "r".into(),
            operation: "op".into(),
            request_hash: "h".into(),
            result_ref: String::new(),
        };
        assert!(
            cached
                .save(&tenant, &TenantSettings::default(), &record, "k1")
                .await
                .is_err()
        );
        cached
            .current(&tenant)
            .await
            .expect("read again after a save");
    }
}
