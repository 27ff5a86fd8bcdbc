//! An open-loop HTTP load generator for `GET /orders/{id}`: requests leave on a fixed
//! schedule (RATE per second) whatever the answers do, and each latency is measured from
//! the request's *scheduled* time, so a stalled server shows up as latency instead of as a
//! lower rate (no coordinated omission; `wrk` measures closed-loop, `wrk2` is not packaged
//! here).
//!
//! ```text
//! http_load BASE_URL TOKEN PREFIX ORDERS RATE SECONDS [CONNECTIONS]
//! ```
//!
//! Order ids are PREFIX followed by a 7-digit number below ORDERS (those of `milestones
//! generate --order-prefix PREFIX --orders ORDERS`), picked at random. Prints, per 5 s
//! window and overall: requests, statuses, p50, p90, p99, p99.9 and max, in milliseconds;
//! then the same over the 200 answers alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Mutex, Semaphore};

#[derive(Default)]
struct Window {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    /// The latencies of the 200 answers alone (an order read and its view built, where a
    /// 404 only looked the key up).
    ok_us: Vec<u64>,
}

fn report(name: &str, window: &mut Window) {
    let l = &mut window.latencies_us;
    if l.is_empty() {
        return;
    }
    l.sort_unstable();
    let q = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
    let statuses: Vec<String> = window
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}:{n}"))
        .collect();
    println!(
        "{name:<10} requests {:>6}  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms  statuses {}",
        l.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        *l.last().unwrap_or(&0) as f64 / 1000.0,
        statuses.join(" ")
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        eprintln!("usage: http_load BASE_URL TOKEN PREFIX ORDERS RATE SECONDS [CONNECTIONS]");
        std::process::exit(2);
    }
    let base = args[0].trim_end_matches('/').to_string();
    let token = args[1].clone();
    let prefix = args[2].clone();
    let orders: u64 = args[3].parse()?;
    let rate: f64 = args[4].parse()?;
    let seconds: f64 = args[5].parse()?;
    let connections: usize = args.get(6).map_or(Ok(64), |c| c.parse())?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()?;
    // At most CONNECTIONS requests in flight; a request that has to wait for one is still
    // timed from its scheduled start.
    let slots = Arc::new(Semaphore::new(connections));
    let windows: Arc<Mutex<BTreeMap<u64, Window>>> = Arc::default();
    let total = (rate * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total as usize);
    let mut rng = rand::rng();
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let url = format!(
            "{base}/orders/{prefix}{:07}",
            rng.random_range(0..orders.max(1))
        );
        let (client, token, slots, windows) = (
            client.clone(),
            token.clone(),
            slots.clone(),
            windows.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire().await;
            let status = match client.get(&url).bearer_auth(&token).send().await {
                Ok(response) => {
                    let status = response.status().as_u16().to_string();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => "error".to_string(),
            };
            let latency = Instant::now().saturating_duration_since(scheduled.into_std());
            let window = scheduled.duration_since(start).as_secs() / 5;
            let mut windows = windows.lock().await;
            let w = windows.entry(window).or_default();
            w.latencies_us.push(latency.as_micros() as u64);
            if status == "200" {
                w.ok_us.push(latency.as_micros() as u64);
            }
            *w.statuses.entry(status).or_default() += 1;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut windows = std::mem::take(&mut *windows.lock().await);
    let mut all = Window::default();
    for (k, w) in windows.iter_mut() {
        all.latencies_us.extend_from_slice(&w.latencies_us);
        all.ok_us.extend_from_slice(&w.ok_us);
        for (s, n) in &w.statuses {
            *all.statuses.entry(s.clone()).or_default() += n;
        }
        report(&format!("{}-{} s", k * 5, k * 5 + 5), w);
    }
    println!(
        "offered {rate:.0} req/s for {seconds:.0} s: {total} requests, {:.0} req/s achieved",
        total as f64 / elapsed
    );
    report("overall", &mut all);
    let mut ok = Window {
        statuses: BTreeMap::from([("200".to_string(), all.ok_us.len() as u64)]),
        latencies_us: std::mem::take(&mut all.ok_us),
        ok_us: Vec::new(),
    };
    report("200 only", &mut ok);
    Ok(())
}
