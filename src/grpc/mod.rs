//! Thin gRPC adapters: decode, call the service, encode. `status.rs` is the only place an error
//! becomes a `tonic::Status`; `convert.rs` turns protos into domain types.

pub mod agreements;
pub mod auth;
pub mod convert;
pub mod coupons;
pub mod earn;
#[cfg(test)]
mod fuzz_tests;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod permissions;
pub mod redeem;
pub mod rules;
pub mod settings;
pub mod status;
pub mod sync;

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::domain::access::Caller;

/// The caller the auth layer attached to the request.
///
/// # Errors
/// UNAUTHENTICATED when the layer did not run (a wiring mistake, never expected).
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// A hash of a request message, to tell a retry from a different call with the same request id.
pub fn request_hash<M: Message>(message: &M) -> String {
    hex::encode(Sha256::digest(message.encode_to_vec()))
}

/// The identity of a mutating call: its request id and the hash of the whole message.
pub fn request_key<M: Message>(
    request_id: &str,
    message: &M,
) -> crate::service::idempotency::RequestKey {
    crate::service::idempotency::RequestKey {
        request_id: request_id.to_owned(),
        request_hash: request_hash(message),
    }
}

/// The client a request is about, within the caller's reach (an empty name means the client a
/// front-office call acts for).
///
/// # Errors
/// `PERMISSION_DENIED` for another client.
pub fn client_in_reach(caller: &Caller, requested: &str) -> Result<String, Status> {
    caller
        .client_for(requested)
        .map_err(Status::permission_denied)
}

/// The user to record on what a call causes.
///
/// # Errors
/// `PERMISSION_DENIED` for a user other than the one a front-office call acts for.
pub fn user_in_reach(caller: &Caller, requested: &str) -> Result<Option<String>, Status> {
    caller
        .user_for(requested)
        .map_err(Status::permission_denied)
}

/// A record of `client_id` answers as missing when it is out of the caller's reach, so that a
/// front office cannot learn what exists for other clients: `what` names it as the services
/// name a record that does not exist, and the answer is the same word for word.
///
/// # Errors
/// `NOT_FOUND`.
pub fn visible(caller: &Caller, client_id: &str, what: &str) -> Result<(), Status> {
    if caller.may_see(client_id) {
        Ok(())
    } else {
        Err(Status::not_found(format!("{what} not found")))
    }
}
