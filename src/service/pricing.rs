//! Loads what the calculation engine needs for one client and a set of products: the client,
//! the products' facts, base points, the published rules that target them in a date range, and
//! the client's segments with their rates. Shared by previews and by earning, so both price the
//! same way. Nothing of it waits for the client: every read starts at once, so a call waits for
//! the longest chain (products, their categories and labels, the rules), not for their sum.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::domain::directory::ClientRecord;
use crate::domain::engine::PricingBook;
use crate::domain::rules::{ProductFacts, RuleIndex, RuleTarget};
use crate::domain::tenant::TenantId;
use crate::persistence::{CatalogRepository, DirectoryRepository, RepoError, RulesRepository};

pub struct Pricing {
    directory: Arc<dyn DirectoryRepository>,
    catalog: Arc<dyn CatalogRepository>,
    rules: Arc<dyn RulesRepository>,
}

/// A client as priced: its record and the book of everything that prices its lines.
pub type PricedClient = (ClientRecord, HashMap<String, ProductFacts>, PricingBook);

impl Pricing {
    pub fn new(
        directory: Arc<dyn DirectoryRepository>,
        catalog: Arc<dyn CatalogRepository>,
        rules: Arc<dyn RulesRepository>,
    ) -> Self {
        Self {
            directory,
            catalog,
            rules,
        }
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
        let unique: Vec<String> = product_ids
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let facts_and_rules = async {
            let mut facts = self.catalog.product_facts(tenant, &unique).await?;
            for id in &unique {
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
        // The rules depend on the products' facts; the rest is read alongside.
        let (client, (facts, rules), base_points, (segments, segment_rates)) = tokio::try_join!(
            // The memberships come with their rates, below: one read of them, one snapshot.
            self.directory.client_row(tenant, client_id),
            facts_and_rules,
            self.rules.base_points(tenant, &unique),
            self.rules.client_segment_rates(tenant, client_id),
        )?;
        let Some(client) = client else {
            return Ok(None);
        };
        let book = PricingBook {
            rules: RuleIndex::new(rules),
            base_points,
            segment_rates,
            client_segments: segments.iter().cloned().collect(),
        };
        let client = ClientRecord {
            segment_ids: segments,
            ..client
        };
        Ok(Some((client, facts, book)))
    }
}
