//! The `milestones` binary without Kafka: `simulate` on the contract's worked examples
//! (`../shared/scenarios`), bad input, and `rules check`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn scenarios_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/scenarios");
    assert!(
        dir.is_dir(),
        "the contract's worked examples are missing: expected {} (the repository is checked out beside shared/)",
        dir.display()
    );
    dir
}

fn milestones(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_milestones"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start milestones");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("milestones ran")
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn every_worked_example_gives_its_final_views() {
    let dir = scenarios_dir();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read scenarios") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(scenario) = name.strip_suffix(".events.jsonl") else {
            continue;
        };
        let expected = std::fs::read_to_string(dir.join(format!("{scenario}.final.jsonl")))
            .unwrap_or_else(|e| panic!("{scenario}: no .final.jsonl: {e}"));
        let out = milestones(
            &["simulate", "--input", path.to_str().unwrap(), "--final"],
            None,
        );
        assert!(
            out.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            json_lines(&String::from_utf8_lossy(&out.stdout)),
            json_lines(&expected),
            "scenario {scenario}"
        );
        checked += 1;
    }
    assert!(
        checked >= 6,
        "only {checked} scenarios found in {}",
        dir.display()
    );
}

#[test]
fn out_of_order_seed_reports_placeholders_then_confirms_them() {
    let path = scenarios_dir().join("seed-out-of-order.events.jsonl");
    let out = milestones(&["simulate", "--input", path.to_str().unwrap()], None);
    assert!(out.status.success());
    let records = json_lines(&String::from_utf8_lossy(&out.stdout));
    let story: Vec<(u64, &str, bool)> = records
        .iter()
        .map(|r| {
            (
                r["sequence"].as_u64().unwrap(),
                r["milestone"].as_str().unwrap(),
                r["inferred"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        story,
        [
            (1, "ordered", true),
            (2, "preparing", true),
            (3, "ready", true),
            (4, "out_for_delivery", false),
            (5, "ordered", false),
            (6, "preparing", false),
        ]
    );
    let first = &records[0];
    assert_eq!(first["status"], "out_for_delivery");
    assert_eq!(first["evidence"], serde_json::json!(["last-mile:A:ofd"]));
    assert_eq!(first["reached_at"], Value::Null);
    assert_eq!(first["customer_id"], "C-1");
    assert!(first["rules_version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert_eq!(records[4]["reached_at"], 1_700_000_000_000i64);
}

#[test]
fn bad_lines_go_to_stderr_with_their_line_number_and_the_run_goes_on() {
    let good = std::fs::read_to_string(scenarios_dir().join("seed-in-order.events.jsonl")).unwrap();
    let good: Vec<&str> = good.lines().collect();
    let input = [
        good[0],
        "{\"event_id\": \"x\"",
        good[1],
        r#"{"event_id":"","order_id":"A","event_type":"X","source":"s","occurred_at":1}"#,
        r#"{"event_id":"q","order_id":"A","event_type":"X","source":"s","occurred_at":1,"items":[{"asin":"B","qty":-2}]}"#,
        good[2],
        good[3],
    ]
    .join("\n");
    let out = milestones(&["simulate", "--input", "-", "--final"], Some(&input));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with("-:2: "), "{stderr}");
    assert!(
        lines[1].starts_with("-:4: ") && lines[1].contains("event_id"),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with("-:5: ") && lines[2].contains("qty"),
        "{stderr}"
    );
    let expected =
        std::fs::read_to_string(scenarios_dir().join("seed-in-order.final.jsonl")).unwrap();
    assert_eq!(
        json_lines(&String::from_utf8_lossy(&out.stdout)),
        json_lines(&expected)
    );
}

#[test]
fn rules_check_accepts_the_shipped_model_and_refuses_a_broken_file() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/milestones.toml");
    let out = milestones(&["rules", "check", shipped.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("out_for_delivery")
            && summary.contains("Shipped where line_of_business = \"3p\""),
        "{summary}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(&shipped)
        .unwrap()
        .replace("implies = [\"ready\"]", "implies = [\"packed\"]");
    std::fs::write(&broken, &text).unwrap();
    let line = text.lines().position(|l| l.contains("\"packed\"")).unwrap() + 1;
    let out = milestones(&["rules", "check", broken.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:{line}: ", broken.display()))
            && stderr.contains("unknown milestone `packed`"),
        "{stderr}"
    );
}

#[test]
fn simulate_with_a_rules_file_uses_it() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/milestones.toml");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("version = \"", "version = \"custom-");
    std::fs::write(&rules, text).unwrap();
    let input =
        std::fs::read_to_string(scenarios_dir().join("seed-in-order.events.jsonl")).unwrap();
    let out = milestones(
        &[
            "simulate",
            "--input",
            "-",
            "--rules",
            rules.to_str().unwrap(),
        ],
        Some(&input),
    );
    assert!(out.status.success());
    let records = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert!(!records.is_empty());
    assert!(records
        .iter()
        .all(|r| r["rules_version"].as_str().unwrap().starts_with("custom-")));
}
