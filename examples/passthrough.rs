//! The ceiling of the pipeline benchmark: consumes the input topic as a consumer group and,
//! in transactions like the service's (one every 100 ms, offsets included), forwards each
//! record unchanged to one output topic. No decoding, no engine, no state. It consumes the
//! way the service does (see `support/forward.rs`).
//!
//! `passthrough BOOTSTRAP INPUT OUTPUT GROUP COUNT`: exits after COUNT records are committed
//! and prints `records seconds` on standard output. Used by `deploy/local/bench-pipeline`.

#[path = "support/forward.rs"]
mod forward;

use std::time::Instant;

use order_milestones::emit::txn;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the service does, so that the ceiling allocates as it does.
    order_milestones::alloc::keep_memory();
    // From the start, as the service is timed: clients, producer id and group join count.
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, input, output, group, count] = args.as_slice() else {
        return Err("usage: passthrough BOOTSTRAP INPUT OUTPUT GROUP COUNT".into());
    };
    let committed = forward::forward_all(
        bootstrap,
        input,
        group,
        &format!("{group}-passthrough"),
        &[],
        &[output.as_str()],
        count.parse()?,
        |producer, topics, outboxes, _, record| {
            // The input is keyed by order id: every record has a key.
            let key = record.key().unwrap_or_default();
            match record.payload() {
                // Produced together after the batch, as the service's change records are.
                Some(payload) => {
                    outboxes[0].push_copy(key, payload);
                    Ok(())
                }
                None => txn::send_to(producer, &topics[0], None, key, None),
            }
        },
    )?;
    println!("{committed} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
