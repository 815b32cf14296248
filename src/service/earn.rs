//! Earning points from documents (DOMAIN.md §3). This part: previewing the points a cart or a
//! product list would earn for a client on a day, with the full breakdown; nothing is written.

use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::domain::access::Caller;
use crate::domain::calendar::day_of;
use crate::domain::clock::Clock;
use crate::domain::engine::{CalculationPolicy, DocumentCalculation, LineInput, calculate};
use crate::domain::rules::Channel;
use crate::domain::settings::TenantSettings;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::persistence::{DirectoryRepository, RepoError, SettingsRepository};
use crate::service::pricing::Pricing;

/// Lines per preview.
pub const MAX_PREVIEW_LINES: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum EarnError {
    /// → `INVALID_ARGUMENT`
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// → `NOT_FOUND`
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// A product and quantity to preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewItem {
    pub product_id: String,
    pub quantity: Decimal,
    pub channel: Channel,
}

/// A preview: the calculation, the day whose rules applied and the scale to show points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub calculation: DocumentCalculation,
    pub day: NaiveDate,
    pub points_scale: u32,
}

pub struct EarnService {
    pricing: Pricing,
    directory: Arc<dyn DirectoryRepository>,
    settings: Arc<dyn SettingsRepository>,
    clock: Arc<dyn Clock>,
}

impl EarnService {
    pub fn new(
        pricing: Pricing,
        directory: Arc<dyn DirectoryRepository>,
        settings: Arc<dyn SettingsRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            pricing,
            directory,
            settings,
            clock,
        }
    }

    /// The points the items would earn for the client on `day` (today when `None`).
    ///
    /// # Errors
    /// Bad items, an unknown client, or the database.
    #[tracing::instrument(skip_all, fields(tenant = %caller.tenant, client_id))]
    pub async fn preview(
        &self,
        caller: &Caller,
        client_id: &str,
        day: Option<NaiveDate>,
        items: &[PreviewItem],
    ) -> Result<Preview, EarnError> {
        check_items(items)?;
        let client = self
            .directory
            .client(&caller.tenant, client_id)
            .await?
            .ok_or_else(|| EarnError::NotFound(format!("client {client_id}")))?;
        let settings = self.settings.current(&caller.tenant).await?;
        let day = day.unwrap_or_else(|| day_of(settings.time_zone, self.clock.now()));
        let ids: Vec<String> = items.iter().map(|i| i.product_id.clone()).collect();
        let (facts, book) = self.pricing.book(&caller.tenant, &client, &ids).await?;
        let lines: Vec<LineInput> = items
            .iter()
            .zip(1_u32..)
            .map(|(item, line_no)| LineInput {
                line_no,
                product: facts[&item.product_id].clone(),
                quantity: item.quantity,
                channel: item.channel,
                order_number: None,
                pricing_date: day,
            })
            .collect();
        Ok(Preview {
            calculation: calculate(&lines, &book, policy(&settings)),
            day,
            points_scale: settings.points_scale,
        })
    }
}

/// The tenant's calculation choices.
pub fn policy(settings: &TenantSettings) -> CalculationPolicy {
    CalculationPolicy {
        points_scale: settings.points_scale,
        stacking_mode: settings.stacking_mode,
        offline_lines_earn: settings.offline_lines_earn,
    }
}

fn check_items(items: &[PreviewItem]) -> Result<(), Invalid> {
    let mut found = Vec::new();
    if items.is_empty() || items.len() > MAX_PREVIEW_LINES {
        found.push(FieldViolation::new(
            "lines",
            format!("must hold 1 to {MAX_PREVIEW_LINES} lines"),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if item.product_id.trim().is_empty() {
            found.push(FieldViolation::new(
                format!("lines[{i}].product_id"),
                "is required",
            ));
        }
        if item.quantity <= Decimal::ZERO {
            found.push(FieldViolation::new(
                format!("lines[{i}].quantity"),
                "must be greater than 0",
            ));
        }
    }
    Invalid::check(found)
}
