//! Use cases, one module per gRPC service. Each owns an error enum; none names tonic or the ORM.

pub mod access;
pub mod agreements;
pub mod earn;
pub mod idempotency;
pub mod ledger;
pub mod pricing;
pub mod rules;
pub mod settings;
