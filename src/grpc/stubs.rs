//! Adapters of the services whose behaviour later work brings. Until then every RPC answers
//! UNIMPLEMENTED (the generated default), behind the same authentication as the rest.

use crate::proto::loyalty::v1 as pb;

#[derive(Debug, Default, Clone, Copy)]
pub struct SyncGrpc;
impl pb::sync_service_server::SyncService for SyncGrpc {}
