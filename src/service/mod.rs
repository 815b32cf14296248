//! Use cases, one module per gRPC service. Each owns an error enum; none names tonic or the ORM.

pub mod access;
pub mod agreements;
pub mod coupons;
pub mod earn;
pub mod idempotency;
pub mod ledger;
pub mod pricing;
pub mod redeem;
pub mod rules;
pub mod settings;

/// A random id for something this service creates (rules, coupons): 16 characters of `a-z0-9`
/// from the thread's CSPRNG, so ids reveal nothing of order or count.
pub(crate) fn random_id() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(16)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}
