//! The real service process (`one-loyalty serve`) synchronizing from the simulated ONe and
//! killed with SIGKILL at random moments, then restarted: every item of every stream is stored
//! exactly once (each stream's count of stored items equals what its feed holds) and nothing is
//! skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use one_loyalty::persistence::entities::{consent_events, documents, sync_cursors};
use one_loyalty::sim::{CoreSim, SimSpec, SimState};
use sea_orm::{EntityTrait, PaginatorTrait};

use crate::fakes::start_sim;
use crate::helpers::{Backend, TestDb};

crate::per_backend!(killed_and_restarted => a_sync_killed_at_random_moments_stores_everything_once);

const SPEC: SimSpec = SimSpec {
    clients: 20,
    products: 50,
    invoices_per_day: 100,
    lines_per_invoice: 10,
    days: 3,
    seed: 11,
};

fn service(store: &TestDb, sim_url: &str) -> tokio::process::Child {
    crate::faults::spawn_service(
        store,
        crate::faults::free_port(),
        &[
            ("LOYALTY__CORE__ENDPOINT", sim_url),
            ("LOYALTY__SYNC__INTERVAL_MS", "100"),
            ("LOYALTY__SYNC__BATCH_SIZE", "5"),
            ("LOYALTY__JOBS__ENABLED", "false"),
            ("LOYALTY__OUTBOX__ENABLED", "false"),
        ],
    )
}

/// Items stored per stream, as the cursors count them.
async fn stored(store: &TestDb) -> BTreeMap<String, i64> {
    sync_cursors::Entity::find()
        .all(&store.db)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.stream, c.items_synced))
        .collect()
}

async fn a_sync_killed_at_random_moments_stores_everything_once(backend: Backend) {
    let start = chrono::Utc::now();
    let sim = CoreSim::new(SimState::generate(SPEC, start));
    let sim_url = start_sim(&sim).await;
    let store = TestDb::new(backend).await;
    let documents_in_feed = i64::from(SPEC.invoices_per_day * SPEC.days);

    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut cut_mid_documents = 0;
    let mut kills = 0;
    let mut seen = 0;
    while kills < 5 && seen < documents_in_feed {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = service(&store, &sim_url);
        // Kill once the documents stream is moving, at a random moment after.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stored(&store).await.get("DOCUMENTS").copied().unwrap_or(0) <= seen
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng % 80)).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("killed");
        kills += 1;
        seen = stored(&store).await.get("DOCUMENTS").copied().unwrap_or(0);
        if seen > 0 && seen < documents_in_feed {
            cut_mid_documents += 1;
        }
    }
    assert!(cut_mid_documents >= 1, "no kill landed mid-sync");

    let mut child = service(&store, &sim_url);
    let deadline = tokio::time::Instant::now() + Duration::from_mins(2);
    while stored(&store).await.get("DOCUMENTS").copied().unwrap_or(0) < documents_in_feed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up: {:?}",
            stored(&store).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.start_kill().expect("stop");
    child.wait().await.expect("stopped");

    // Every feed item stored exactly once: a change applied without its cursor would be applied
    // again after the restart and counted twice.
    let consents = 20 + 2 * 4;
    let orders = documents_in_feed / 2;
    assert_eq!(
        stored(&store).await,
        BTreeMap::from([
            ("CLIENTS".to_owned(), 20),
            ("COUPON_POOLS".to_owned(), 1),
            // No declaration type is configured, so no agreement versions are read.
            ("DECLARATIONS".to_owned(), consents),
            ("DOCUMENTS".to_owned(), documents_in_feed),
            ("ORDERS".to_owned(), orders),
            ("PRODUCTS".to_owned(), 50 + 5),
            ("SEGMENTS".to_owned(), 2),
            ("USERS".to_owned(), 20),
        ])
    );
    assert_eq!(
        documents::Entity::find()
            .count(&store.db)
            .await
            .expect("documents"),
        u64::try_from(documents_in_feed).expect("count")
    );
    assert_eq!(
        consent_events::Entity::find()
            .count(&store.db)
            .await
            .expect("consents"),
        u64::try_from(consents).expect("count")
    );
    eprintln!("{cut_mid_documents} of {kills} kills landed in the middle of the documents stream");
    store.finish().await;
}
