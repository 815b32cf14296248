//! Use cases, one module per gRPC service. Each owns an error enum; none names tonic or the ORM.

pub mod access;
pub mod agreements;
pub mod coupons;
pub mod earn;
pub mod idempotency;
pub mod import;
pub mod ledger;
pub mod outbox;
pub mod pricing;
pub mod promotions;
pub mod redeem;
pub mod rules;
pub mod seen;
pub mod settings;
pub mod sync;

/// A random id for something this service creates (rules, coupons): 16 characters of `a-z0-9`
/// from the thread's CSPRNG, so ids reveal nothing of order or count.
pub(crate) fn random_id() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(16)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}

/// A random id whose start is the creation time, so that ids sort by age (newest-first lists
/// page by id). Ids name records; they are not secrets, and codes are never derived from them.
pub(crate) fn time_ordered_id(prefix: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let micros = u64::try_from(at.timestamp_micros()).unwrap_or(0);
    format!("{prefix}_{micros:014x}{}", &random_id()[..10])
}

/// A page of the items that pass `keep`, read from `fetch` in id order, `page_size` at a time,
/// until the page is full or the source ends. Returns the page and the id to continue after
/// (`None` on the last page). Filtering after reading keeps the stores' queries simple; a page
/// may need several reads when the filter is selective.
pub(crate) async fn filtered_page<T, U, E, F>(
    page_size: u64,
    mut after: Option<String>,
    mut fetch: impl FnMut(Option<String>) -> F,
    key: impl Fn(&T) -> String,
    mut keep: impl FnMut(T) -> Option<U>,
) -> Result<(Vec<U>, Option<String>), E>
where
    F: std::future::Future<Output = Result<Vec<T>, E>>,
{
    let page_size = page_size.max(1);
    let mut page = Vec::new();
    loop {
        let batch = fetch(after.clone()).await?;
        let exhausted = (batch.len() as u64) < page_size;
        for item in batch {
            after = Some(key(&item));
            page.extend(keep(item));
            if page.len() as u64 == page_size {
                return Ok((page, after));
            }
        }
        if exhausted {
            return Ok((page, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filtered_page;

    /// Items 1..=9 read in id order, `size` per read as the stores do; the filter keeps the
    /// even ones.
    async fn page_of_evens(after: Option<String>, size: u64) -> (Vec<u32>, Option<String>) {
        let items: Vec<u32> = (1..=9).collect();
        let fetch = |after: Option<String>| {
            let start = after.map_or(0, |a| a.parse::<u32>().unwrap_or(0));
            let batch: Vec<u32> = items
                .iter()
                .copied()
                .filter(|i| *i > start)
                .take(usize::try_from(size).unwrap_or(usize::MAX))
                .collect();
            async move { Ok::<_, std::convert::Infallible>(batch) }
        };
        let keep = |i: u32| i.is_multiple_of(2).then_some(i);
        match filtered_page(size, after, fetch, u32::to_string, keep).await {
            Ok(page) => page,
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn a_filtered_page_reads_on_until_full_and_says_where_to_continue() {
        assert_eq!(page_of_evens(None, 2).await, (vec![2, 4], Some("4".into())));
        assert_eq!(
            page_of_evens(Some("4".into()), 2).await,
            (vec![6, 8], Some("8".into()))
        );
        assert_eq!(
            page_of_evens(Some("8".into()), 2).await,
            (vec![], None),
            "the source ends"
        );
        assert_eq!(page_of_evens(None, 10).await, (vec![2, 4, 6, 8], None));
    }
}
