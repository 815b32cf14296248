//! `SettingsService` adapter.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{prefix_fields, settings_patch, settings_to_proto};
use super::{caller, request_hash};
use crate::proto::loyalty::v1 as pb;
use crate::service::settings::{SettingsError, SettingsService, UpdateSettings};

pub struct SettingsGrpc {
    service: Arc<SettingsService>,
}

impl SettingsGrpc {
    pub fn new(service: Arc<SettingsService>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl pb::settings_service_server::SettingsService for SettingsGrpc {
    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let caller = caller(&request)?;
        let settings = self.service.get(&caller).await?;
        Ok(Response::new(pb::GetSettingsResponse {
            settings: Some(settings_to_proto(&settings)),
        }))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let patch = settings_patch(message.settings.as_ref(), message.update_mask.as_ref())
            .map_err(|e| super::status::invalid(&e))?;
        let command = UpdateSettings {
            request_id: message.request_id.clone(),
            request_hash: request_hash(&message),
            patch,
            expected_revision: message.expected_revision,
        };
        let settings = self
            .service
            .update(&caller, &command)
            .await
            .map_err(|err| match err {
                SettingsError::Invalid(found) => {
                    SettingsError::Invalid(prefix_fields(found, "settings."))
                }
                other => other,
            })?;
        Ok(Response::new(pb::UpdateSettingsResponse {
            settings: Some(settings_to_proto(&settings)),
        }))
    }
}
