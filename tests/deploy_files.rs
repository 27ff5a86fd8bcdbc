//! The deployment files configure the service through `MILESTONES__...` variables; a typo
//! there would only show when a pod fails to start. Each file's variables go through the
//! service's own loader (`Config::load`, unknown fields refused) and must give the values
//! the file means.

use figment::Jail;
use order_milestones::config::Config;
use serde::Deserialize;
use serde_yaml::Value;

const SECRET: &str = "a secret of at least thirty-two bytes, for the test";

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// Loads the configuration with exactly `vars` set.
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
fn load_with(vars: &[(String, String)]) -> Config {
    let mut loaded = None;
    Jail::expect_with(|jail| {
        jail.clear_env();
        for (name, value) in vars {
            jail.set_env(name, value);
        }
        loaded = Some(Config::load(None).map_err(|e| e.to_string())?);
        Ok(())
    });
    loaded.expect("loaded")
}

#[test]
fn the_kubernetes_statefulset_configures_what_it_means() {
    let documents = yaml_documents("deploy/k8s/milestones.yaml");
    let statefulset = documents
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    let container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["command"],
        serde_yaml::from_str::<Value>("[milestones, run]").unwrap(),
        "the image's CMD is plain `milestones`: the container must run `milestones run`"
    );
    let headless = documents
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert_eq!(
        statefulset["spec"]["serviceName"], headless["metadata"]["name"],
        "the pods' DNS names come from the headless Service"
    );
    let vars: Vec<(String, String)> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|var| {
            let name = var["name"].as_str()?;
            name.starts_with("MILESTONES__").then(|| {
                let value = match var["value"].as_str() {
                    Some(value) => value.replace("$(POD_NAME)", "milestones-0"),
                    None => SECRET.to_string(), // valueFrom: the secret
                };
                (name.to_string(), value)
            })
        })
        .collect();
    assert!(vars.len() >= 6, "{vars:?}");
    let config = load_with(&vars);
    assert_eq!(config.application.instance_id, "milestones-0");
    assert_eq!(
        config.http.advertised_url.as_deref(),
        Some("http://milestones-0.milestones:8080")
    );
    assert_eq!(config.auth.hs256_secret.as_deref(), Some(SECRET));
    assert_eq!(
        config.state.dir,
        std::path::PathBuf::from("/var/lib/milestones/state")
    );
}

#[test]
fn the_compose_service_configures_what_it_means() {
    let compose = yaml_documents("docker-compose.yml").remove(0);
    let environment = compose["services"]["milestones"]["environment"]
        .as_mapping()
        .expect("milestones.environment");
    let vars: Vec<(String, String)> = environment
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_string(),
            };
            (name.as_str().expect("name").to_string(), value)
        })
        .collect();
    let config = load_with(&vars);
    assert_eq!(config.kafka.bootstrap_servers, "kafka:19092");
    assert_eq!(config.application.instance_id, "milestones-0");
    assert_eq!(
        config.http.advertised_url.as_deref(),
        Some("http://milestones:8080")
    );
    assert!(
        config
            .auth
            .hs256_secret
            .as_ref()
            .is_some_and(|s| s.len() >= 32),
        "the demo secret must be long enough for the service to start"
    );
}
