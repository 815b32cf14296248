//! Loads what the calculation engine needs for one client and a set of products: their facts,
//! base points, the published rules that target them in a date range, and the client's segment
//! rates. Shared by previews and by earning, so both price the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::domain::directory::ClientRecord;
use crate::domain::engine::PricingBook;
use crate::domain::rules::{ProductFacts, RuleIndex, RuleTarget};
use crate::domain::tenant::TenantId;
use crate::persistence::{CatalogRepository, RepoError, RulesRepository};

pub struct Pricing {
    catalog: Arc<dyn CatalogRepository>,
    rules: Arc<dyn RulesRepository>,
}

impl Pricing {
    pub fn new(catalog: Arc<dyn CatalogRepository>, rules: Arc<dyn RulesRepository>) -> Self {
        Self { catalog, rules }
    }

    /// The facts of every product (a product the catalogue does not know yet is priced on its id
    /// alone: product rules and base points still apply) and the book: every published rule
    /// that targets them (the engine judges each rule's window per line), their base points and
    /// the client's segment rates.
    ///
    /// # Errors
    /// The database.
    pub async fn book(
        &self,
        tenant: &TenantId,
        client: &ClientRecord,
        product_ids: &[String],
    ) -> Result<(HashMap<String, ProductFacts>, PricingBook), RepoError> {
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
        let ((facts, rules), base_points, segment_rates) = tokio::try_join!(
            facts_and_rules,
            self.rules.base_points(tenant, &unique),
            self.rules
                .segment_rates(tenant, Some(client.segment_ids.clone())),
        )?;
        let book = PricingBook {
            rules: RuleIndex::new(rules),
            base_points,
            segment_rates,
            client_segments: client.segment_ids.iter().cloned().collect(),
        };
        Ok((facts, book))
    }
}
