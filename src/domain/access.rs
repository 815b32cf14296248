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

/// What a caller may do, by group of actions. Every RPC requires exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    SettingsRead,
    SettingsManage,
    RulesRead,
    RulesManage,
    CouponsRead,
    CouponsManage,
    /// Processing invoices and corrections, previews and explanations of points.
    PointsEarn,
    PointsAdjust,
    /// Balances and histories.
    HistoryRead,
    /// Offers, redeeming, reservations, and reading redemptions.
    Redeem,
    /// Cancelling redemptions.
    RedemptionsManage,
    AgreementsRead,
    AgreementsManage,
    SyncManage,
}

names!(Permission {
    SettingsRead => "settings.read",
    SettingsManage => "settings.manage",
    RulesRead => "rules.read",
    RulesManage => "rules.manage",
    CouponsRead => "coupons.read",
    CouponsManage => "coupons.manage",
    PointsEarn => "points.earn",
    PointsAdjust => "points.adjust",
    HistoryRead => "history.read",
    Redeem => "redeem",
    RedemptionsManage => "redemptions.manage",
    AgreementsRead => "agreements.read",
    AgreementsManage => "agreements.manage",
    SyncManage => "sync.manage",
});

impl Permission {
    pub const ALL: [Self; 14] = [
        Self::SettingsRead,
        Self::SettingsManage,
        Self::RulesRead,
        Self::RulesManage,
        Self::CouponsRead,
        Self::CouponsManage,
        Self::PointsEarn,
        Self::PointsAdjust,
        Self::HistoryRead,
        Self::Redeem,
        Self::RedemptionsManage,
        Self::AgreementsRead,
        Self::AgreementsManage,
        Self::SyncManage,
    ];
}

/// The permissions each role grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePermissions {
    grants: std::collections::BTreeMap<String, std::collections::BTreeSet<Permission>>,
}

impl RolePermissions {
    /// From role → permission names; `"*"` grants every permission.
    ///
    /// # Errors
    /// An unknown permission name, in words.
    pub fn from_names(
        roles: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Self, String> {
        let mut grants = std::collections::BTreeMap::new();
        for (role, names) in roles {
            let mut set = std::collections::BTreeSet::new();
            for name in names {
                if name == "*" {
                    set.extend(Permission::ALL);
                } else {
                    set.insert(
                        Permission::parse(name)
                            .ok_or_else(|| format!("role {role}: unknown permission {name:?}"))?,
                    );
                }
            }
            grants.insert(role.clone(), set);
        }
        Ok(Self { grants })
    }

    /// Whether any of `roles` grants `permission`.
    pub fn allows(&self, roles: &[String], permission: Permission) -> bool {
        roles.iter().any(|role| {
            self.grants
                .get(role)
                .is_some_and(|granted| granted.contains(&permission))
        })
    }

    /// The roles defined.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.grants.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod permission_tests {
    use super::*;

    #[test]
    fn roles_grant_their_named_permissions_and_a_star_grants_all() {
        let names = std::collections::BTreeMap::from([
            ("admin".to_owned(), vec!["*".to_owned()]),
            (
                "auditor".to_owned(),
                vec!["history.read".to_owned(), "settings.read".to_owned()],
            ),
        ]);
        let roles = RolePermissions::from_names(&names).expect("roles");
        let admin = vec!["admin".to_owned()];
        let auditor = vec!["auditor".to_owned()];
        assert!(Permission::ALL.iter().all(|p| roles.allows(&admin, *p)));
        assert!(roles.allows(&auditor, Permission::HistoryRead));
        assert!(!roles.allows(&auditor, Permission::PointsAdjust));
        assert!(!roles.allows(&["nobody".to_owned()], Permission::HistoryRead));
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        let bad =
            std::collections::BTreeMap::from([("x".to_owned(), vec!["points.steal".to_owned()])]);
        assert!(RolePermissions::from_names(&bad).is_err());
    }
}
