//! Tenant identity: every row and every call is scoped by one.

use std::fmt;

/// A tenant id as ONe passes it in `one-tenant`: 1 to 64 characters of `a-z`, `0-9`, `-`, `_`,
/// `.`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a tenant id: 1 to 64 of a-z 0-9 - _ . starting with a letter or digit")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// # Errors
    /// Empty, too long, or a character outside the allowed set.
    pub fn parse(text: &str) -> Result<Self, InvalidTenantId> {
        let valid = (1..=64).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            });
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidTenantId(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_lowercase_slugs() {
        assert!(TenantId::parse("demo").is_ok());
        assert!(TenantId::parse("acme-pl_2.eu").is_ok());
        for bad in ["", "Demo", "-x", "a b", "x/y", &"a".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }
}
