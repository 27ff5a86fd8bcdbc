//! `milestones simulate`: the engine without Kafka, for trying rules and replaying a file of
//! JSON events (contract section 5).

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

use compact_str::CompactString;

use crate::engine::{Engine, OrderEvent, OrderGraph};

/// What a simulation saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub bad_lines: u64,
    pub records: u64,
}

/// Reads one JSON event per line from `input` and writes, one JSON object per line, each
/// milestone change record as the service would emit it, or with `final_views` one order
/// view per order sorted by order id. A bad line is reported on `errors` as
/// `NAME:LINE: reason` and the run goes on; blank lines are skipped.
///
/// Errors: only I/O errors of `input`, `output` or `errors`.
pub fn run(
    engine: &Engine,
    input: impl BufRead,
    input_name: &str,
    final_views: bool,
    mut output: impl Write,
    mut errors: impl Write,
) -> io::Result<Summary> {
    let mut orders: BTreeMap<CompactString, OrderGraph> = BTreeMap::new();
    let mut summary = Summary::default();
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = match OrderEvent::from_json(line.as_bytes()) {
            Ok(event) => event,
            Err(error) => {
                summary.bad_lines += 1;
                writeln!(errors, "{input_name}:{}: {error}", index + 1)?;
                continue;
            }
        };
        summary.events += 1;
        let graph = orders
            .entry(event.order_id.clone())
            .or_insert_with(|| OrderGraph::new(event.order_id.clone()));
        let applied = engine.apply(graph, event);
        summary.records += applied.changes.len() as u64;
        if !final_views {
            for change in &applied.changes {
                serde_json::to_writer(&mut output, change)?;
                output.write_all(b"\n")?;
            }
        }
    }
    if final_views {
        for graph in orders.values() {
            serde_json::to_writer(&mut output, &engine.view(graph))?;
            output.write_all(b"\n")?;
        }
    }
    output.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Rules;
    use std::sync::Arc;

    fn simulate(input: &str, final_views: bool) -> (String, String, Summary) {
        let engine = Engine::new(Arc::new(Rules::builtin().unwrap()));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let summary = run(
            &engine,
            input.as_bytes(),
            "in.jsonl",
            final_views,
            &mut out,
            &mut err,
        )
        .unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            summary,
        )
    }

    const CREATED: &str = r#"{"event_id":"c","order_id":"A","event_type":"OrderCreated","source":"ordering","occurred_at":10,"items":[{"asin":"B1","qty":1}]}"#;
    const PACKED: &str = r#"{"event_id":"p","order_id":"A","event_type":"OrderPacked","source":"fulfillment","occurred_at":20}"#;

    #[test]
    fn bad_lines_are_reported_with_their_number_and_the_run_goes_on() {
        let input = format!("{CREATED}\nnot json\n\n{{\"event_id\":\"x\"}}\n{PACKED}\n");
        let (out, err, summary) = simulate(&input, false);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].starts_with("in.jsonl:2: not a valid event"),
            "{err}"
        );
        assert!(
            lines[1].starts_with("in.jsonl:4: not a valid event"),
            "{err}"
        );
        assert!(lines[1].contains("order_id"), "{err}");
        assert_eq!(
            summary,
            Summary {
                events: 2,
                bad_lines: 2,
                records: 3
            }
        );
        // ordered; then preparing (inferred) and ready: nothing from the bad lines.
        let records: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let seen: Vec<(&str, bool, u64)> = records
            .iter()
            .map(|r| {
                (
                    r["milestone"].as_str().unwrap(),
                    r["inferred"].as_bool().unwrap(),
                    r["sequence"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("ordered", false, 1),
                ("preparing", true, 2),
                ("ready", false, 3)
            ]
        );
        assert!(records.iter().all(|r| r["order_id"] == "A"));
        assert!(records
            .iter()
            .all(|r| r["status"] == "ready" || r["sequence"] == 1));
    }

    #[test]
    fn final_prints_one_view_per_order_sorted() {
        let other = CREATED.replace("\"A\"", "\"0\"");
        let (out, _, _) = simulate(&format!("{CREATED}\n{other}\n"), true);
        let ids: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["order_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["0", "A"]);
    }
}
