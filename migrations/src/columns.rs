//! Column and index builders shared by the migrations, so that every table spells a tenant id,
//! an amount of points or an instant the same way.

use sea_orm_migration::prelude::*;

// Amount columns (points, quantities, factors, rates) hold minor units at the storage scale of
// the service's domain (4 fractional digits: 1.5 points is stored as 15000).

fn column(name: &str) -> ColumnDef {
    ColumnDef::new(Alias::new(name))
}

/// The tenant id, part of every key.
pub fn tenant() -> ColumnDef {
    id("tenant_id")
}

/// A required identifier (ONe ids, our own ids, codes).
pub fn id(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.string_len(128).not_null();
    col
}

/// An optional identifier.
pub fn opt_id(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.string_len(128).null();
    col
}

/// A short required label: a status, a kind, an enum name.
pub fn label(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.string_len(32).not_null();
    col
}

/// An optional short label.
pub fn opt_label(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.string_len(32).null();
    col
}

/// Required free text.
pub fn text(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.text().not_null();
    col
}

/// Optional free text.
pub fn opt_text(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.text().null();
    col
}

/// An exact amount in minor units at [`STORAGE_SCALE`], required, 0 by default.
pub fn amount(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.big_integer().not_null().default(0);
    col
}

/// An optional exact amount in minor units.
pub fn opt_amount(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.big_integer().null();
    col
}

/// A required whole number (counts, versions, settings).
pub fn int(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.integer().not_null().default(0);
    col
}

/// An optional whole number.
pub fn opt_int(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.integer().null();
    col
}

/// A required 64-bit reference to a surrogate id (ledger events).
pub fn big(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.big_integer().not_null();
    col
}

/// An optional 64-bit reference.
pub fn opt_big(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.big_integer().null();
    col
}

/// A surrogate, database-assigned, ever-increasing id.
pub fn serial(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.big_integer().not_null().auto_increment().primary_key();
    col
}

/// A required boolean.
pub fn flag(name: &str, default: bool) -> ColumnDef {
    let mut col = column(name);
    col.boolean().not_null().default(default);
    col
}

/// A required instant.
pub fn instant(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.timestamp_with_time_zone().not_null();
    col
}

/// An optional instant.
pub fn opt_instant(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.timestamp_with_time_zone().null();
    col
}

/// A required calendar day.
pub fn day(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.date().not_null();
    col
}

/// An optional calendar day.
pub fn opt_day(name: &str) -> ColumnDef {
    let mut col = column(name);
    col.date().null();
    col
}

/// A table built from columns, with the primary key over `key`.
pub fn table(name: &str, columns: Vec<ColumnDef>, key: &[&str]) -> TableCreateStatement {
    let mut stmt = Table::create();
    stmt.table(Alias::new(name));
    for mut col in columns {
        stmt.col(&mut col);
    }
    if !key.is_empty() {
        let mut pk = Index::create();
        for col in key {
            pk.col(Alias::new(*col));
        }
        stmt.primary_key(&mut pk);
    }
    stmt.clone()
}

/// A secondary index; `unique` makes it a constraint.
pub fn index(table: &str, name: &str, columns: &[&str], unique: bool) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(Alias::new(table));
    for col in columns {
        stmt.col(Alias::new(*col));
    }
    if unique {
        stmt.unique();
    }
    stmt.clone()
}

/// Creates the tables and then their indexes.
pub async fn create_all(
    manager: &SchemaManager<'_>,
    tables: Vec<TableCreateStatement>,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    for stmt in tables {
        manager.create_table(stmt).await?;
    }
    for stmt in indexes {
        manager.create_index(stmt).await?;
    }
    Ok(())
}

/// Drops tables, newest first.
pub async fn drop_all(manager: &SchemaManager<'_>, names: &[&str]) -> Result<(), DbErr> {
    for name in names.iter().rev() {
        manager
            .drop_table(Table::drop().table(Alias::new(*name)).to_owned())
            .await?;
    }
    Ok(())
}
