//! `RedeemService` adapter: offers, redemptions and reservations.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{amount, day, page_position, page_size, page_token, timestamp};
use super::coupons::coupon_to_proto;
use super::status::invalid;
use super::{caller, client_in_reach, request_key, user_in_reach, visible};
use crate::domain::access::Caller;
use crate::domain::points::format_points;
use crate::domain::redemption::{Redemption, RedemptionStatus, Reservation, ReservationStatus};
use crate::domain::validation::{FieldViolation, Invalid};
use crate::persistence::RedemptionFilter;
use crate::proto::loyalty::v1 as pb;
use crate::service::redeem::{RedeemRequest, RedeemService, ReserveRequest};

type Reply<T> = Result<Response<T>, Status>;

pub struct RedeemGrpc {
    service: Arc<RedeemService>,
}

impl RedeemGrpc {
    pub fn new(service: Arc<RedeemService>) -> Self {
        Self { service }
    }

    async fn redemption_reply(
        &self,
        caller: &Caller,
        redemption: &Redemption,
    ) -> Result<pb::Redemption, Status> {
        let scale = self.service.points_scale(caller).await?;
        Ok(redemption_to_proto(redemption, scale))
    }

    /// Before a change by id: a record of another client answers as missing to a call acting
    /// for one client.
    async fn reservation_in_reach(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        if caller.acting_for.is_some() {
            let reservation = self.service.reservation(caller, id).await?;
            visible(caller, &reservation.client_id, &format!("reservation {id}"))?;
        }
        Ok(())
    }

    async fn redemption_in_reach(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        if caller.acting_for.is_some() {
            let redemption = self.service.redemption(caller, id).await?;
            visible(caller, &redemption.client_id, &format!("redemption {id}"))?;
        }
        Ok(())
    }

    async fn reservation_reply(
        &self,
        caller: &Caller,
        reservation: &Reservation,
    ) -> Result<pb::Reservation, Status> {
        let scale = self.service.points_scale(caller).await?;
        Ok(reservation_to_proto(reservation, scale))
    }
}

fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

fn redemption_to_proto(r: &Redemption, scale: u32) -> pb::Redemption {
    pb::Redemption {
        redemption_id: r.redemption_id.clone(),
        client_id: r.client_id.clone(),
        user_id: r.user_id.clone().unwrap_or_default(),
        coupon_id: r.coupon_id.clone(),
        coupon_name: r.coupon_name.clone(),
        points: format_points(r.points, scale),
        status: match r.status {
            RedemptionStatus::Pending => pb::RedemptionStatus::Pending,
            RedemptionStatus::Issued => pb::RedemptionStatus::Issued,
            RedemptionStatus::Failed => pb::RedemptionStatus::Failed,
            RedemptionStatus::Cancelled => pb::RedemptionStatus::Cancelled,
        } as i32,
        code: r.code.clone().unwrap_or_default(),
        valid_until: r.valid_until.to_string(),
        use_event_id: r.use_event_id.map(|id| id.to_string()).unwrap_or_default(),
        refund_event_id: r
            .refund_event_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        reason: r.reason.clone().unwrap_or_default(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        request_id: r.request_id.clone(),
    }
}

fn reservation_to_proto(r: &Reservation, scale: u32) -> pb::Reservation {
    pb::Reservation {
        reservation_id: r.reservation_id.clone(),
        client_id: r.client_id.clone(),
        user_id: r.user_id.clone().unwrap_or_default(),
        basket_id: r.basket_id.clone(),
        points: format_points(r.points, scale),
        status: match r.status {
            ReservationStatus::Held => pb::ReservationStatus::Held,
            ReservationStatus::Committed => pb::ReservationStatus::Committed,
            ReservationStatus::Released => pb::ReservationStatus::Released,
            ReservationStatus::Expired => pb::ReservationStatus::Expired,
        } as i32,
        expires_at: Some(timestamp(r.expires_at)),
        order_number: r.order_number.clone().unwrap_or_default(),
        use_event_id: r.use_event_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(r.created_at)),
        settled_at: r.settled_at.map(timestamp),
    }
}

fn status_filter(value: i32) -> Result<Option<RedemptionStatus>, FieldViolation> {
    match pb::RedemptionStatus::try_from(value) {
        Ok(pb::RedemptionStatus::Unspecified) => Ok(None),
        Ok(pb::RedemptionStatus::Pending) => Ok(Some(RedemptionStatus::Pending)),
        Ok(pb::RedemptionStatus::Issued) => Ok(Some(RedemptionStatus::Issued)),
        Ok(pb::RedemptionStatus::Failed) => Ok(Some(RedemptionStatus::Failed)),
        Ok(pb::RedemptionStatus::Cancelled) => Ok(Some(RedemptionStatus::Cancelled)),
        Err(_) => Err(FieldViolation::new(
            "status",
            format!("{value} is not a redemption status"),
        )),
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
        let client_id = client_in_reach(&caller, &m.client_id)?;
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

    async fn redeem_coupon(
        &self,
        request: Request<pb::RedeemCouponRequest>,
    ) -> Reply<pb::RedeemCouponResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let redemption = self
            .service
            .redeem(
                &caller,
                &request_key(&m.request_id, &m),
                &RedeemRequest {
                    client_id: client_in_reach(&caller, &m.client_id)?,
                    coupon_id: m.coupon_id.trim().to_owned(),
                    user_id: user_in_reach(&caller, &m.user_id)?,
                },
            )
            .await?;
        Ok(Response::new(pb::RedeemCouponResponse {
            redemption: Some(self.redemption_reply(&caller, &redemption).await?),
        }))
    }

    async fn get_redemption(
        &self,
        request: Request<pb::GetRedemptionRequest>,
    ) -> Reply<pb::GetRedemptionResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let redemption = self
            .service
            .redemption(&caller, m.redemption_id.trim())
            .await?;
        visible(
            &caller,
            &redemption.client_id,
            &format!("redemption {}", m.redemption_id.trim()),
        )?;
        Ok(Response::new(pb::GetRedemptionResponse {
            redemption: Some(self.redemption_reply(&caller, &redemption).await?),
        }))
    }

    async fn list_redemptions(
        &self,
        request: Request<pb::ListRedemptionsRequest>,
    ) -> Reply<pb::ListRedemptionsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let mut found = Vec::new();
        let before = page_position(&m.page_token)
            .map_err(|v| found.push(v))
            .ok()
            .flatten();
        let status = status_filter(m.status)
            .map_err(|v| found.push(v))
            .ok()
            .flatten();
        if !found.is_empty() {
            return Err(invalid(&Invalid(found)));
        }
        let filter = RedemptionFilter {
            client_id: optional(&client_in_reach(&caller, &m.client_id)?),
            coupon_id: optional(&m.coupon_id),
            status,
        };
        let (page, next) = self
            .service
            .redemptions(&caller, &filter, before, page_size(m.page_size))
            .await?;
        let scale = self.service.points_scale(&caller).await?;
        Ok(Response::new(pb::ListRedemptionsResponse {
            redemptions: page.iter().map(|r| redemption_to_proto(r, scale)).collect(),
            next_page_token: next.map(|p| page_token(&p)).unwrap_or_default(),
        }))
    }

    async fn cancel_redemption(
        &self,
        request: Request<pb::CancelRedemptionRequest>,
    ) -> Reply<pb::CancelRedemptionResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        self.redemption_in_reach(&caller, m.redemption_id.trim())
            .await?;
        let redemption = self
            .service
            .cancel(
                &caller,
                &request_key(&m.request_id, &m),
                m.redemption_id.trim(),
                &m.reason,
            )
            .await?;
        Ok(Response::new(pb::CancelRedemptionResponse {
            redemption: Some(self.redemption_reply(&caller, &redemption).await?),
        }))
    }

    async fn reserve_points(
        &self,
        request: Request<pb::ReservePointsRequest>,
    ) -> Reply<pb::ReservePointsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let points = amount("points", &m.points).map_err(|v| invalid(&Invalid(vec![v])))?;
        let reservation = self
            .service
            .reserve(
                &caller,
                &request_key(&m.request_id, &m),
                &ReserveRequest {
                    client_id: client_in_reach(&caller, &m.client_id)?,
                    basket_id: m.basket_id.trim().to_owned(),
                    points,
                    user_id: user_in_reach(&caller, &m.user_id)?,
                },
            )
            .await?;
        Ok(Response::new(pb::ReservePointsResponse {
            reservation: Some(self.reservation_reply(&caller, &reservation).await?),
        }))
    }

    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> Reply<pb::CommitReservationResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        self.reservation_in_reach(&caller, m.reservation_id.trim())
            .await?;
        let reservation = self
            .service
            .commit(
                &caller,
                &request_key(&m.request_id, &m),
                m.reservation_id.trim(),
                &m.order_number,
            )
            .await?;
        Ok(Response::new(pb::CommitReservationResponse {
            reservation: Some(self.reservation_reply(&caller, &reservation).await?),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Reply<pb::ReleaseReservationResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        self.reservation_in_reach(&caller, m.reservation_id.trim())
            .await?;
        let reservation = self
            .service
            .release(
                &caller,
                &request_key(&m.request_id, &m),
                m.reservation_id.trim(),
            )
            .await?;
        Ok(Response::new(pb::ReleaseReservationResponse {
            reservation: Some(self.reservation_reply(&caller, &reservation).await?),
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Reply<pb::GetReservationResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let reservation = self
            .service
            .reservation(&caller, m.reservation_id.trim())
            .await?;
        visible(
            &caller,
            &reservation.client_id,
            &format!("reservation {}", m.reservation_id.trim()),
        )?;
        Ok(Response::new(pb::GetReservationResponse {
            reservation: Some(self.reservation_reply(&caller, &reservation).await?),
        }))
    }
}
