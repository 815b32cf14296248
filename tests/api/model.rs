//! Model-based test: random sequences of earn / redeem / reserve / commit / release / adjust /
//! time passing (reservations and lots expiring), with duplicate request ids and exact retries,
//! run through gRPC against the real service on SQLite and against a plain in-memory model of
//! the ledger rules. After every step the outcome (success or status code) and the touched
//! client's total, available and reserved points must equal the model's; after every sequence
//! every balance must, and the stored ledger must pass the invariant check.
//!
//! `MODEL_CASES` and `MODEL_STEPS` (defaults 20 × 500 = 10,000 steps) make longer runs.

use std::collections::HashMap;

use chrono::{DateTime, Days, Months, Utc};
use one_loyalty::domain::clock::Clock;
use one_loyalty::proto::loyalty::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rust_decimal::Decimal;
use tonic::Code;

use crate::faults::earning_and_spending;
use crate::helpers::{Backend, ClockedApp};

const CLIENTS: usize = 3;
const COUPON_POINTS: i64 = 7;
/// P1's points per unit, as `earning_and_spending` sets them.
const BASE_POINTS: i64 = 10;
/// Request ids are drawn from small ranges, so that many are used twice.
const IDS: u8 = 120;

#[derive(Debug, Clone)]
enum Op {
    /// Delivers invoice `d-{doc}`: the client and quantity follow from the number, so a second
    /// delivery is the same document.
    Earn {
        doc: u8,
    },
    Redeem {
        client: usize,
        id: u8,
    },
    Reserve {
        client: usize,
        id: u8,
        points: i64,
    },
    /// One of the three newest reservations (`pick` modulo their count).
    Commit {
        pick: usize,
        id: u8,
    },
    Release {
        pick: usize,
        id: u8,
    },
    Adjust {
        client: usize,
        id: u8,
        points: i64,
    },
    /// Days pass; the reservation and lot jobs run.
    Pass {
        days: u64,
    },
    /// The previous call again, exactly.
    Retry,
}

impl Op {
    /// The operation's name, for the tally of outcomes.
    fn name(&self) -> &'static str {
        match self {
            Self::Earn { .. } => "Earn",
            Self::Redeem { .. } => "Redeem",
            Self::Reserve { .. } => "Reserve",
            Self::Commit { .. } => "Commit",
            Self::Release { .. } => "Release",
            Self::Adjust { .. } => "Adjust",
            Self::Pass { .. } => "Pass",
            Self::Retry => "Retry",
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    prop_oneof![
        4 => (0..40u8).prop_map(|doc| Op::Earn { doc }),
        3 => (client.clone(), 0..IDS).prop_map(|(client, id)| Op::Redeem { client, id }),
        3 => (client.clone(), 0..IDS, 1..40i64)
            .prop_map(|(client, id, points)| Op::Reserve { client, id, points }),
        2 => (any::<usize>(), 0..IDS).prop_map(|(pick, id)| Op::Commit { pick, id }),
        2 => (any::<usize>(), 0..IDS).prop_map(|(pick, id)| Op::Release { pick, id }),
        2 => (client, 0..IDS, prop_oneof![-30..0i64, 1..40i64])
            .prop_map(|(client, id, points)| Op::Adjust { client, id, points }),
        1 => (1..45u64).prop_map(|days| Op::Pass { days }),
        2 => Just(Op::Retry),
    ]
}

fn client_name(index: usize) -> String {
    format!("m-{index}")
}

// ---------------------------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Committed,
    Released,
    Expired,
}

#[derive(Debug, Clone)]
struct ModelReservation {
    client: usize,
    points: i64,
    status: State,
    /// The service's id, learned from its answer.
    id: String,
}

#[derive(Debug, Clone, Default)]
struct ModelClient {
    total: i64,
    available: i64,
    reserved: i64,
    /// Earn lots, oldest first: (expires at, remaining).
    lots: Vec<(DateTime<Utc>, i64)>,
}

impl ModelClient {
    /// Spends take from the oldest lots first; what is beyond the lots is not in any lot.
    fn consume(&mut self, mut points: i64) {
        for lot in &mut self.lots {
            let take = lot.1.min(points);
            lot.1 -= take;
            points -= take;
            if points == 0 {
                break;
            }
        }
    }
}

/// What a call should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Refused(Code),
}

#[derive(Debug, Default)]
struct Model {
    now: Option<DateTime<Utc>>,
    clients: Vec<ModelClient>,
    /// Documents delivered: number -> sale date of the first delivery.
    documents: HashMap<u8, String>,
    reservations: Vec<ModelReservation>,
    /// Successful requests per operation and id: what they were for.
    redeemed: HashMap<u8, usize>,
    reserved: HashMap<u8, (usize, i64, usize)>,
    committed: HashMap<u8, usize>,
    released: HashMap<u8, usize>,
    adjusted: HashMap<u8, (usize, i64)>,
}

fn doc_client(doc: u8) -> usize {
    usize::from(doc) % CLIENTS
}

fn doc_units(doc: u8) -> i64 {
    i64::from(doc % 5) + 1
}

impl Model {
    fn now(&self) -> DateTime<Utc> {
        self.now.unwrap_or_default()
    }

    fn earn(&mut self, doc: u8, sale_date: &str) -> Expect {
        if self.documents.contains_key(&doc) {
            return Expect::Ok;
        }
        self.documents.insert(doc, sale_date.to_owned());
        let points = BASE_POINTS * doc_units(doc);
        let expires = self.now() + Months::new(1);
        let client = &mut self.clients[doc_client(doc)];
        client.total += points;
        client.available += points;
        client.lots.push((expires, points));
        Expect::Ok
    }

    fn redeem(&mut self, client: usize, id: u8) -> Expect {
        if let Some(&first) = self.redeemed.get(&id) {
            return if first == client {
                Expect::Ok
            } else {
                Expect::Refused(Code::AlreadyExists)
            };
        }
        let state = &mut self.clients[client];
        if state.available < COUPON_POINTS {
            return Expect::Refused(Code::FailedPrecondition);
        }
        state.available -= COUPON_POINTS;
        state.total -= COUPON_POINTS;
        state.consume(COUPON_POINTS);
        self.redeemed.insert(id, client);
        Expect::Ok
    }

    /// Returns the expectation and, on a new reservation, its index.
    fn reserve(&mut self, client: usize, id: u8, points: i64) -> (Expect, Option<usize>) {
        if let Some(&(first_client, first_points, index)) = self.reserved.get(&id) {
            return if (first_client, first_points) == (client, points) {
                (Expect::Ok, Some(index))
            } else {
                (Expect::Refused(Code::AlreadyExists), None)
            };
        }
        let state = &mut self.clients[client];
        if state.available < points {
            return (Expect::Refused(Code::FailedPrecondition), None);
        }
        state.available -= points;
        state.reserved += points;
        self.reservations.push(ModelReservation {
            client,
            points,
            status: State::Held,
            id: String::new(),
        });
        let index = self.reservations.len() - 1;
        self.reserved.insert(id, (client, points, index));
        (Expect::Ok, Some(index))
    }

    fn settle(&mut self, index: usize, id: u8, commit: bool) -> Expect {
        let done = if commit {
            &self.committed
        } else {
            &self.released
        };
        if let Some(&first) = done.get(&id) {
            return if first == index {
                Expect::Ok
            } else {
                Expect::Refused(Code::AlreadyExists)
            };
        }
        let reservation = &mut self.reservations[index];
        if reservation.status != State::Held {
            return Expect::Refused(Code::FailedPrecondition);
        }
        let state = &mut self.clients[reservation.client];
        state.reserved -= reservation.points;
        if commit {
            reservation.status = State::Committed;
            state.total -= reservation.points;
            state.consume(reservation.points);
            self.committed.insert(id, index);
        } else {
            reservation.status = State::Released;
            state.available += reservation.points;
            self.released.insert(id, index);
        }
        Expect::Ok
    }

    fn adjust(&mut self, client: usize, id: u8, points: i64) -> Expect {
        if let Some(&first) = self.adjusted.get(&id) {
            return if first == (client, points) {
                Expect::Ok
            } else {
                Expect::Refused(Code::AlreadyExists)
            };
        }
        let state = &mut self.clients[client];
        state.total += points;
        state.available += points;
        if points < 0 {
            state.consume(-points);
        }
        self.adjusted.insert(id, (client, points));
        Expect::Ok
    }

    /// Time passes by more than the reservation TTL: the release job expires every held
    /// reservation, then the lot job expires what is left of every due lot, oldest first.
    /// Returns how many reservations and how many lots expired.
    fn pass(&mut self, days: u64) -> (usize, usize) {
        self.now = Some(self.now() + Days::new(days));
        let (mut reservations, mut lots) = (0, 0);
        for reservation in &mut self.reservations {
            if reservation.status == State::Held {
                reservations += 1;
                reservation.status = State::Expired;
                let state = &mut self.clients[reservation.client];
                state.reserved -= reservation.points;
                state.available += reservation.points;
            }
        }
        let now = self.now();
        for client in &mut self.clients {
            for lot in &mut client.lots {
                // As the service does: a lot whose points exceed what is available (a debit
                // that found no lot to take from came first) waits.
                if lot.0 <= now && lot.1 > 0 && client.available >= lot.1 {
                    lots += 1;
                    client.total -= lot.1;
                    client.available -= lot.1;
                    lot.1 = 0;
                }
            }
        }
        (reservations, lots)
    }
}

// ---------------------------------------------------------------------------------------------
// The service side

struct Harness {
    app: ClockedApp,
    coupon_id: String,
    model: Model,
    last: Option<Op>,
    steps: usize,
    /// Outcomes seen, by operation and code.
    outcomes: std::collections::BTreeMap<String, usize>,
}

fn outcome<T>(result: &Result<T, tonic::Status>) -> Expect {
    match result {
        Ok(_) => Expect::Ok,
        Err(status) => Expect::Refused(status.code()),
    }
}

fn points(text: &str) -> i64 {
    let value: Decimal = text.parse().unwrap_or(Decimal::MIN);
    i64::try_from(value).unwrap_or(i64::MIN)
}

impl Harness {
    async fn new() -> Self {
        let app = ClockedApp::new(Backend::Sqlite).await;
        let names: Vec<String> = (0..CLIENTS).map(client_name).collect();
        for client in &names {
            app.seed_client(client, true).await;
        }
        let coupon_id = earning_and_spending(&app, &names, "model coupon").await;
        app.settings_client()
            .update_settings(app.request(pb::UpdateSettingsRequest {
                request_id: "settings".into(),
                settings: Some(pb::TenantSettings {
                    expiry_months: 1,
                    reservation_ttl_seconds: 3600,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["expiry_months".into(), "reservation_ttl_seconds".into()],
                }),
                expected_revision: 0,
            }))
            .await
            .expect("settings");
        app.set_time("2026-03-22T10:00:00Z");
        let model = Model {
            now: Some(app.clock.now()),
            clients: vec![ModelClient::default(); CLIENTS],
            ..Model::default()
        };
        Self {
            app,
            coupon_id,
            model,
            last: None,
            steps: 0,
            outcomes: std::collections::BTreeMap::new(),
        }
    }

    /// A sale day closed whatever the hour: yesterday's is not until the tenant's grace after
    /// midnight (an hour by default) has passed.
    fn sale_date(&self) -> String {
        (self
            .model
            .now()
            .with_timezone(&chrono_tz::Europe::Warsaw)
            .date_naive()
            - Days::new(2))
        .to_string()
    }

    /// Runs one step on both sides; returns the client whose balance it may have touched.
    #[allow(clippy::too_many_lines)] // one arm per operation
    async fn step(&mut self, op: &Op) -> Result<Option<usize>, TestCaseError> {
        let op = match op {
            Op::Retry => match self.last.clone() {
                Some(last) => last,
                None => return Ok(None),
            },
            other => other.clone(),
        };
        self.last = Some(op.clone());
        let kind = op.name();
        self.steps += 1;
        let channel = self.app.channel.clone();
        let mut redeem = pb::redeem_service_client::RedeemServiceClient::new(channel.clone());
        let (expected, actual, touched) = match op {
            Op::Earn { doc } => {
                let sale_date = self
                    .model
                    .documents
                    .get(&doc)
                    .cloned()
                    .unwrap_or_else(|| self.sale_date());
                let client = doc_client(doc);
                let request = pb::ProcessInvoiceRequest {
                    request_id: format!("deliver-{doc}-{}", self.steps),
                    invoice: Some(pb::Document {
                        document_id: format!("d-{doc}"),
                        number: format!("FV/{doc}"),
                        client_id: client_name(client),
                        sale_date: sale_date.clone(),
                        lines: vec![pb::DocumentLine {
                            line_no: 1,
                            product_id: "P1".into(),
                            quantity: doc_units(doc).to_string(),
                            order_number: String::new(),
                            corrected_line_no: 0,
                        }],
                        ..Default::default()
                    }),
                };
                let result = pb::earn_service_client::EarnServiceClient::new(channel)
                    .process_invoice(self.app.request(request))
                    .await;
                if let Ok(response) = &result {
                    let status = response.get_ref().result.as_ref().map(|r| r.status);
                    prop_assert_eq!(status, Some(pb::DocumentStatus::Processed as i32));
                }
                (self.model.earn(doc, &sale_date), outcome(&result), client)
            }
            Op::Redeem { client, id } => {
                let result = redeem
                    .redeem_coupon(self.app.request(pb::RedeemCouponRequest {
                        request_id: format!("redeem-{id}"),
                        client_id: client_name(client),
                        coupon_id: self.coupon_id.clone(),
                        user_id: String::new(),
                    }))
                    .await;
                (self.model.redeem(client, id), outcome(&result), client)
            }
            Op::Reserve { client, id, points } => {
                let result = redeem
                    .reserve_points(self.app.request(pb::ReservePointsRequest {
                        request_id: format!("reserve-{id}"),
                        client_id: client_name(client),
                        basket_id: format!("basket-{id}"),
                        points: points.to_string(),
                        user_id: String::new(),
                    }))
                    .await;
                let (expected, index) = self.model.reserve(client, id, points);
                if let (Some(index), Ok(response)) = (index, &result) {
                    let id = response
                        .get_ref()
                        .reservation
                        .as_ref()
                        .map(|r| r.reservation_id.clone())
                        .unwrap_or_default();
                    let known = &mut self.model.reservations[index].id;
                    if known.is_empty() {
                        known.clone_from(&id);
                    }
                    prop_assert_eq!(&self.model.reservations[index].id, &id);
                }
                (expected, outcome(&result), client)
            }
            Op::Commit { pick, id } | Op::Release { pick, id } => {
                if self.model.reservations.is_empty() {
                    return Ok(None);
                }
                let count = self.model.reservations.len();
                let index = count - 1 - pick % count.min(3);
                let reservation = self.model.reservations[index].clone();
                let commit = matches!(op, Op::Commit { .. });
                let result = if commit {
                    redeem
                        .commit_reservation(self.app.request(pb::CommitReservationRequest {
                            request_id: format!("commit-{id}"),
                            reservation_id: reservation.id.clone(),
                            order_number: format!("order-{id}"),
                        }))
                        .await
                        .map(drop)
                } else {
                    redeem
                        .release_reservation(self.app.request(pb::ReleaseReservationRequest {
                            request_id: format!("release-{id}"),
                            reservation_id: reservation.id.clone(),
                        }))
                        .await
                        .map(drop)
                };
                (
                    self.model.settle(index, id, commit),
                    outcome(&result),
                    reservation.client,
                )
            }
            Op::Adjust { client, id, points } => {
                let result = pb::ledger_service_client::LedgerServiceClient::new(channel)
                    .adjust_points(self.app.request(pb::AdjustPointsRequest {
                        request_id: format!("adjust-{id}"),
                        client_id: client_name(client),
                        points: points.to_string(),
                        reason_code: "MODEL".into(),
                        reason: "model step".into(),
                        user_id: "tester".into(),
                    }))
                    .await;
                (
                    self.model.adjust(client, id, points),
                    outcome(&result),
                    client,
                )
            }
            Op::Pass { days } => {
                let next = self.model.now() + Days::new(days);
                self.app.set_time(&next.to_rfc3339());
                let expected = self.model.pass(days);
                let services = &self.app.app.services;
                let reservations = services
                    .redeem
                    .release_expired(10_000)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (_, lots) = services
                    .ledger
                    .run_lot_jobs(10_000)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    (reservations, lots),
                    expected,
                    "step {}: reservations and lots expired",
                    self.steps
                );
                *self.outcomes.entry("Pass".into()).or_default() += 1;
                *self
                    .outcomes
                    .entry("Pass: reservation expired".into())
                    .or_default() += reservations;
                *self.outcomes.entry("Pass: lot expired".into()).or_default() += lots;
                for client in 0..CLIENTS {
                    self.check_balance(client).await?;
                }
                return Ok(None);
            }
            Op::Retry => return Ok(None),
        };
        prop_assert_eq!(actual, expected, "step {}: {:?}", self.steps, self.last);
        *self
            .outcomes
            .entry(format!("{kind} {actual:?}"))
            .or_default() += 1;
        Ok(Some(touched))
    }

    async fn check_balance(&self, client: usize) -> Result<(), TestCaseError> {
        let balance = pb::ledger_service_client::LedgerServiceClient::new(self.app.channel.clone())
            .get_balance(self.app.request(pb::GetBalanceRequest {
                client_id: client_name(client),
                expiring_within_days: 0,
            }))
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .into_inner()
            .balance
            .unwrap_or_default();
        let model = &self.model.clients[client];
        prop_assert_eq!(
            (
                points(&balance.total),
                points(&balance.available),
                points(&balance.reserved)
            ),
            (model.total, model.available, model.reserved),
            "client {} after step {}: {:?}",
            client,
            self.steps,
            self.last
        );
        Ok(())
    }
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_service_behaves_as_the_reference_model_over_ten_thousand_random_steps() {
    let cases = env_number("MODEL_CASES", 20);
    let steps = env_number("MODEL_STEPS", 500) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let total_steps = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    // Every step runs: a sequence does not start with a retry, which would have nothing to retry.
    let first = op().prop_filter("nothing to retry yet", |op| !matches!(op, Op::Retry));
    let sequence = (first, prop::collection::vec(op(), steps.saturating_sub(1)))
        .prop_map(|(first, rest)| std::iter::once(first).chain(rest).collect::<Vec<_>>());
    let result = runner.run(&sequence, |ops| {
        runtime.block_on(async {
            let mut harness = Harness::new().await;
            for op in &ops {
                if let Some(client) = harness.step(op).await? {
                    harness.check_balance(client).await?;
                }
            }
            for client in 0..CLIENTS {
                harness.check_balance(client).await?;
            }
            harness.app.finish().await;
            total_steps.fetch_add(harness.steps, std::sync::atomic::Ordering::Relaxed);
            let mut seen = outcomes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (kind, count) in harness.outcomes {
                *seen.entry(kind).or_default() += count;
            }
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let total = total_steps.into_inner();
    let outcomes = outcomes
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    eprintln!("model-based test: {cases} sequences, {total} steps; outcomes: {outcomes:?}");
    // The sequences must reach the refusals too, or the model checks little.
    for kind in [
        "Redeem Refused(FailedPrecondition)",
        "Reserve Refused(AlreadyExists)",
        "Commit Refused(FailedPrecondition)",
        "Commit Ok",
        "Release Ok",
        "Pass: reservation expired",
        "Pass: lot expired",
    ] {
        assert!(outcomes.contains_key(kind), "no step ended in {kind}");
    }
    assert!(
        total >= (cases as usize) * steps,
        "too few steps ran: {total}"
    );
}
