//! Loads what the calculation engine needs for one client and a set of products: the client,
//! the products' facts, base points, the published rules that target them in a date range, and
//! the client's segments with their rates. Shared by previews and by earning, so both price the
//! same way. The client, its segments with their rates and the tenant's pricing revision are one
//! read; with the products in the cache, that is all a call reads.
//!
//! What prices a product (its facts, base points and rules) is kept per tenant and served for
//! the pricing revision it was read at: the database raises the revision in every transaction
//! that changes any of it (migration `m20261202_000009`), and each call reads the revision with
//! the client, so a cached product is served only while nothing that prices it has changed. An
//! entry is cached only when the revision was the same before and after it was read: it then
//! describes that revision exactly.
//!
//! An earn's client is kept too, with the revisions it was read at ([`EarnBasis`]), when it has
//! an account and counted as agreed: the next earn of it is priced from what was kept, without a
//! read ([`Pricing::as_seen`]), and carries the basis, which its write checks under its locks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::consent::EligibilityProbe;
use crate::domain::directory::ClientRecord;
use crate::domain::engine::PricingBook;
use crate::domain::rules::{EffectiveDated, MultiplierRule, ProductFacts, RuleIndex, RuleTarget};
use crate::domain::tenant::TenantId;
use crate::persistence::{CatalogRepository, ClientPricing, EarnBasis, RepoError, RulesRepository};
use crate::service::seen::Seen;

/// Products kept per tenant at most; beyond it the tenant's entries start again empty.
const PRODUCTS_PER_TENANT: usize = 50_000;

/// Earns' clients kept at most (about 400 bytes each: 20 MB at most, for a tenant's whole client
/// base as this machine kind serves it); beyond it they start again empty.
const CLIENTS_SEEN: usize = 50_000;

pub struct Pricing {
    catalog: Arc<dyn CatalogRepository>,
    rules: Arc<dyn RulesRepository>,
    cache: Mutex<HashMap<TenantId, CachedPricing>>,
    /// Earns' clients as read, by the eligibility asked of them.
    clients_seen: Seen<(TenantId, String, EligibilityProbe), ClientPricing>,
}

/// What prices one product.
#[derive(Debug, Clone)]
struct ProductPricing {
    facts: ProductFacts,
    base_points: Option<EffectiveDated>,
    /// The published rules that target it.
    rules: Vec<MultiplierRule>,
}

/// A tenant's products as priced at one revision.
struct CachedPricing {
    revision: i64,
    products: HashMap<String, Arc<ProductPricing>>,
}

/// A client as priced: its record and the book of everything that prices its lines.
pub type PricedClient = (ClientRecord, HashMap<String, ProductFacts>, PricingBook);

impl Pricing {
    pub fn new(catalog: Arc<dyn CatalogRepository>, rules: Arc<dyn RulesRepository>) -> Self {
        Self {
            catalog,
            rules,
            cache: Mutex::new(HashMap::new()),
            clients_seen: Seen::new(CLIENTS_SEEN),
        }
    }

    /// [`Self::book_and_eligibility`] for a client that counted as agreed, from what the last
    /// read of it found, with the revisions that read describes, or `None` when it is not kept
    /// (or any product is not, at the revision the client was read with). Reads nothing: the
    /// earn's write checks the basis.
    pub fn as_seen(
        &self,
        tenant: &TenantId,
        client_id: &str,
        product_ids: &[String],
        eligibility: EligibilityProbe,
    ) -> Option<(PricedClient, EarnBasis)> {
        let seen = self
            .clients_seen
            .get(&(tenant.clone(), client_id.to_owned(), eligibility))?;
        let products = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let current = cache
                .get(tenant)
                .filter(|c| c.revision == seen.basis.pricing_revision)?;
            unique(product_ids)
                .iter()
                .map(|id| current.products.get(id).map(Arc::clone))
                .collect::<Option<Vec<_>>>()?
        };
        let basis = seen.basis;
        Some((assemble(ClientPricing::clone(&seen), products), basis))
    }

    /// Forgets what [`Self::as_seen`] answers for the client, at every probe: its basis moved.
    pub fn forget(&self, tenant: &TenantId, client_id: &str) {
        self.clients_seen
            .forget(|(t, c, _)| t == tenant && c == client_id);
    }

    /// Keeps an earn's client as read, if an earn can be priced from it without a read.
    fn remember(&self, tenant: &TenantId, eligibility: EligibilityProbe, read: &ClientPricing) {
        if !read.client.has_account || read.eligible != Some(true) {
            return;
        }
        self.clients_seen.remember(
            (tenant.clone(), read.client.client_id.clone(), eligibility),
            read.clone(),
        );
    }

    /// The client (`None`: not known), the facts of every product (a product the catalogue does
    /// not know yet is priced on its id alone: product rules and base points still apply) and the
    /// book: every published rule that targets them (the engine judges each rule's window per
    /// line), their base points, and the client's segments with their rates (read together, so
    /// that they agree with each other).
    ///
    /// # Errors
    /// The database.
    pub async fn book(
        &self,
        tenant: &TenantId,
        client_id: &str,
        product_ids: &[String],
    ) -> Result<Option<PricedClient>, RepoError> {
        let priced = self.priced(tenant, client_id, product_ids, None).await?;
        Ok(priced.map(|(priced, _)| priced))
    }

    /// [`Self::book`], and whether the client counted as agreed at `eligibility`, read in the
    /// same statement as the client: an earn asks the database once before it writes.
    ///
    /// # Errors
    /// The database.
    pub async fn book_and_eligibility(
        &self,
        tenant: &TenantId,
        client_id: &str,
        product_ids: &[String],
        eligibility: EligibilityProbe,
    ) -> Result<Option<(PricedClient, bool)>, RepoError> {
        let priced = self
            .priced(tenant, client_id, product_ids, Some(eligibility))
            .await?;
        Ok(priced.map(|(priced, eligible)| (priced, eligible == Some(true))))
    }

    async fn priced(
        &self,
        tenant: &TenantId,
        client_id: &str,
        product_ids: &[String],
        eligibility: Option<EligibilityProbe>,
    ) -> Result<Option<(PricedClient, Option<bool>)>, RepoError> {
        let Some(priced) = self
            .rules
            .priced_client(tenant, client_id, eligibility.clone())
            .await?
        else {
            return Ok(None);
        };
        let products = self
            .products(tenant, &unique(product_ids), priced.basis.pricing_revision)
            .await?;
        if let Some(eligibility) = eligibility {
            self.remember(tenant, eligibility, &priced);
        }
        let eligible = priced.eligible;
        Ok(Some((assemble(priced, products), eligible)))
    }

    /// What prices each of `unique` (distinct ids): from the cache where it holds `revision`
    /// (the one just read), read for the rest.
    async fn products(
        &self,
        tenant: &TenantId,
        unique: &[String],
        revision: i64,
    ) -> Result<Vec<Arc<ProductPricing>>, RepoError> {
        let (mut found, missing) = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let current = cache.get(tenant).filter(|c| c.revision == revision);
            let mut found = Vec::with_capacity(unique.len());
            let mut missing = Vec::new();
            for id in unique {
                match current.and_then(|c| c.products.get(id)) {
                    Some(product) => found.push(Arc::clone(product)),
                    None => missing.push(id.clone()),
                }
            }
            (found, missing)
        };
        if missing.is_empty() {
            return Ok(found);
        }
        let read = self.read_products(tenant, &missing).await?;
        // Kept only if nothing that prices a product changed while it was read.
        if self.rules.pricing_revision(tenant).await? == revision {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = cache
                .entry(tenant.clone())
                .or_insert_with(|| CachedPricing {
                    revision,
                    products: HashMap::new(),
                });
            if entry.revision != revision || entry.products.len() >= PRODUCTS_PER_TENANT {
                entry.revision = revision;
                entry.products.clear();
            }
            for product in &read {
                entry
                    .products
                    .insert(product.facts.product_id.clone(), Arc::clone(product));
            }
        }
        found.extend(read);
        Ok(found)
    }

    /// Reads what prices each of `ids`. A product the catalogue does not know yet is priced on
    /// its id alone: product rules and base points still apply.
    async fn read_products(
        &self,
        tenant: &TenantId,
        ids: &[String],
    ) -> Result<Vec<Arc<ProductPricing>>, RepoError> {
        let facts_and_rules = async {
            let mut facts = self.catalog.product_facts(tenant, ids).await?;
            for id in ids {
                facts.entry(id.clone()).or_insert_with(|| ProductFacts {
                    product_id: id.clone(),
                    ..ProductFacts::default()
                });
            }
            let targets: Vec<RuleTarget> = facts
                .values()
                .flat_map(ProductFacts::targets)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let rules = self.rules.published_rules_for(tenant, &targets).await?;
            Ok::<_, RepoError>((facts, rules))
        };
        // The rules depend on the products' facts; base points are read alongside.
        let ((facts, rules), mut base_points) =
            tokio::try_join!(facts_and_rules, self.rules.base_points(tenant, ids))?;
        Ok(facts
            .into_values()
            .map(|facts| {
                let targets: BTreeSet<RuleTarget> = facts.targets().into_iter().collect();
                Arc::new(ProductPricing {
                    base_points: base_points.remove(&facts.product_id),
                    rules: rules
                        .iter()
                        .filter(|r| r.targets.iter().any(|t| targets.contains(t)))
                        .cloned()
                        .collect(),
                    facts,
                })
            })
            .collect())
    }
}

/// The distinct ids of `product_ids`, in order.
fn unique(product_ids: &[String]) -> Vec<String> {
    product_ids
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The client as priced from its read and what prices its products: each rule once.
fn assemble(priced: ClientPricing, products: Vec<Arc<ProductPricing>>) -> PricedClient {
    let mut facts = HashMap::with_capacity(products.len());
    let mut base_points = HashMap::new();
    let mut rules: BTreeMap<(String, u32), MultiplierRule> = BTreeMap::new();
    for product in products {
        for rule in &product.rules {
            rules
                .entry((rule.rule_id.clone(), rule.version))
                .or_insert_with(|| rule.clone());
        }
        if let Some(points) = &product.base_points {
            base_points.insert(product.facts.product_id.clone(), points.clone());
        }
        facts.insert(product.facts.product_id.clone(), product.facts.clone());
    }
    let book = PricingBook {
        rules: RuleIndex::new(rules.into_values().collect()),
        base_points,
        segment_rates: priced.segment_rates,
        client_segments: priced.client.segment_ids.iter().cloned().collect(),
    };
    (priced.client, facts, book)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use chrono::{NaiveDate, Utc};
    use rust_decimal::Decimal;

    use super::*;
    use crate::domain::rules::{RuleStatus, TargetKind};
    use crate::persistence::{
        ClientPricing, EarnBasis, MockCatalogRepository, MockRulesRepository,
    };

    fn rule(id: &str, product: &str) -> MultiplierRule {
        MultiplierRule {
            rule_id: id.into(),
            version: 1,
            status: RuleStatus::Published,
            name: id.into(),
            description: String::new(),
            targets: vec![RuleTarget {
                kind: TargetKind::Product,
                id: product.into(),
            }],
            factor: Decimal::TWO,
            valid_from: NaiveDate::from_ymd_opt(2026, 1, 1).expect("day"),
            valid_until: None,
            segment_ids: Vec::new(),
            channel: None,
        }
    }

    /// Pricing over mocks whose revision is `revision`; `reads` is called once per product read
    /// (with the ids) and may move the revision, as a concurrent writer would.
    fn pricing(
        revision: &Arc<AtomicI64>,
        reads: impl Fn(&[String]) + Send + Sync + 'static,
    ) -> (Pricing, Arc<Mutex<Vec<Vec<String>>>>) {
        let read_ids = Arc::new(Mutex::new(Vec::new()));
        let mut catalog = MockCatalogRepository::new();
        let seen = Arc::clone(&read_ids);
        catalog.expect_product_facts().returning(move |_, ids| {
            seen.lock().expect("ids").push(ids.to_vec());
            reads(ids);
            Ok(ids
                .iter()
                .filter(|id| id.as_str() != "UNKNOWN")
                .map(|id| {
                    let facts = ProductFacts {
                        product_id: id.clone(),
                        ..ProductFacts::default()
                    };
                    (id.clone(), facts)
                })
                .collect())
        });
        let mut rules = MockRulesRepository::new();
        let current = Arc::clone(revision);
        rules
            .expect_pricing_revision()
            .returning(move |_| Ok(current.load(Ordering::SeqCst)));
        rules.expect_published_rules_for().returning(|_, targets| {
            // "double" targets P1 and P2, "p2" targets P2 alone.
            let mut double = rule("double", "P1");
            double.targets.extend(rule("double", "P2").targets);
            Ok([double, rule("p2", "P2")]
                .into_iter()
                .filter(|r| r.targets.iter().any(|t| targets.contains(t)))
                .collect())
        });
        rules.expect_base_points().returning(|_, ids| {
            Ok(ids
                .iter()
                .filter(|id| id.as_str() == "P1")
                .map(|id| {
                    let day = NaiveDate::from_ymd_opt(2026, 1, 1).expect("day");
                    (id.clone(), EffectiveDated::new(vec![(day, Decimal::TEN)]))
                })
                .collect())
        });
        let current = Arc::clone(revision);
        // Every client agreed but org:disagreed; every one has an account but org:closed.
        rules.expect_priced_client().returning(move |_, id, probe| {
            Ok(Some(ClientPricing {
                client: ClientRecord {
                    client_id: id.into(),
                    name: "Org".into(),
                    status: "ACTIVE".into(),
                    has_account: id != "org:closed",
                    segment_ids: Vec::new(),
                    updated_at: Utc::now(),
                },
                segment_rates: HashMap::new(),
                basis: EarnBasis {
                    pricing_revision: current.load(Ordering::SeqCst),
                    client_revision: 1,
                },
                eligible: probe.map(|_| id != "org:disagreed"),
            }))
        });
        let pricing = Pricing::new(Arc::new(catalog), Arc::new(rules));
        (pricing, read_ids)
    }

    fn tenant() -> TenantId {
        TenantId::parse("t1").expect("tenant")
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_product_is_read_once_per_revision_and_again_when_it_moves() {
        let revision = Arc::new(AtomicI64::new(3));
        let (pricing, reads) = pricing(&revision, |_| {});
        let t = tenant();
        let first = pricing
            .book(&t, "org:a", &ids(&["P1", "P2", "P1"]))
            .await
            .expect("book")
            .expect("client");
        let again = pricing
            .book(&t, "org:a", &ids(&["P2", "P3", "UNKNOWN"]))
            .await
            .expect("book")
            .expect("client");
        // P2 came from the cache; P3 and the unknown product were read.
        assert_eq!(
            *reads.lock().expect("ids"),
            [ids(&["P1", "P2"]), ids(&["P3", "UNKNOWN"])]
        );
        assert_eq!(
            first.2.rules.len(),
            2,
            "each rule once, though two products share one"
        );
        assert_eq!(first.2.base_points.len(), 1);
        assert_eq!(again.2.rules.len(), 2, "both rules target P2, none P3");
        assert!(again.2.base_points.is_empty());
        assert!(again.1.contains_key("UNKNOWN"), "priced on its id alone");
        let cached = pricing
            .book(&t, "org:b", &ids(&["P1", "P2", "P3", "UNKNOWN"]))
            .await
            .expect("book")
            .expect("client");
        assert_eq!(
            reads.lock().expect("ids").len(),
            2,
            "all four from the cache"
        );
        assert_eq!(cached.2.rules.len(), 2);
        assert_eq!(cached.2.base_points.len(), 1);

        revision.store(4, Ordering::SeqCst);
        pricing
            .book(&t, "org:a", &ids(&["P1"]))
            .await
            .expect("book");
        assert_eq!(
            reads.lock().expect("ids").last(),
            Some(&ids(&["P1"])),
            "a new revision: read again"
        );
        pricing
            .book(
                &TenantId::parse("t2").expect("tenant"),
                "org:a",
                &ids(&["P1"]),
            )
            .await
            .expect("book");
        assert_eq!(
            reads.lock().expect("ids").len(),
            4,
            "another tenant's cache is its own"
        );
    }

    #[tokio::test]
    async fn what_was_read_while_the_revision_moved_is_not_kept() {
        let revision = Arc::new(AtomicI64::new(1));
        let moving = Arc::clone(&revision);
        // Every read is overtaken by a writer.
        let (pricing, reads) = pricing(&revision, move |_| {
            moving.fetch_add(1, Ordering::SeqCst);
        });
        let t = tenant();
        for _ in 0..2 {
            pricing
                .book(&t, "org:a", &ids(&["P1"]))
                .await
                .expect("book")
                .expect("client");
        }
        assert_eq!(reads.lock().expect("ids").len(), 2, "nothing was cached");
    }

    fn probe(day: u32) -> EligibilityProbe {
        EligibilityProbe {
            declaration_type_id: "D1".into(),
            at: NaiveDate::from_ymd_opt(2026, 3, day)
                .and_then(|d| d.and_hms_opt(23, 0, 0))
                .expect("instant")
                .and_utc(),
        }
    }

    #[tokio::test]
    async fn an_earns_client_is_priced_as_seen_only_at_the_probe_and_revision_it_was_read_at() {
        let revision = Arc::new(AtomicI64::new(5));
        let (pricing, reads) = pricing(&revision, |_| {});
        let t = tenant();
        let p1 = ids(&["P1"]);
        assert!(
            pricing.as_seen(&t, "org:a", &p1, probe(1)).is_none(),
            "never read"
        );
        for client in ["org:a", "org:closed", "org:disagreed"] {
            let (_, eligible) = pricing
                .book_and_eligibility(&t, client, &p1, probe(1))
                .await
                .expect("book")
                .expect("client");
            assert_eq!(eligible, client != "org:disagreed");
        }
        let (priced, basis) = pricing
            .as_seen(&t, "org:a", &ids(&["P1", "P1"]), probe(1))
            .expect("kept");
        assert_eq!(
            basis,
            EarnBasis {
                pricing_revision: 5,
                client_revision: 1
            }
        );
        assert_eq!(priced.0.client_id, "org:a");
        assert_eq!(priced.2.rules.len(), 1, "P1's rule");
        assert_eq!(priced.2.base_points.len(), 1, "P1's base points");
        assert_eq!(reads.lock().expect("ids").len(), 1, "read once");
        for (client, why) in [
            (
                "org:closed",
                "no account: an earn of it is decided from a read",
            ),
            ("org:disagreed", "not agreed: likewise"),
            ("org:b", "never read"),
        ] {
            assert!(
                pricing.as_seen(&t, client, &p1, probe(1)).is_none(),
                "{why}"
            );
        }
        assert!(
            pricing.as_seen(&t, "org:a", &p1, probe(2)).is_none(),
            "another day's agreement was not read"
        );
        assert!(
            pricing
                .as_seen(&t, "org:a", &ids(&["P2"]), probe(1))
                .is_none(),
            "a product not kept"
        );
        assert!(
            pricing
                .as_seen(
                    &TenantId::parse("t2").expect("tenant"),
                    "org:a",
                    &p1,
                    probe(1)
                )
                .is_none(),
            "another tenant's client"
        );

        // The products read at a newer revision: the client as kept no longer agrees with them.
        revision.store(6, Ordering::SeqCst);
        pricing
            .book(&t, "org:b", &p1)
            .await
            .expect("book")
            .expect("client");
        assert!(pricing.as_seen(&t, "org:a", &p1, probe(1)).is_none());
        pricing
            .book_and_eligibility(&t, "org:a", &p1, probe(1))
            .await
            .expect("book");
        let (_, basis) = pricing
            .as_seen(&t, "org:a", &p1, probe(1))
            .expect("read again");
        assert_eq!(basis.pricing_revision, 6);

        pricing
            .book_and_eligibility(&t, "org:a", &p1, probe(2))
            .await
            .expect("book");
        pricing.forget(&t, "org:a");
        for day in [1, 2] {
            assert!(
                pricing.as_seen(&t, "org:a", &p1, probe(day)).is_none(),
                "forgotten at every probe"
            );
        }
    }
}
