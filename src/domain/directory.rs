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

#[cfg(test)]
mod tests {
    use super::*;

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
