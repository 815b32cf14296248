//! ONe Loyalty: the loyalty-points plugin service of the ONe B2B platform.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod mail;
pub mod persistence;
pub mod plugin;
pub mod proto;
pub mod service;
pub mod sim;
pub mod startup;
pub mod sync;
pub mod telemetry;
