use one_loyalty::config::{Overrides, Settings};
use one_loyalty::persistence::db;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::load(None, &Overrides { listen: None, database_url: std::env::args().nth(1) })?;
    let conn = db::connect(&settings.database).await?;
    db::migrate(&conn).await?;
    Ok(())
}
