//! The only SeaORM code: repository traits over domain types, their SeaORM implementations, the
//! generated entities and the classification of database errors.

pub mod db;
pub mod error;
