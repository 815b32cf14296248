//! Use cases, one module per gRPC service. Each owns an error enum; none names tonic or the ORM.

pub mod access;
pub mod agreements;
pub mod idempotency;
pub mod ledger;
pub mod rules;
pub mod settings;
