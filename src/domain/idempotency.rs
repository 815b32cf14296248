//! Idempotency of mutating calls: a request id names one operation with one payload.

/// What the first call with a request id left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_id: String,
    /// The RPC, e.g. "SettingsService/UpdateSettings".
    pub operation: String,
    /// A hash of the request payload.
    pub request_hash: String,
    /// What the first call produced (an id, a revision), to answer retries with.
    pub result_ref: String,
}

/// What to do with a call whose request id was seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The same call again: answer with the first result.
    SameRequest { result_ref: String },
    /// The id was used for another operation or payload.
    DifferentRequest,
}

impl IdempotencyRecord {
    /// Compares a new call with the recorded one.
    pub fn replay(&self, operation: &str, request_hash: &str) -> Replay {
        if self.operation == operation && self.request_hash == request_hash {
            Replay::SameRequest {
                result_ref: self.result_ref.clone(),
            }
        } else {
            Replay::DifferentRequest
        }
    }
}

/// Checks a caller's request id: 1 to 128 printable ASCII characters.
pub fn valid_request_id(request_id: &str) -> bool {
    (1..=128).contains(&request_id.len()) && request_id.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_replays_only_for_the_same_operation_and_payload() {
        let record = IdempotencyRecord {
            request_id: "r1".into(),
            operation: "op".into(),
            request_hash: "h".into(),
            result_ref: "3".into(),
        };
        assert_eq!(
            record.replay("op", "h"),
            Replay::SameRequest {
                result_ref: "3".into()
            }
        );
        assert_eq!(record.replay("op", "other"), Replay::DifferentRequest);
        assert_eq!(record.replay("other", "h"), Replay::DifferentRequest);
        assert!(valid_request_id("abc-123"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
    }
}
