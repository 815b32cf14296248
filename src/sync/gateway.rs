//! The tonic client of the ONe core services. A lazily connected channel with connect and
//! request timeouts; the tenant travels as `one-tenant` metadata and the configured token as a
//! bearer credential.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::config::CoreSettings;
use crate::domain::consent::{AgreementVersion, ConsentAction, ConsentEvent};
use crate::domain::directory::{
    CategoryRecord, ClientRecord, OrderRecord, ProductRecord, UserRecord,
};
use crate::domain::documents::{CorrectionType, Document, DocumentKind, DocumentLine};
use crate::domain::redemption::DeliveryOutcome;
use crate::domain::settings::SyncDocumentKind;
use crate::domain::sync::{
    CouponPoolRecord, SegmentRecord, SnapshotPage, SyncBatch, SyncChange, SyncStream,
};
use crate::domain::tenant::TenantId;
use crate::proto::core::v1 as core;
use crate::service::promotions::{PoolPage, PromotionsGateway};
use crate::service::sync::{CoreGateway, FeedFilter, GatewayError};
use core::client_service_client::ClientServiceClient;
use core::declaration_service_client::DeclarationServiceClient;
use core::document_service_client::DocumentServiceClient;
use core::order_service_client::OrderServiceClient;
use core::product_service_client::ProductServiceClient;
use core::promotion_service_client::PromotionServiceClient;
use core::segment_service_client::SegmentServiceClient;
use core::user_service_client::UserServiceClient;

/// The ONe core over gRPC; `None` channel when no endpoint is configured.
#[derive(Debug, Clone)]
pub struct CoreClient {
    channel: Option<Channel>,
    token: String,
    tenant_tokens: std::collections::BTreeMap<String, String>,
}

impl CoreClient {
    /// A client of `settings.endpoint`; it connects on first use and reconnects by itself.
    ///
    /// # Errors
    /// A malformed endpoint.
    pub fn new(settings: &CoreSettings) -> Result<Self, tonic::transport::Error> {
        let channel = if settings.endpoint.trim().is_empty() {
            None
        } else {
            Some(
                Endpoint::from_shared(settings.endpoint.trim().to_owned())?
                    .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
                    .timeout(Duration::from_millis(settings.request_timeout_ms))
                    .connect_lazy(),
            )
        };
        Ok(Self {
            channel,
            token: settings.token.clone(),
            tenant_tokens: settings.tenant_tokens.clone(),
        })
    }

    fn request<T>(&self, tenant: &TenantId, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = tenant.as_str().parse() {
            request.metadata_mut().insert("one-tenant", value);
        }
        let token = self
            .tenant_tokens
            .get(tenant.as_str())
            .unwrap_or(&self.token);
        if !token.is_empty()
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

#[async_trait]
impl PromotionsGateway for CoreClient {
    async fn add_code(
        &self,
        tenant: &TenantId,
        pool_id: &str,
        code: &str,
        valid_until: NaiveDate,
        reference: &str,
    ) -> DeliveryOutcome {
        let Some(channel) = &self.channel else {
            return DeliveryOutcome::Transient("no ONe core endpoint is configured".into());
        };
        let mut client = PromotionServiceClient::new(channel.clone());
        let request = self.request(
            tenant,
            core::AddCouponCodesRequest {
                pool_id: pool_id.to_owned(),
                codes: vec![core::CouponCode {
                    code: code.to_owned(),
                    valid_until: valid_until.to_string(),
                    reference: reference.to_owned(),
                }],
            },
        );
        match client.add_coupon_codes(request).await {
            Ok(reply) => code_outcome(code, &reply.into_inner()),
            Err(status) => status_outcome(&status),
        }
    }

    async fn list_pools(
        &self,
        tenant: &TenantId,
        page_number: u32,
        page_size: u32,
    ) -> Result<PoolPage, String> {
        let Some(channel) = &self.channel else {
            return Err("no ONe core endpoint is configured".into());
        };
        let mut client = PromotionServiceClient::new(channel.clone());
        let request = self.request(
            tenant,
            core::ListCouponPoolsRequest {
                page_number,
                page_size,
            },
        );
        let reply = client
            .list_coupon_pools(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        // ONe may serve smaller pages than asked for; its own page size counts.
        let served_size = reply
            .page
            .as_ref()
            .map_or(page_size, |p| p.page_size)
            .max(1);
        let seen = u64::from(page_number.saturating_sub(1)) * u64::from(served_size)
            + reply.pools.len() as u64;
        let more = match &reply.page {
            Some(page) if page.total_count > 0 => seen < page.total_count,
            _ => reply.pools.len() == usize::try_from(page_size).unwrap_or(usize::MAX),
        };
        Ok(PoolPage {
            pools: reply
                .pools
                .into_iter()
                .map(|p| CouponPoolRecord {
                    pool_id: p.id,
                    name: p.name,
                    campaign_id: p.campaign_id,
                    campaign_name: p.campaign_name,
                    active: p.active,
                })
                .collect(),
            more,
        })
    }
}

/// ONe's verdict on the one code sent.
fn code_outcome(code: &str, reply: &core::AddCouponCodesResponse) -> DeliveryOutcome {
    let Some(result) = reply.results.iter().find(|r| r.code == code) else {
        return DeliveryOutcome::Transient(format!("ONe did not report on code {code}"));
    };
    match core::CodeOutcome::try_from(result.outcome) {
        Ok(core::CodeOutcome::Added | core::CodeOutcome::AlreadyPresent) => {
            DeliveryOutcome::Delivered
        }
        Ok(core::CodeOutcome::Rejected) => DeliveryOutcome::Rejected(if result.reason.is_empty() {
            "code rejected".into()
        } else {
            result.reason.clone()
        }),
        _ => DeliveryOutcome::Transient(format!("unknown outcome {} for code", result.outcome)),
    }
}

/// A failed call: a refusal of the request itself is permanent; an outage, a timeout, or a
/// credentials problem (an operator can fix it) is worth retrying.
fn status_outcome(status: &tonic::Status) -> DeliveryOutcome {
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::OutOfRange => {
            DeliveryOutcome::Rejected(text)
        }
        _ => DeliveryOutcome::Transient(text),
    }
}

/// Calls of the change feeds and lists are retried this many times on an outage, after 200 ms,
/// 400 ms, 800 ms … plus up to 50 % jitter.
const FEED_ATTEMPTS: u32 = 4;

/// Runs `call` until it succeeds, fails for a reason a retry cannot fix, or the attempts run
/// out.
async fn with_retry<T, F, Fut>(mut call: F) -> Result<T, GatewayError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let backoff = crate::domain::redemption::Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(5),
        jitter_percent: 50,
    };
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) => {
                let text = format!("{:?}: {}", status.code(), status.message());
                let retriable = matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::Unknown
                        | Code::Internal
                        | Code::Cancelled
                );
                if !retriable || attempt >= FEED_ATTEMPTS {
                    return Err(GatewayError::Unavailable(text));
                }
                let delay = backoff.jittered(attempt, &mut rand::rng());
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

fn instant(at: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    at.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or(DateTime::UNIX_EPOCH)
}

fn removed(change_type: i32) -> bool {
    change_type == core::ChangeType::Removed as i32
}

fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

fn product(p: core::Product, gone: bool) -> SyncChange {
    SyncChange::Product(ProductRecord {
        product_id: p.id,
        name: p.name,
        sku: p.sku,
        category_id: non_empty(p.category_id),
        label_ids: p.label_ids,
        manufacturer_id: non_empty(p.manufacturer_id),
        is_ecommerce: p.is_ecommerce,
        active: p.active && !gone,
        updated_at: instant(p.updated_at.as_ref()),
    })
}

fn client(c: core::Client, gone: bool) -> SyncChange {
    let status = match core::ClientStatus::try_from(c.status) {
        _ if gone => "DELETED",
        Ok(core::ClientStatus::Blocked) => "BLOCKED",
        Ok(core::ClientStatus::Deleted) => "DELETED",
        _ => "ACTIVE",
    };
    SyncChange::Client(ClientRecord {
        client_id: c.id,
        name: c.name,
        status: status.into(),
        has_account: c.has_account,
        segment_ids: c.segment_ids,
        updated_at: instant(c.updated_at.as_ref()),
    })
}

fn user(u: core::User, gone_at: Option<DateTime<Utc>>) -> SyncChange {
    let deactivated_at = gone_at.or_else(|| u.deactivated_at.as_ref().map(|t| instant(Some(t))));
    SyncChange::User(UserRecord {
        user_id: u.id,
        client_id: u.client_id,
        active: u.active && gone_at.is_none(),
        deactivated_at,
        updated_at: instant(u.updated_at.as_ref()),
    })
}

fn segment(s: core::Segment, gone: bool) -> SyncChange {
    SyncChange::Segment(SegmentRecord {
        segment_id: s.id,
        name: s.name,
        description: s.description,
        removed: gone,
        updated_at: instant(s.updated_at.as_ref()),
    })
}

fn order(o: core::Order, gone: bool) -> SyncChange {
    SyncChange::Order(OrderRecord {
        order_number: o.number,
        order_id: o.id,
        client_id: o.client_id,
        order_date: instant(o.order_date.as_ref()),
        status: o.status,
        removed: gone,
        updated_at: instant(o.updated_at.as_ref()),
    })
}

fn pool(p: core::CouponPool, gone: bool) -> SyncChange {
    SyncChange::Pool(CouponPoolRecord {
        pool_id: p.id,
        name: p.name,
        campaign_id: p.campaign_id,
        campaign_name: p.campaign_name,
        active: p.active && !gone,
    })
}

fn document(d: &core::Document) -> Result<SyncChange, GatewayError> {
    let bad = |why: String| GatewayError::Malformed(format!("document {}: {why}", d.id));
    let kind = match core::DocumentType::try_from(d.r#type) {
        Ok(core::DocumentType::Invoice) => DocumentKind::Invoice,
        Ok(core::DocumentType::InvoiceCorrection) => DocumentKind::Correction,
        _ => return Err(bad(format!("unknown type {}", d.r#type))),
    };
    let sale_date = NaiveDate::parse_from_str(&d.sale_date, "%Y-%m-%d")
        .map_err(|e| bad(format!("sale_date {:?}: {e}", d.sale_date)))?;
    let mut lines = Vec::with_capacity(d.lines.len());
    // A document's lines are stored by their numbers, in its row: two alike cannot be told apart.
    let mut numbers = std::collections::BTreeSet::new();
    for l in &d.lines {
        if !numbers.insert(l.line_no) {
            return Err(bad(format!("line {} appears twice", l.line_no)));
        }
        let quantity = crate::domain::points::parse_amount(&l.quantity)
            .map_err(|e| bad(format!("line {} quantity {:?}: {e}", l.line_no, l.quantity)))?;
        lines.push(DocumentLine {
            line_no: l.line_no,
            product_id: l.product_id.clone(),
            quantity,
            order_number: non_empty(l.order_number.clone()),
            corrected_line_no: (l.corrected_line_no > 0).then_some(l.corrected_line_no),
        });
    }
    let correction_type = match core::CorrectionType::try_from(d.correction_type) {
        Ok(core::CorrectionType::Valuable) => Some(CorrectionType::Valuable),
        Ok(core::CorrectionType::Quantitative) => Some(CorrectionType::Quantitative),
        _ => None,
    };
    Ok(SyncChange::Document(Document {
        document_id: d.id.clone(),
        number: d.number.clone(),
        kind,
        client_id: d
            .client_data
            .as_ref()
            .map(|c| c.client_id.clone())
            .unwrap_or_default(),
        sale_date,
        customer_purchase_numbers: d.customer_purchase_numbers.clone(),
        lines,
        correction_type,
        corrected_document_id: non_empty(d.corrected_document_id.clone()),
        offline: false,
        issued_at: d.issue_date.as_ref().map(|t| instant(Some(t))),
    }))
}

fn consent(e: core::DeclarationEvent, now: DateTime<Utc>) -> Option<SyncChange> {
    let action = match core::DeclarationAction::try_from(e.action) {
        Ok(core::DeclarationAction::Agreed) => ConsentAction::Accept,
        Ok(core::DeclarationAction::Disagreed) => ConsentAction::Withdraw,
        _ => return None,
    };
    Some(SyncChange::Consent(ConsentEvent {
        event_id: e.event_id,
        user_id: e.user_id,
        client_id: e.client_id,
        action,
        occurred_at: instant(e.occurred_at.as_ref()),
        declaration_type_id: e.declaration_type_id,
        agreement_version: e.version,
        source: "ONE".into(),
        recorded_at: now,
    }))
}

fn document_types(filter: &FeedFilter) -> Vec<i32> {
    filter
        .document_kinds
        .iter()
        .map(|k| match k {
            SyncDocumentKind::Invoice => core::DocumentType::Invoice as i32,
            SyncDocumentKind::Correction => core::DocumentType::InvoiceCorrection as i32,
        })
        .collect()
}

/// Whether more pages follow this one.
fn more_pages(page: Option<&core::PageInfo>, page_number: u32, asked: u32, got: usize) -> bool {
    let served = page.map_or(asked, |p| p.page_size).max(1);
    let seen = u64::from(page_number.saturating_sub(1)) * u64::from(served) + got as u64;
    match page {
        Some(p) if p.total_count > 0 => seen < p.total_count,
        _ => got >= usize::try_from(asked).unwrap_or(usize::MAX),
    }
}

impl CoreClient {
    fn channel(&self) -> Result<Channel, GatewayError> {
        self.channel.clone().ok_or(GatewayError::NotConfigured)
    }
}

/// Calls `$method` of the `$client` service with `$request` (re-evaluated per attempt), with
/// the tenant's metadata and retries; evaluates to the reply message.
macro_rules! call {
    ($self:ident, $channel:ident, $tenant:ident, $client:ident, $method:ident, $request:expr) => {
        with_retry(|| {
            let mut client = $client::new($channel.clone());
            let request = $self.request($tenant, $request);
            async move {
                client
                    .$method(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await?
    };
}

/// A feed reply as a batch: each event converted, those without a payload left out.
fn batch<E>(
    events: Vec<E>,
    next_cursor: String,
    convert: impl FnMut(E) -> Option<SyncChange>,
) -> SyncBatch {
    SyncBatch {
        changes: events.into_iter().filter_map(convert).collect(),
        next_cursor,
    }
}

/// A list reply as a page.
fn page<T>(
    items: Vec<T>,
    info: Option<&core::PageInfo>,
    page_number: u32,
    page_size: u32,
    convert: impl FnMut(T) -> SyncChange,
) -> SnapshotPage {
    let more = more_pages(info, page_number, page_size, items.len());
    SnapshotPage {
        changes: items.into_iter().map(convert).collect(),
        more,
    }
}

#[async_trait]
impl CoreGateway for CoreClient {
    #[allow(clippy::too_many_lines)] // one short arm per stream
    async fn changes(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        cursor: &str,
        limit: u32,
        filter: &FeedFilter,
    ) -> Result<SyncBatch, GatewayError> {
        use core::{
            GetClientEventsRequest as Clients, GetCouponPoolEventsRequest as Pools,
            GetDeclarationEventsRequest as Declarations, GetDocumentEventsRequest as Documents,
            GetOrderEventsRequest as Orders, GetProductEventsRequest as Products,
            GetSegmentEventsRequest as Segments, GetUserEventsRequest as Users,
        };
        let channel = self.channel()?;
        let start_id = cursor.to_owned();
        Ok(match stream {
            SyncStream::Products => {
                let request = || Products {
                    start_id: start_id.clone(),
                    limit,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    ProductServiceClient,
                    get_product_events,
                    request()
                );
                batch(r.events, r.next_id, |e| {
                    let gone = removed(e.change_type);
                    e.product.map(|p| product(p, gone))
                })
            }
            SyncStream::Clients => {
                let request = || Clients {
                    start_id: start_id.clone(),
                    limit,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    ClientServiceClient,
                    get_client_events,
                    request()
                );
                batch(r.events, r.next_id, |e| {
                    let gone = removed(e.change_type);
                    e.client.map(|c| client(c, gone))
                })
            }
            SyncStream::Users => {
                let request = || Users {
                    start_id: start_id.clone(),
                    limit,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    UserServiceClient,
                    get_user_events,
                    request()
                );
                batch(r.events, r.next_id, |e| {
                    let gone = removed(e.change_type).then(|| instant(e.occurred_at.as_ref()));
                    e.user.map(|u| user(u, gone))
                })
            }
            SyncStream::Segments => {
                let request = || Segments {
                    start_id: start_id.clone(),
                    limit,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    SegmentServiceClient,
                    get_segment_events,
                    request()
                );
                batch(r.events, r.next_id, |e| {
                    let gone = removed(e.change_type);
                    e.segment.map(|s| segment(s, gone))
                })
            }
            SyncStream::Orders => {
                let request = || Orders {
                    start_id: start_id.clone(),
                    limit,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    OrderServiceClient,
                    get_order_events,
                    request()
                );
                batch(r.events, r.next_id, |e| {
                    let gone = removed(e.change_type);
                    e.order.map(|o| order(o, gone))
                })
            }
            SyncStream::Documents => {
                let types = document_types(filter);
                let request = || Documents {
                    start_id: start_id.clone(),
                    limit,
                    types: types.clone(),
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    DocumentServiceClient,
                    get_document_events,
                    request()
                );
                let mut changes = Vec::with_capacity(r.events.len());
                // Documents do not change once issued; a correction is a document of its own.
                for d in r
                    .events
                    .into_iter()
                    .filter(|e| e.change_type == core::ChangeType::Added as i32)
                    .filter_map(|e| e.document)
                {
                    changes.push(document(&d)?);
                }
                SyncBatch {
                    changes,
                    next_cursor: r.next_id,
                }
            }
            SyncStream::Declarations => {
                let declaration_type_id = filter.declaration_type_id.clone();
                let request = || Declarations {
                    start_id: start_id.clone(),
                    limit,
                    declaration_type_id: declaration_type_id.clone(),
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    DeclarationServiceClient,
                    get_declaration_events,
                    request()
                );
                let now = Utc::now();
                batch(r.events, r.next_id, |e| consent(e, now))
            }
            SyncStream::CouponPools => {
                let request = || Pools {
                    start_id: start_id.clone(),
                    limit,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    PromotionServiceClient,
                    get_coupon_pool_events,
                    request()
                );
                batch(r.events, r.next_id, |e| {
                    let gone = removed(e.change_type);
                    e.pool.map(|p| pool(p, gone))
                })
            }
        })
    }

    #[allow(clippy::too_many_lines)] // one short arm per stream
    async fn snapshot(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        page_number: u32,
        page_size: u32,
        filter: &FeedFilter,
    ) -> Result<SnapshotPage, GatewayError> {
        use core::{
            ListClientsRequest as Clients, ListDocumentsRequest as Documents,
            ListOrdersRequest as Orders, ListProductsRequest as Products,
            ListSegmentsRequest as Segments, ListUsersRequest as Users,
        };
        let channel = self.channel()?;
        let (n, size) = (page_number, page_size);
        Ok(match stream {
            SyncStream::Products => {
                let r = call!(
                    self,
                    channel,
                    tenant,
                    ProductServiceClient,
                    list_products,
                    Products {
                        page_number,
                        page_size
                    }
                );
                page(r.products, r.page.as_ref(), n, size, |p| product(p, false))
            }
            SyncStream::Clients => {
                let r = call!(
                    self,
                    channel,
                    tenant,
                    ClientServiceClient,
                    list_clients,
                    Clients {
                        page_number,
                        page_size
                    }
                );
                page(r.clients, r.page.as_ref(), n, size, |c| client(c, false))
            }
            SyncStream::Users => {
                let r = call!(
                    self,
                    channel,
                    tenant,
                    UserServiceClient,
                    list_users,
                    Users {
                        page_number,
                        page_size
                    }
                );
                page(r.users, r.page.as_ref(), n, size, |u| user(u, None))
            }
            SyncStream::Segments => {
                let r = call!(
                    self,
                    channel,
                    tenant,
                    SegmentServiceClient,
                    list_segments,
                    Segments {
                        page_number,
                        page_size
                    }
                );
                page(r.segments, r.page.as_ref(), n, size, |s| segment(s, false))
            }
            SyncStream::Orders => {
                let request = || Orders {
                    page_number,
                    page_size,
                    order_date_from: None,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    OrderServiceClient,
                    list_orders,
                    request()
                );
                page(r.orders, r.page.as_ref(), n, size, |o| order(o, false))
            }
            SyncStream::Documents => {
                let types = document_types(filter);
                let from = filter
                    .documents_from
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                let request = || Documents {
                    page_number,
                    page_size,
                    types: types.clone(),
                    sale_date_from: from.clone(),
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    DocumentServiceClient,
                    list_documents,
                    request()
                );
                let more = more_pages(r.page.as_ref(), n, size, r.documents.len());
                let changes = r.documents.iter().map(document).collect::<Result<_, _>>()?;
                SnapshotPage { changes, more }
            }
            // Consent events have no list; a full pass reads the versions, as every run does.
            SyncStream::Declarations => SnapshotPage {
                changes: Vec::new(),
                more: false,
            },
            SyncStream::CouponPools => {
                let listed = PromotionsGateway::list_pools(self, tenant, page_number, page_size)
                    .await
                    .map_err(GatewayError::Unavailable)?;
                SnapshotPage {
                    changes: listed.pools.into_iter().map(SyncChange::Pool).collect(),
                    more: listed.more,
                }
            }
        })
    }

    async fn references(
        &self,
        tenant: &TenantId,
        stream: SyncStream,
        page_number: u32,
        page_size: u32,
        filter: &FeedFilter,
    ) -> Result<SnapshotPage, GatewayError> {
        let (n, size) = (page_number, page_size);
        Ok(match stream {
            SyncStream::Products => {
                let channel = self.channel()?;
                let request = || core::ListCategoriesRequest {
                    page_number,
                    page_size,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    ProductServiceClient,
                    list_categories,
                    request()
                );
                page(r.categories, r.page.as_ref(), n, size, |c| {
                    SyncChange::Category(CategoryRecord {
                        category_id: c.id,
                        parent_id: non_empty(c.parent_id),
                        name: c.name,
                    })
                })
            }
            SyncStream::Declarations if !filter.declaration_type_id.is_empty() => {
                let channel = self.channel()?;
                let declaration_type_id = filter.declaration_type_id.clone();
                let request = || core::ListDeclarationVersionsRequest {
                    declaration_type_id: declaration_type_id.clone(),
                    page_number,
                    page_size,
                };
                let r = call!(
                    self,
                    channel,
                    tenant,
                    DeclarationServiceClient,
                    list_declaration_versions,
                    request()
                );
                page(r.versions, r.page.as_ref(), n, size, |v| {
                    SyncChange::Version(AgreementVersion {
                        declaration_type_id: v.declaration_type_id,
                        version: v.version,
                        published_at: instant(v.published_at.as_ref()),
                        title: v.title,
                        content_url: v.content_url,
                    })
                })
            }
            _ => SnapshotPage {
                changes: Vec::new(),
                more: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(outcome: core::CodeOutcome, reason: &str) -> core::AddCouponCodesResponse {
        core::AddCouponCodesResponse {
            results: vec![core::CodeResult {
                code: "C1".into(),
                outcome: outcome as i32,
                reason: reason.into(),
            }],
        }
    }

    #[test]
    fn a_document_with_two_lines_numbered_alike_is_malformed() {
        let line = |line_no: u32| core::DocumentLine {
            line_no,
            product_id: "P1".into(),
            quantity: "1".into(),
            ..Default::default()
        };
        let sent = |lines: Vec<core::DocumentLine>| core::Document {
            id: "INV-1".into(),
            number: "FV/1".into(),
            r#type: core::DocumentType::Invoice as i32,
            sale_date: "2026-03-01".into(),
            lines,
            ..Default::default()
        };
        assert!(matches!(
            document(&sent(vec![line(1), line(2)])),
            Ok(SyncChange::Document(d)) if d.lines.len() == 2
        ));
        assert_eq!(
            document(&sent(vec![line(1), line(2), line(1)])).err(),
            Some(GatewayError::Malformed(
                "document INV-1: line 1 appears twice".into()
            ))
        );
    }

    #[test]
    fn added_and_already_present_are_delivered_rejected_is_final() {
        assert_eq!(
            code_outcome("C1", &reply(core::CodeOutcome::Added, "")),
            DeliveryOutcome::Delivered
        );
        assert_eq!(
            code_outcome("C1", &reply(core::CodeOutcome::AlreadyPresent, "")),
            DeliveryOutcome::Delivered
        );
        assert_eq!(
            code_outcome("C1", &reply(core::CodeOutcome::Rejected, "pool closed")),
            DeliveryOutcome::Rejected("pool closed".into())
        );
        assert!(matches!(
            code_outcome("other", &reply(core::CodeOutcome::Added, "")),
            DeliveryOutcome::Transient(_)
        ));
    }

    #[test]
    fn outages_are_retried_refusals_are_not() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
        ] {
            assert!(matches!(
                status_outcome(&tonic::Status::new(code, "x")),
                DeliveryOutcome::Transient(_)
            ));
        }
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
        ] {
            assert!(matches!(
                status_outcome(&tonic::Status::new(code, "x")),
                DeliveryOutcome::Rejected(_)
            ));
        }
    }

    #[test]
    fn a_tenants_own_token_wins_over_the_shared_one() {
        let settings = CoreSettings {
            endpoint: String::new(),
            token: "shared".into(),
            tenant_tokens: [("acme".to_owned(), "own".to_owned())].into(),
            connect_timeout_ms: 1,
            request_timeout_ms: 1,
        };
        let client = CoreClient::new(&settings).expect("client");
        let header = |tenant: &str| {
            let tenant = TenantId::parse(tenant).expect("tenant");
            let request = client.request(&tenant, ());
            (
                request.metadata().get("authorization").cloned(),
                request.metadata().get("one-tenant").cloned(),
            )
        };
        let (auth, tenant) = header("acme");
        assert_eq!(
            auth.as_ref().and_then(|v| v.to_str().ok()),
            Some("Bearer own")
        );
        assert_eq!(tenant.as_ref().and_then(|v| v.to_str().ok()), Some("acme"));
        let (auth, _) = header("demo");
        assert_eq!(
            auth.as_ref().and_then(|v| v.to_str().ok()),
            Some("Bearer shared")
        );
    }
}
