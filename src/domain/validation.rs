//! Field violations: how every layer reports bad input, field by field.

use std::fmt;

/// One bad field: its path in the request ("`settings.points_scale`") and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// A request refused for the violations it lists (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Invalid(pub Vec<FieldViolation>);

impl Invalid {
    /// One violation.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self(vec![FieldViolation::new(field, description)])
    }

    /// `Ok` when nothing was found.
    ///
    /// # Errors
    /// The violations, when there are any.
    pub fn check(found: Vec<FieldViolation>) -> Result<(), Self> {
        if found.is_empty() {
            Ok(())
        } else {
            Err(Self(found))
        }
    }
}

/// Checks that a number lies in an inclusive range, recording a violation if not.
pub fn check_range(found: &mut Vec<FieldViolation>, field: &str, value: u32, min: u32, max: u32) {
    if !(min..=max).contains(&value) {
        found.push(FieldViolation::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
}
