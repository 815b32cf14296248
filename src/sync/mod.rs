//! Talking to the ONe core services: the gateway over their gRPC API (the only code that names
//! `one.core.v1` types).

pub mod gateway;
