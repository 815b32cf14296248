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
    /// The front office acting for one client's user: the call reaches only that client.
    pub acting_for: Option<ActingFor>,
}

/// The client, and its user, a front-office call acts for (metadata `one-client-id` and
/// `one-user-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingFor {
    pub client_id: String,
    pub user_id: String,
}

/// The role of the ONe front office: its calls must say which client's user they act for.
pub const FRONT_OFFICE_ROLE: &str = "front-office";

impl Caller {
    /// The client a request is about. Acting for a client, an empty `requested` means that
    /// client and any other is refused.
    ///
    /// # Errors
    /// Why the call may not reach `requested`.
    pub fn client_for(&self, requested: &str) -> Result<String, String> {
        let requested = requested.trim();
        match &self.acting_for {
            None => Ok(requested.to_owned()),
            Some(scope) if requested.is_empty() || requested == scope.client_id => {
                Ok(scope.client_id.clone())
            }
            Some(scope) => Err(format!(
                "this call acts for client {} and cannot reach client {requested}",
                scope.client_id
            )),
        }
    }

    /// Whether a record of `client_id` is within the caller's reach; when not, the call answers
    /// as if the record did not exist.
    pub fn may_see(&self, client_id: &str) -> bool {
        self.acting_for
            .as_ref()
            .is_none_or(|scope| scope.client_id == client_id)
    }

    /// The user to record on what the call causes: the acting user, or the one requested.
    ///
    /// # Errors
    /// A requested user other than the acting one.
    pub fn user_for(&self, requested: &str) -> Result<Option<String>, String> {
        let requested = requested.trim();
        match &self.acting_for {
            None => Ok(Some(requested.to_owned()).filter(|u| !u.is_empty())),
            Some(scope) if requested.is_empty() || requested == scope.user_id => {
                Ok(Some(scope.user_id.clone()))
            }
            Some(scope) => Err(format!(
                "this call acts for user {} and cannot act for user {requested}",
                scope.user_id
            )),
        }
    }
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
    fn a_front_office_call_reaches_only_its_client_and_user() {
        let mut caller = Caller {
            tenant: TenantId::parse("demo").expect("tenant"),
            key_id: "k".into(),
            roles: vec![FRONT_OFFICE_ROLE.into()],
            acting_for: Some(ActingFor {
                client_id: "org:a".into(),
                user_id: "u-a".into(),
            }),
        };
        assert_eq!(caller.client_for(""), Ok("org:a".into()));
        assert_eq!(caller.client_for(" org:a "), Ok("org:a".into()));
        assert!(caller.client_for("org:b").is_err());
        assert!(caller.may_see("org:a") && !caller.may_see("org:b"));
        assert_eq!(caller.user_for(""), Ok(Some("u-a".into())));
        assert!(caller.user_for("u-b").is_err());
        caller.acting_for = None;
        assert_eq!(caller.client_for("org:b"), Ok("org:b".into()));
        assert!(caller.may_see("org:b"));
        assert_eq!(caller.user_for(""), Ok(None));
    }

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
