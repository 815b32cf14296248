//! End-to-end and repository contract tests: one binary, every test on SQLite and, when
//! `LOYALTY_TEST_DATABASE_URL` is set, on PostgreSQL (a fresh schema per test).

mod helpers;

mod agreements;
mod auth;
mod contract;
mod coupons;
mod crash;
mod documents;
mod earn;
mod fakes;
mod faults;
mod front_office;
mod gdpr;
mod ledger;
mod limits;
mod model;
mod outbox;
mod permissions;
mod plugin;
mod redeem;
mod rules;
mod server;
mod settings;
mod statistics;
mod sync;
mod tls;
