//! `one-core-sim`: a stand-in for the ONe core services, for demos, integration tests and
//! benchmarks. A real gRPC server of every service in `proto/one/core/v1`, over generated data
//! held in memory: change feeds with cursors (`start_id` → events + `next_id`), paged lists,
//! coupon pools that accept codes, and faults (latency, errors, outages) on demand.
//!
//! The data serve every tenant alike. Event ids are the positions in each feed ("1", "2", …).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::{Request, Response, Status};

use crate::proto::core::v1 as core;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSpec {
    pub clients: u32,
    pub products: u32,
    /// Invoices per simulated day.
    pub invoices_per_day: u32,
    pub lines_per_invoice: u32,
    /// Days of history, ending yesterday (in UTC).
    pub days: u32,
    pub seed: u64,
}

impl Default for SimSpec {
    fn default() -> Self {
        Self {
            clients: 20,
            products: 50,
            invoices_per_day: 10,
            lines_per_invoice: 10,
            days: 3,
            seed: 7,
        }
    }
}

/// The declaration type whose consents the simulator publishes.
pub const DECLARATION_TYPE: &str = "LOYALTY";
/// The simulated coupon pool.
pub const POOL_ID: &str = "pool-sim";

/// Faults to inject.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Added to every call.
    pub latency: Duration,
    /// Every call fails with UNAVAILABLE.
    pub down: bool,
    /// The next this many calls fail with UNAVAILABLE.
    pub fail_next: u32,
    /// Each call fails with this probability.
    pub error_rate: f64,
    /// New connections are closed as soon as they are accepted.
    pub refuse_connections: bool,
}

/// A feed of change events; the event id is the 1-based position.
#[derive(Debug, Clone, Default)]
struct Feed<E> {
    events: Vec<E>,
}

impl<E: Clone> Feed<E> {
    /// Appends the event `make` builds with its id; returns the id.
    fn push(&mut self, make: impl FnOnce(String) -> E) -> String {
        let id = (self.events.len() + 1).to_string();
        self.events.push(make(id.clone()));
        id
    }

    /// Events after `start_id`, at most `limit`, and the id to continue from.
    fn read(&self, start_id: &str, limit: u32) -> Result<(Vec<E>, String), Status> {
        let after: usize = if start_id.is_empty() {
            0
        } else {
            start_id
                .parse()
                .map_err(|_| Status::invalid_argument(format!("start_id {start_id:?}")))?
        };
        let limit = usize::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        let events: Vec<E> = self
            .events
            .iter()
            .skip(after)
            .take(limit)
            .cloned()
            .collect();
        let next = (after + events.len()).to_string();
        Ok((events, next))
    }
}

fn page_of<T: Clone>(items: &[T], page_number: u32, page_size: u32) -> (Vec<T>, core::PageInfo) {
    let size = page_size.clamp(1, 10_000);
    let start = usize::try_from(page_number.max(1) - 1).unwrap_or(0) * size as usize;
    let page = items
        .iter()
        .skip(start)
        .take(size as usize)
        .cloned()
        .collect();
    (
        page,
        core::PageInfo {
            page_number: page_number.max(1),
            page_size: size,
            total_count: items.len() as u64,
        },
    )
}

fn ts(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Everything the simulated ONe holds.
#[derive(Debug, Default)]
pub struct SimState {
    pub categories: Vec<core::Category>,
    products: BTreeMap<String, core::Product>,
    clients: BTreeMap<String, core::Client>,
    users: BTreeMap<String, core::User>,
    segments: BTreeMap<String, core::Segment>,
    orders: BTreeMap<String, core::Order>,
    documents: Vec<core::Document>,
    versions: Vec<core::DeclarationVersion>,
    pools: BTreeMap<String, core::CouponPool>,
    /// Codes added to pools: code → (pool, valid until).
    pub codes: BTreeMap<String, (String, String)>,
    /// How many times each code was sent (a redelivery shows as more than one).
    pub code_requests: BTreeMap<String, u32>,
    product_feed: Feed<core::ProductEvent>,
    client_feed: Feed<core::ClientEvent>,
    user_feed: Feed<core::UserEvent>,
    segment_feed: Feed<core::SegmentEvent>,
    order_feed: Feed<core::OrderEvent>,
    document_feed: Feed<core::DocumentEvent>,
    declaration_feed: Feed<core::DeclarationEvent>,
    pool_feed: Feed<core::CouponPoolEvent>,
    faults: Faults,
    /// Calls answered (failed ones included).
    pub calls: u64,
    next_invoice: u64,
    rng: Option<StdRng>,
}

impl SimState {
    /// Generated data: `spec.clients` organisations (one user each, in segment "gold" or
    /// "silver"), `spec.products` products in 5 categories, a published agreement version whose
    /// consents switch off and on again for every fifth user, the pool [`POOL_ID`], and
    /// `spec.invoices_per_day` invoices (with their online orders) for each of `spec.days` days.
    pub fn generate(spec: SimSpec, now: DateTime<Utc>) -> Self {
        let mut state = Self {
            rng: Some(StdRng::seed_from_u64(spec.seed)),
            ..Self::default()
        };
        let start = now - chrono::Duration::days(i64::from(spec.days) + 1);
        for segment in ["gold", "silver"] {
            state.upsert_segment(segment, &format!("{segment} clients"), start);
        }
        state.categories = (1..=5)
            .map(|c| core::Category {
                id: format!("cat-{c}"),
                parent_id: if c == 1 {
                    String::new()
                } else {
                    "cat-1".into()
                },
                name: format!("Category {c}"),
            })
            .collect();
        for p in 1..=spec.products {
            state.upsert_product(
                core::Product {
                    id: format!("p-{p}"),
                    name: format!("Product {p}"),
                    sku: format!("SKU-{p:05}"),
                    category_id: format!("cat-{}", 1 + p % 5),
                    label_ids: if p % 7 == 0 {
                        vec!["promo".into()]
                    } else {
                        vec![]
                    },
                    manufacturer_id: format!("m-{}", 1 + p % 3),
                    manufacturer_name: format!("Maker {}", 1 + p % 3),
                    is_ecommerce: p % 4 != 0,
                    active: true,
                    updated_at: Some(ts(start)),
                },
                start,
            );
        }
        state.versions.push(core::DeclarationVersion {
            declaration_type_id: DECLARATION_TYPE.into(),
            version: 1,
            title: "Loyalty programme terms".into(),
            content_url: "https://one.example/terms/v1".into(),
            published_at: Some(ts(start - chrono::Duration::days(30))),
        });
        for c in 1..=spec.clients {
            let client_id = format!("org:{c}");
            state.upsert_client(
                core::Client {
                    id: client_id.clone(),
                    name: format!("Client {c}"),
                    tax_id: format!("PL{c:010}"),
                    status: core::ClientStatus::Active as i32,
                    has_account: true,
                    segment_ids: vec![if c % 2 == 0 { "gold" } else { "silver" }.into()],
                    updated_at: Some(ts(start)),
                },
                start,
            );
            let user_id = format!("u-{c}");
            state.upsert_user(
                core::User {
                    id: user_id.clone(),
                    client_id: client_id.clone(),
                    email: format!("buyer{c}@client.example"),
                    first_name: "Buyer".into(),
                    last_name: format!("{c}"),
                    active: true,
                    deactivated_at: None,
                    updated_at: Some(ts(start)),
                },
                start,
            );
            state.consent(&user_id, &client_id, true, start);
            if c % 5 == 0 {
                // Off for a day, then on again.
                state.consent(
                    &user_id,
                    &client_id,
                    false,
                    start + chrono::Duration::days(1),
                );
                state.consent(
                    &user_id,
                    &client_id,
                    true,
                    start + chrono::Duration::days(2),
                );
            }
        }
        state.upsert_pool(POOL_ID, true, start);
        for day in 0..spec.days {
            let sale_date = (start + chrono::Duration::days(i64::from(day) + 1)).date_naive();
            for _ in 0..spec.invoices_per_day {
                state.add_invoice(spec, sale_date);
            }
        }
        state
    }

    fn rng(&mut self) -> &mut StdRng {
        self.rng.get_or_insert_with(|| StdRng::seed_from_u64(7))
    }

    pub fn upsert_segment(&mut self, id: &str, name: &str, at: DateTime<Utc>) {
        let segment = core::Segment {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            updated_at: Some(ts(at)),
        };
        let change = if self.segments.contains_key(id) {
            core::ChangeType::Changed
        } else {
            core::ChangeType::Added
        };
        self.segments.insert(id.into(), segment.clone());
        self.segment_feed.push(|event_id| core::SegmentEvent {
            event_id,
            change_type: change as i32,
            segment_id: id.into(),
            segment: Some(segment),
            occurred_at: Some(ts(at)),
        });
    }

    pub fn upsert_product(&mut self, product: core::Product, at: DateTime<Utc>) {
        let change = if self.products.contains_key(&product.id) {
            core::ChangeType::Changed
        } else {
            core::ChangeType::Added
        };
        self.products.insert(product.id.clone(), product.clone());
        self.product_feed.push(|event_id| core::ProductEvent {
            event_id,
            change_type: change as i32,
            product_id: product.id.clone(),
            product: Some(product),
            occurred_at: Some(ts(at)),
        });
    }

    pub fn upsert_client(&mut self, client: core::Client, at: DateTime<Utc>) {
        let change = if self.clients.contains_key(&client.id) {
            core::ChangeType::Changed
        } else {
            core::ChangeType::Added
        };
        self.clients.insert(client.id.clone(), client.clone());
        self.client_feed.push(|event_id| core::ClientEvent {
            event_id,
            change_type: change as i32,
            client_id: client.id.clone(),
            client: Some(client),
            occurred_at: Some(ts(at)),
        });
    }

    /// The client as ONe holds it now.
    pub fn client(&self, client_id: &str) -> Option<core::Client> {
        self.clients.get(client_id).cloned()
    }

    pub fn upsert_user(&mut self, user: core::User, at: DateTime<Utc>) {
        let change = if self.users.contains_key(&user.id) {
            core::ChangeType::Changed
        } else {
            core::ChangeType::Added
        };
        self.users.insert(user.id.clone(), user.clone());
        self.user_feed.push(|event_id| core::UserEvent {
            event_id,
            change_type: change as i32,
            user_id: user.id.clone(),
            user: Some(user),
            occurred_at: Some(ts(at)),
        });
    }

    pub fn upsert_pool(&mut self, id: &str, active: bool, at: DateTime<Utc>) {
        let pool = core::CouponPool {
            id: id.into(),
            name: format!("{id} codes"),
            campaign_id: format!("camp-{id}"),
            campaign_name: "Loyalty rewards".into(),
            active,
            updated_at: Some(ts(at)),
        };
        let change = if self.pools.contains_key(id) {
            core::ChangeType::Changed
        } else {
            core::ChangeType::Added
        };
        self.pools.insert(id.into(), pool.clone());
        self.pool_feed.push(|event_id| core::CouponPoolEvent {
            event_id,
            change_type: change as i32,
            pool_id: id.into(),
            pool: Some(pool),
            occurred_at: Some(ts(at)),
        });
    }

    /// A user agrees to (or withdraws from) the loyalty terms, version 1.
    /// Returns the event's id.
    pub fn consent(
        &mut self,
        user_id: &str,
        client_id: &str,
        agreed: bool,
        at: DateTime<Utc>,
    ) -> String {
        let action = if agreed {
            core::DeclarationAction::Agreed
        } else {
            core::DeclarationAction::Disagreed
        };
        self.declaration_feed
            .push(|event_id| core::DeclarationEvent {
                event_id,
                declaration_type_id: DECLARATION_TYPE.into(),
                version: 1,
                user_id: user_id.into(),
                client_id: client_id.into(),
                action: action as i32,
                occurred_at: Some(ts(at)),
            })
    }

    /// A faulty feed: the declaration event `event_id` sent again under its id, with the other
    /// action. Nothing when there is no such event.
    pub fn resend_consent_changed(&mut self, event_id: &str) {
        let Some(mut event) = self
            .declaration_feed
            .events
            .iter()
            .find(|e| e.event_id == event_id)
            .cloned()
        else {
            return;
        };
        event.action = if event.action == core::DeclarationAction::Agreed as i32 {
            core::DeclarationAction::Disagreed as i32
        } else {
            core::DeclarationAction::Agreed as i32
        };
        self.declaration_feed.events.push(event);
    }

    pub fn upsert_order(&mut self, order: core::Order, at: DateTime<Utc>) {
        let change = if self.orders.contains_key(&order.number) {
            core::ChangeType::Changed
        } else {
            core::ChangeType::Added
        };
        self.orders.insert(order.number.clone(), order.clone());
        self.order_feed.push(|event_id| core::OrderEvent {
            event_id,
            change_type: change as i32,
            order_id: order.id.clone(),
            order: Some(order),
            occurred_at: Some(ts(at)),
        });
    }

    /// ONe removes an order: it no longer counts as online.
    pub fn remove_order(&mut self, number: &str, at: DateTime<Utc>) {
        if let Some(order) = self.orders.remove(number) {
            self.order_feed.push(|event_id| core::OrderEvent {
                event_id,
                change_type: core::ChangeType::Removed as i32,
                order_id: order.id.clone(),
                order: Some(order),
                occurred_at: Some(ts(at)),
            });
        }
    }

    /// A new invoice of a random client on `sale_date`, with `spec.lines_per_invoice` lines of
    /// random products; every other invoice comes from an online order. Returns its id.
    pub fn add_invoice(&mut self, spec: SimSpec, sale_date: NaiveDate) -> String {
        self.next_invoice += 1;
        let n = self.next_invoice;
        let clients = spec.clients.max(1);
        let products = spec.products.max(1);
        let client = self.rng().random_range(1..=clients);
        let order_number = n.is_multiple_of(2).then(|| format!("ORD-{n}"));
        let issued = sale_date
            .and_hms_opt(18, 0, 0)
            .map_or(DateTime::UNIX_EPOCH, |t| t.and_utc());
        if let Some(number) = &order_number {
            self.upsert_order(
                core::Order {
                    id: format!("o-{n}"),
                    number: number.clone(),
                    client_id: format!("org:{client}"),
                    user_id: format!("u-{client}"),
                    order_date: Some(ts(issued - chrono::Duration::hours(6))),
                    status: "COMPLETED".into(),
                    payment_status: "PAID".into(),
                    updated_at: Some(ts(issued)),
                },
                issued,
            );
        }
        let lines = (1..=spec.lines_per_invoice.max(1))
            .map(|line_no| {
                let product = self.rng().random_range(1..=products);
                let quantity = self.rng().random_range(1..=5u32);
                core::DocumentLine {
                    line_no,
                    product_id: format!("p-{product}"),
                    product_name: format!("Product {product}"),
                    quantity: quantity.to_string(),
                    unit: "pcs".into(),
                    net_price: "10.00".into(),
                    net_value: format!("{}.00", quantity * 10),
                    order_number: order_number.clone().unwrap_or_default(),
                    corrected_line_no: 0,
                }
            })
            .collect();
        let document = core::Document {
            id: format!("inv-{n}"),
            r#type: core::DocumentType::Invoice as i32,
            number: format!("FV/{n}"),
            sale_date: sale_date.to_string(),
            issue_date: Some(ts(issued)),
            client_data: Some(core::ClientData {
                client_id: format!("org:{client}"),
                name: format!("Client {client}"),
                tax_id: format!("PL{client:010}"),
            }),
            customer_purchase_numbers: order_number.clone().into_iter().collect(),
            currency: "PLN".into(),
            lines,
            correction_type: 0,
            corrected_document_id: String::new(),
        };
        let id = document.id.clone();
        self.documents.push(document.clone());
        self.document_feed.push(|event_id| core::DocumentEvent {
            event_id,
            change_type: core::ChangeType::Added as i32,
            document_id: document.id.clone(),
            document: Some(document),
            occurred_at: Some(ts(issued)),
        });
        id
    }

    /// The faults now in force.
    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// Invoice lines in the documents feed.
    pub fn invoice_lines(&self) -> usize {
        self.documents.iter().map(|d| d.lines.len()).sum()
    }
}

/// The simulator's shared state and its gRPC services.
#[derive(Debug, Clone)]
pub struct CoreSim {
    state: Arc<Mutex<SimState>>,
    /// Wakes [`CoreSim::run`] to close every connection and listen again.
    restart: Arc<tokio::sync::Notify>,
}

impl CoreSim {
    pub fn new(state: SimState) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
            restart: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Closes every open connection (a dropped-connection fault); [`CoreSim::run`] listens
    /// again on the same address at once.
    pub fn drop_connections(&self) {
        self.restart.notify_one();
    }

    /// Serves on `listener` until `stop` completes. Each [`CoreSim::drop_connections`] stops the
    /// server (its connections close) and serves again on the same address.
    ///
    /// # Errors
    /// The address cannot be bound again, or the transport.
    pub async fn run(
        &self,
        listener: tokio::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let addr = listener.local_addr()?;
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (stopped, restart) = (Arc::clone(&stopped), Arc::clone(&self.restart));
            tokio::spawn(async move {
                stop.await;
                stopped.store(true, std::sync::atomic::Ordering::SeqCst);
                restart.notify_one();
            });
        }
        let mut listener = Some(listener);
        loop {
            let current = match listener.take() {
                Some(l) => l,
                None => tokio::net::TcpListener::bind(addr).await?,
            };
            let restart = Arc::clone(&self.restart);
            self.serve(current, async move { restart.notified().await })
                .await?;
            if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
        }
    }

    /// The state, to change it (a test or a live generator) or to read it.
    pub fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    /// Serves every core service on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// The transport.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        use core::{
            client_service_server::ClientServiceServer,
            declaration_service_server::DeclarationServiceServer,
            document_service_server::DocumentServiceServer,
            order_service_server::OrderServiceServer, product_service_server::ProductServiceServer,
            promotion_service_server::PromotionServiceServer,
            segment_service_server::SegmentServiceServer, user_service_server::UserServiceServer,
        };
        const LIMIT: usize = 64 * 1024 * 1024;
        let refusing = self.clone();
        macro_rules! big {
            ($server:ident) => {
                $server::new(self.clone())
                    .max_encoding_message_size(LIMIT)
                    .max_decoding_message_size(LIMIT)
            };
        }
        tonic::transport::Server::builder()
            .add_service(big!(ProductServiceServer))
            .add_service(big!(ClientServiceServer))
            .add_service(big!(UserServiceServer))
            .add_service(big!(SegmentServiceServer))
            .add_service(big!(OrderServiceServer))
            .add_service(big!(DocumentServiceServer))
            .add_service(big!(DeclarationServiceServer))
            .add_service(big!(PromotionServiceServer))
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::filter(
                    crate::startup::accepting(listener),
                    // A refused connection is dropped, which closes it.
                    move |_| !refusing.state().faults.refuse_connections,
                ),
                shutdown,
            )
            .await
    }

    /// Counts the call, applies the faults, then runs `answer` on the state.
    async fn call<T>(
        &self,
        answer: impl FnOnce(&mut SimState) -> Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let latency = {
            let mut state = self.state();
            state.calls += 1;
            state.faults.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut state = self.state();
        if state.faults.down {
            return Err(Status::unavailable("the simulated ONe is down"));
        }
        if state.faults.fail_next > 0 {
            state.faults.fail_next -= 1;
            return Err(Status::unavailable("a simulated failure"));
        }
        let rate = state.faults.error_rate;
        if rate > 0.0 && state.rng().random::<f64>() < rate {
            return Err(Status::unavailable("a simulated random failure"));
        }
        answer(&mut state).map(Response::new)
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl core::product_service_server::ProductService for CoreSim {
    async fn get_product_events(
        &self,
        request: Request<core::GetProductEventsRequest>,
    ) -> Reply<core::GetProductEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.product_feed.read(&m.start_id, m.limit)?;
            Ok(core::GetProductEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_products(
        &self,
        request: Request<core::ListProductsRequest>,
    ) -> Reply<core::ListProductsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::Product> = s.products.values().cloned().collect();
            let (products, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListProductsResponse {
                products,
                page: Some(page),
            })
        })
        .await
    }

    async fn list_categories(
        &self,
        request: Request<core::ListCategoriesRequest>,
    ) -> Reply<core::ListCategoriesResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (categories, page) = page_of(&s.categories, m.page_number, m.page_size);
            Ok(core::ListCategoriesResponse {
                categories,
                page: Some(page),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl core::client_service_server::ClientService for CoreSim {
    async fn get_client_events(
        &self,
        request: Request<core::GetClientEventsRequest>,
    ) -> Reply<core::GetClientEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.client_feed.read(&m.start_id, m.limit)?;
            Ok(core::GetClientEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_clients(
        &self,
        request: Request<core::ListClientsRequest>,
    ) -> Reply<core::ListClientsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::Client> = s.clients.values().cloned().collect();
            let (clients, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListClientsResponse {
                clients,
                page: Some(page),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl core::user_service_server::UserService for CoreSim {
    async fn get_user_events(
        &self,
        request: Request<core::GetUserEventsRequest>,
    ) -> Reply<core::GetUserEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.user_feed.read(&m.start_id, m.limit)?;
            Ok(core::GetUserEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_users(
        &self,
        request: Request<core::ListUsersRequest>,
    ) -> Reply<core::ListUsersResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::User> = s.users.values().cloned().collect();
            let (users, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListUsersResponse {
                users,
                page: Some(page),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl core::segment_service_server::SegmentService for CoreSim {
    async fn get_segment_events(
        &self,
        request: Request<core::GetSegmentEventsRequest>,
    ) -> Reply<core::GetSegmentEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.segment_feed.read(&m.start_id, m.limit)?;
            Ok(core::GetSegmentEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_segments(
        &self,
        request: Request<core::ListSegmentsRequest>,
    ) -> Reply<core::ListSegmentsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::Segment> = s.segments.values().cloned().collect();
            let (segments, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListSegmentsResponse {
                segments,
                page: Some(page),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl core::order_service_server::OrderService for CoreSim {
    async fn get_order_events(
        &self,
        request: Request<core::GetOrderEventsRequest>,
    ) -> Reply<core::GetOrderEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.order_feed.read(&m.start_id, m.limit)?;
            Ok(core::GetOrderEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_orders(
        &self,
        request: Request<core::ListOrdersRequest>,
    ) -> Reply<core::ListOrdersResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::Order> = s.orders.values().cloned().collect();
            let (orders, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListOrdersResponse {
                orders,
                page: Some(page),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl core::document_service_server::DocumentService for CoreSim {
    async fn get_document_events(
        &self,
        request: Request<core::GetDocumentEventsRequest>,
    ) -> Reply<core::GetDocumentEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.document_feed.read(&m.start_id, m.limit)?;
            let events = events
                .into_iter()
                .filter(|e| {
                    m.types.is_empty()
                        || e.document
                            .as_ref()
                            .is_some_and(|d| m.types.contains(&d.r#type))
                })
                .collect();
            Ok(core::GetDocumentEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_documents(
        &self,
        request: Request<core::ListDocumentsRequest>,
    ) -> Reply<core::ListDocumentsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::Document> = s
                .documents
                .iter()
                .filter(|d| m.types.is_empty() || m.types.contains(&d.r#type))
                .filter(|d| m.sale_date_from.is_empty() || d.sale_date >= m.sale_date_from)
                .cloned()
                .collect();
            let (documents, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListDocumentsResponse {
                documents,
                page: Some(page),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl core::declaration_service_server::DeclarationService for CoreSim {
    async fn get_declaration_events(
        &self,
        request: Request<core::GetDeclarationEventsRequest>,
    ) -> Reply<core::GetDeclarationEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.declaration_feed.read(&m.start_id, m.limit)?;
            let events = events
                .into_iter()
                .filter(|e| {
                    m.declaration_type_id.is_empty()
                        || e.declaration_type_id == m.declaration_type_id
                })
                .collect();
            Ok(core::GetDeclarationEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_declaration_versions(
        &self,
        request: Request<core::ListDeclarationVersionsRequest>,
    ) -> Reply<core::ListDeclarationVersionsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::DeclarationVersion> = s
                .versions
                .iter()
                .filter(|v| {
                    m.declaration_type_id.is_empty()
                        || v.declaration_type_id == m.declaration_type_id
                })
                .cloned()
                .collect();
            let (versions, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListDeclarationVersionsResponse {
                versions,
                page: Some(page),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl core::promotion_service_server::PromotionService for CoreSim {
    async fn get_coupon_pool_events(
        &self,
        request: Request<core::GetCouponPoolEventsRequest>,
    ) -> Reply<core::GetCouponPoolEventsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let (events, next_id) = s.pool_feed.read(&m.start_id, m.limit)?;
            Ok(core::GetCouponPoolEventsResponse { events, next_id })
        })
        .await
    }

    async fn list_coupon_pools(
        &self,
        request: Request<core::ListCouponPoolsRequest>,
    ) -> Reply<core::ListCouponPoolsResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let all: Vec<core::CouponPool> = s.pools.values().cloned().collect();
            let (pools, page) = page_of(&all, m.page_number, m.page_size);
            Ok(core::ListCouponPoolsResponse {
                pools,
                page: Some(page),
            })
        })
        .await
    }

    async fn add_coupon_codes(
        &self,
        request: Request<core::AddCouponCodesRequest>,
    ) -> Reply<core::AddCouponCodesResponse> {
        let m = request.into_inner();
        self.call(|s| {
            let open = s.pools.get(&m.pool_id).is_some_and(|p| p.active);
            let results = m
                .codes
                .into_iter()
                .map(|c| {
                    *s.code_requests.entry(c.code.clone()).or_default() += 1;
                    let outcome = if !open {
                        core::CodeOutcome::Rejected
                    } else if s.codes.contains_key(&c.code) {
                        core::CodeOutcome::AlreadyPresent
                    } else {
                        s.codes
                            .insert(c.code.clone(), (m.pool_id.clone(), c.valid_until));
                        core::CodeOutcome::Added
                    };
                    core::CodeResult {
                        code: c.code,
                        outcome: outcome as i32,
                        reason: if open {
                            String::new()
                        } else {
                            format!("pool {} is not open", m.pool_id)
                        },
                    }
                })
                .collect();
            Ok(core::AddCouponCodesResponse { results })
        })
        .await
    }
}
