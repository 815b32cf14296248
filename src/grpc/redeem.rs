//! `RedeemService` adapter: `ListOffers` for now; the other RPCs answer UNIMPLEMENTED (the
//! generated defaults) until redemption lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{day, page_position, page_size, page_token};
use super::coupons::coupon_to_proto;
use super::status::invalid;
use crate::domain::points::format_points;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;
use crate::service::redeem::RedeemService;

pub struct RedeemGrpc {
    service: Arc<RedeemService>,
}

impl RedeemGrpc {
    pub fn new(service: Arc<RedeemService>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl pb::redeem_service_server::RedeemService for RedeemGrpc {
    async fn list_offers(
        &self,
        request: Request<pb::ListOffersRequest>,
    ) -> Result<Response<pb::ListOffersResponse>, Status> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let mut found = Vec::new();
        let client_id = m.client_id.trim().to_owned();
        if client_id.is_empty() {
            found.push(FieldViolation::new("client_id", "is required"));
        }
        let date = (!m.date.is_empty())
            .then(|| day("date", &m.date).map_err(|v| found.push(v)).ok())
            .flatten();
        let after = page_position(&m.page_token)
            .map_err(|v| found.push(v))
            .ok()
            .flatten();
        if !found.is_empty() {
            return Err(invalid(&Invalid(found)));
        }
        let offers = self
            .service
            .offers(
                &caller,
                &client_id,
                date,
                m.affordable_only,
                after,
                page_size(m.page_size),
            )
            .await?;
        Ok(Response::new(pb::ListOffersResponse {
            offers: offers
                .offers
                .iter()
                .map(|(coupon, view)| pb::Offer {
                    coupon: Some(coupon_to_proto(coupon)),
                    affordable: view.affordable,
                    remaining_stock: view.remaining_stock,
                    remaining_for_client: view.remaining_for_client,
                })
                .collect(),
            next_page_token: offers.next.map(|p| page_token(&p)).unwrap_or_default(),
            available_points: format_points(offers.available, offers.points_scale),
        }))
    }
}
