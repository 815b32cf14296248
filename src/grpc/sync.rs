//! `SyncService` adapter: trigger and status of the synchronization with ONe core.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::status::invalid;
use super::{caller, request_key};
use crate::domain::sync::SyncStream;
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;
use crate::service::import::{ImportFormat, ImportService, MAX_IMPORT_BYTES};
use crate::service::sync::SyncService;

type Reply<T> = Result<Response<T>, Status>;

pub struct SyncGrpc {
    service: Arc<SyncService>,
    import: Arc<ImportService>,
}

impl SyncGrpc {
    pub fn new(service: Arc<SyncService>, import: Arc<ImportService>) -> Self {
        Self { service, import }
    }
}

fn stream_from_proto(value: i32, field: &str) -> Result<SyncStream, FieldViolation> {
    let stream = match pb::SyncStream::try_from(value) {
        Ok(pb::SyncStream::Products) => SyncStream::Products,
        Ok(pb::SyncStream::Clients) => SyncStream::Clients,
        Ok(pb::SyncStream::Users) => SyncStream::Users,
        Ok(pb::SyncStream::Segments) => SyncStream::Segments,
        Ok(pb::SyncStream::Orders) => SyncStream::Orders,
        Ok(pb::SyncStream::Documents) => SyncStream::Documents,
        Ok(pb::SyncStream::Declarations) => SyncStream::Declarations,
        Ok(pb::SyncStream::CouponPools) => SyncStream::CouponPools,
        _ => {
            return Err(FieldViolation::new(
                field,
                format!("{value} is not a synchronization stream"),
            ));
        }
    };
    Ok(stream)
}

fn stream_to_proto(stream: SyncStream) -> pb::SyncStream {
    match stream {
        SyncStream::Products => pb::SyncStream::Products,
        SyncStream::Clients => pb::SyncStream::Clients,
        SyncStream::Users => pb::SyncStream::Users,
        SyncStream::Segments => pb::SyncStream::Segments,
        SyncStream::Orders => pb::SyncStream::Orders,
        SyncStream::Documents => pb::SyncStream::Documents,
        SyncStream::Declarations => pb::SyncStream::Declarations,
        SyncStream::CouponPools => pb::SyncStream::CouponPools,
    }
}

fn streams_from_proto(values: &[i32]) -> Result<Vec<SyncStream>, Status> {
    let mut found = Vec::new();
    let streams: Vec<SyncStream> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            stream_from_proto(*v, &format!("streams[{i}]"))
                .map_err(|e| found.push(e))
                .ok()
        })
        .collect();
    if found.is_empty() {
        Ok(streams)
    } else {
        Err(invalid(&Invalid(found)))
    }
}

#[tonic::async_trait]
impl pb::sync_service_server::SyncService for SyncGrpc {
    async fn trigger_sync(
        &self,
        request: Request<pb::TriggerSyncRequest>,
    ) -> Reply<pb::TriggerSyncResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        // A trigger is safe to repeat: a retry schedules runs that find nothing new.
        let _ = request_key(&m.request_id, &m);
        let streams = streams_from_proto(&m.streams)?;
        let scheduled = self
            .service
            .trigger(&caller, &streams, m.full_resync)
            .await?;
        Ok(Response::new(pb::TriggerSyncResponse {
            scheduled: scheduled
                .into_iter()
                .map(|s| stream_to_proto(s) as i32)
                .collect(),
        }))
    }

    async fn get_sync_status(
        &self,
        request: Request<pb::GetSyncStatusRequest>,
    ) -> Reply<pb::GetSyncStatusResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let streams = streams_from_proto(&m.streams)?;
        let now = self.service.now();
        let states = self.service.status(&caller, &streams).await?;
        Ok(Response::new(pb::GetSyncStatusResponse {
            streams: states
                .into_iter()
                .map(|(state, running)| pb::StreamStatus {
                    stream: stream_to_proto(state.stream) as i32,
                    lag_seconds: state
                        .last_success_at
                        .map_or(0, |_| state.lag_seconds(now, now)),
                    cursor: state.cursor,
                    last_success_at: state.last_success_at.map(timestamp),
                    last_attempt_at: state.last_attempt_at.map(timestamp),
                    last_error: state.last_error.unwrap_or_default(),
                    items_synced: state.items_synced,
                    running,
                })
                .collect(),
        }))
    }

    async fn import_documents(
        &self,
        request: Request<tonic::Streaming<pb::ImportDocumentsRequest>>,
    ) -> Reply<pb::ImportDocumentsResponse> {
        use pb::import_documents_request::Part;
        let caller = caller(&request)?;
        let mut parts = request.into_inner();
        let Some(Part::Header(header)) = parts.message().await?.and_then(|m| m.part) else {
            return Err(invalid(&Invalid::field(
                "header",
                "the first message must be the header",
            )));
        };
        let format = match pb::ImportFormat::try_from(header.format) {
            Ok(pb::ImportFormat::Csv) => ImportFormat::Csv,
            Ok(pb::ImportFormat::JsonLines) => ImportFormat::JsonLines,
            _ => {
                return Err(invalid(&Invalid::field(
                    "header.format",
                    "must be IMPORT_FORMAT_CSV or IMPORT_FORMAT_JSON_LINES",
                )));
            }
        };
        let mut bytes = Vec::new();
        while let Some(message) = parts.message().await? {
            match message.part {
                Some(Part::Chunk(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_IMPORT_BYTES {
                        return Err(invalid(&Invalid::field(
                            "chunk",
                            format!("the file is larger than {MAX_IMPORT_BYTES} bytes"),
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Some(Part::Header(_)) => {
                    return Err(invalid(&Invalid::field("header", "is sent once, first")));
                }
                None => {}
            }
        }
        let report = self
            .import
            .import(&caller, &header.request_id, format, &bytes)
            .await?;
        Ok(Response::new(pb::ImportDocumentsResponse {
            rows_accepted: report.rows_accepted,
            rows_rejected: report.rejected.len() as u64,
            rejected: report
                .rejected
                .into_iter()
                .map(|r| pb::RejectedRow {
                    line: r.line,
                    reason: r.reason,
                })
                .collect(),
            document_ids: report.document_ids,
        }))
    }
}
