//! Clients and their users as ONe describes them (synchronized from the core services).

use chrono::{DateTime, Utc};

use crate::domain::consent::{ClientFacts, UserFacts};

/// A client company (`org:`) or an individual (`ind:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: String,
    /// ACTIVE, BLOCKED or DELETED.
    pub status: String,
    pub has_account: bool,
    pub segment_ids: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

impl ClientRecord {
    /// ORGANISATION or INDIVIDUAL, from the id's prefix.
    pub fn kind(&self) -> &'static str {
        if self.client_id.starts_with("ind:") {
            "INDIVIDUAL"
        } else {
            "ORGANISATION"
        }
    }

    pub fn facts(&self) -> ClientFacts {
        ClientFacts {
            client_id: self.client_id.clone(),
            has_account: self.has_account,
        }
    }
}

/// A person of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: String,
    pub client_id: String,
    pub active: bool,
    /// When the user was deactivated; for an inactive user without it, the last update.
    pub deactivated_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl UserRecord {
    pub fn facts(&self) -> UserFacts {
        let deactivated_at = if self.active {
            self.deactivated_at
        } else {
            Some(self.deactivated_at.unwrap_or(self.updated_at))
        };
        UserFacts {
            user_id: self.user_id.clone(),
            client_id: self.client_id.clone(),
            deactivated_at,
        }
    }
}

/// A product of the tenant's catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    pub product_id: String,
    pub name: String,
    pub sku: String,
    /// The leaf category.
    pub category_id: Option<String>,
    pub label_ids: Vec<String>,
    pub manufacturer_id: Option<String>,
    pub is_ecommerce: bool,
    pub active: bool,
    pub updated_at: DateTime<Utc>,
}

/// A node of the category tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryRecord {
    pub category_id: String,
    pub parent_id: Option<String>,
    pub name: String,
}

/// An order placed in the ONe shop: its number makes invoice lines online, its date prices them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub order_number: String,
    pub order_id: String,
    pub client_id: String,
    pub order_date: DateTime<Utc>,
    pub status: String,
    /// A REMOVED order no longer counts as online.
    pub removed: bool,
    pub updated_at: DateTime<Utc>,
}

/// Every (category, ancestor-or-self, depth) of a tree given as child → parent. A cycle or a
/// missing parent ends a chain where it is detected.
pub fn category_closure<S: std::hash::BuildHasher>(
    parents: &std::collections::HashMap<String, Option<String>, S>,
) -> Vec<(String, String, u32)> {
    let mut pairs = Vec::new();
    for category in parents.keys() {
        let mut seen = std::collections::HashSet::new();
        let mut current = Some(category.clone());
        let mut depth = 0;
        while let Some(node) = current.filter(|n| seen.insert(n.clone())) {
            pairs.push((category.clone(), node.clone(), depth));
            depth += 1;
            current = parents.get(&node).cloned().flatten();
        }
    }
    pairs.sort();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closure_pairs_each_category_with_itself_and_every_ancestor_and_survives_cycles() {
        let parents: std::collections::HashMap<String, Option<String>> = [
            ("leaf", Some("mid")),
            ("mid", Some("root")),
            ("root", None),
            ("a", Some("b")),
            ("b", Some("a")),
        ]
        .into_iter()
        .map(|(c, p)| (c.to_owned(), p.map(str::to_owned)))
        .collect();
        let closure = category_closure(&parents);
        let of_leaf: Vec<(&str, u32)> = closure
            .iter()
            .filter(|p| p.0 == "leaf")
            .map(|p| (p.1.as_str(), p.2))
            .collect();
        assert_eq!(of_leaf, [("leaf", 0), ("mid", 1), ("root", 2)]);
        assert_eq!(
            closure.iter().filter(|p| p.0 == "a").count(),
            2,
            "the cycle a -> b -> a stops"
        );
    }

    #[test]
    fn an_inactive_user_without_a_deactivation_time_stops_counting_at_its_last_update() {
        let now = Utc::now();
        let user = UserRecord {
            user_id: "u".into(),
            client_id: "org:c".into(),
            active: false,
            deactivated_at: None,
            updated_at: now,
        };
        assert_eq!(user.facts().deactivated_at, Some(now));
        let client = ClientRecord {
            client_id: "ind:p".into(),
            name: String::new(),
            status: "ACTIVE".into(),
            has_account: true,
            segment_ids: vec![],
            updated_at: now,
        };
        assert_eq!(client.kind(), "INDIVIDUAL");
        assert!(!client.facts().can_participate());
    }
}
