//! The `milestones` binary: parses the command line, loads config, wires, and runs.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use order_milestones::config::{hostname, Config, Format};
use order_milestones::engine::{Engine, Rules};
use order_milestones::generate::{self, GenerateConfig, Generator, KafkaTarget};
use order_milestones::{api, processor, simulate, tls, topics};

#[global_allocator]
static ALLOCATOR: order_milestones::alloc::Allocator = order_milestones::alloc::Allocator;

/// order-milestones: tells a customer where their order is.
#[derive(Parser)]
#[command(name = "milestones", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the stream processor: consumes the input topics as a member of the consumer
    /// group and produces milestone records, order views and the state changelog, exactly
    /// once. Stops on SIGTERM or SIGINT after committing; a second signal exits at once.
    Run {
        /// Configuration file (see the README); defaults and MILESTONES__ variables apply.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Runs the engine over a file of JSON events, without Kafka.
    Simulate {
        /// One JSON event per line; `-` for standard input.
        #[arg(long)]
        input: PathBuf,
        /// Rules file; the built-in default model when omitted.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Print one order view per order (sorted by order id) instead of change records.
        #[arg(long = "final")]
        final_views: bool,
    },
    /// Generates demo orders (out of order and redelivered as asked; the same stream for the
    /// same seed): JSON events on standard output, one per line, or with --topic or
    /// --config produced to a Kafka input topic, keyed by order id.
    Generate {
        /// How many orders.
        #[arg(long, default_value_t = 10)]
        orders: u64,
        /// Share of events that arrive after a later event of their order.
        #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
        out_of_order: f64,
        /// Share of events delivered twice.
        #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
        redelivered: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Order ids are PREFIX followed by a number.
        #[arg(long, default_value = "O-")]
        order_prefix: String,
        /// Produce to this topic; default (with --config): the first input topic.
        #[arg(long)]
        topic: Option<String>,
        /// Configuration file (broker, schema registry, topics); defaults and MILESTONES__
        /// variables apply. Giving it produces to Kafka.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Record values on Kafka: avro (Confluent wire format, avro/order_event.avsc
        /// registered under TOPIC-value) or json; default: topics.input_format.
        #[arg(long)]
        format: Option<String>,
        /// Avro only: write the events with this schema instead (registered under
        /// TOPIC-value), as a producer on a newer schema would: fields it adds need
        /// defaults. For example deploy/local/order_event_v2.avsc.
        #[arg(long)]
        writer_schema: Option<PathBuf>,
        /// `occurred_at` of the first order, epoch milliseconds (orders start a minute apart,
        /// closer with more than 64 in flight: see --in-flight).
        #[arg(long, default_value_t = GenerateConfig::default().start_ms)]
        start_ms: i64,
        /// How many orders are under way at once, their events interleaved: the larger, the
        /// further apart an order's events lie in the stream (and in the service's
        /// transactions). With more than 64, orders start proportionally closer together in
        /// event time, so that those under way span the same hour. At least 1.
        #[arg(long, default_value_t = GenerateConfig::default().in_flight)]
        in_flight: usize,
        /// Produce at this many events per second (a steady load, for latency); default:
        /// as fast as the broker takes them.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Milestone rules files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The service's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// The topology in effect.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Prints a bearer token for the order API, signed with auth.hs256_secret: a customer's
    /// (`--sub CUSTOMER_ID`) or, with --operator, one that sees every order. For the demo
    /// and tests; production tokens come from the identity provider.
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The token's subject: the customer id whose orders it may see.
        #[arg(long)]
        sub: String,
        /// Give the token the operator role (auth.operator_role): every order.
        #[arg(long)]
        operator: bool,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Creates the topics that do not exist yet (inputs, outputs, changelog, dead letters)
    /// and checks that the inputs are co-partitioned; existing topics are left as they are.
    Apply {
        /// Configuration file (see the README); defaults and MILESTONES__ variables apply.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Prints the topics, formats and rules version for humans; needs no broker.
    Describe {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Checks a rules file and prints its model; exits 1 with FILE:LINE: reason if it is wrong.
    Check {
        /// The file to check; the built-in default model when omitted.
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    order_milestones::alloc::keep_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("milestones: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            // The HTTP clients' TLS set-up (tens of milliseconds), meanwhile.
            tls::prepare();
            init_logging();
            let config = load_config(config.as_deref())?;
            let rules = load_rules(config.rules.file.as_deref())?;
            run_processor(config, rules)
        }
        Command::Simulate {
            input,
            rules,
            final_views,
        } => {
            let engine = Engine::new(Arc::new(load_rules(rules.as_deref())?));
            let stdout = io::stdout().lock();
            let stderr = io::stderr().lock();
            let summary = if input.as_os_str() == "-" {
                simulate::run(
                    &engine,
                    io::stdin().lock(),
                    "-",
                    final_views,
                    stdout,
                    stderr,
                )
            } else {
                let name = input.display().to_string();
                let file = File::open(&input).with_context(|| format!("cannot open {name}"))?;
                simulate::run(
                    &engine,
                    BufReader::new(file),
                    &name,
                    final_views,
                    stdout,
                    stderr,
                )
            };
            match summary {
                Ok(_) => Ok(ExitCode::SUCCESS),
                // `milestones simulate ... | head` is a normal way to stop reading.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e).context("simulate"),
            }
        }
        Command::Generate {
            orders,
            out_of_order,
            redelivered,
            seed,
            order_prefix,
            topic,
            config,
            format,
            writer_schema,
            start_ms,
            in_flight,
            rate,
        } => {
            if let Some(rate) = rate {
                anyhow::ensure!(
                    rate > 0.0,
                    "--rate is {rate}: give events per second above 0"
                );
            }
            for (name, share) in [
                ("--out-of-order", out_of_order),
                ("--redelivered", redelivered),
            ] {
                anyhow::ensure!(
                    (0.0..1.0).contains(&share),
                    "{name} is {share}: give a share from 0 to below 1"
                );
            }
            anyhow::ensure!(in_flight > 0, "--in-flight is 0: give at least 1");
            let format = format.as_deref().map(parse_format).transpose()?;
            let generate = GenerateConfig {
                orders,
                out_of_order,
                redelivered,
                seed,
                order_prefix,
                start_ms,
                in_flight,
            };
            if topic.is_none() && config.is_none() {
                anyhow::ensure!(
                    format.is_none() && rate.is_none() && writer_schema.is_none(),
                    "--format, --rate and --writer-schema are for Kafka: give --topic or --config \
                     too (standard output is always JSON lines, as fast as it is read)"
                );
                return generate_to_stdout(generate);
            }
            let config = load_config(config.as_deref())?;
            let mut target = KafkaTarget::resolve(&config, topic, format);
            if let Some(path) = writer_schema {
                anyhow::ensure!(
                    target.format == Format::Avro,
                    "--writer-schema is for the avro format; topic {} is written as {}",
                    target.topic,
                    format_name(target.format)
                );
                target.writer_schema = Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("--writer-schema {}", path.display()))?,
                );
            }
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            let events = Generator::new(generate.clone());
            let produced = match rate {
                Some(rate) => generate::produce(
                    &config,
                    &target,
                    generate::paced(events, rate),
                    runtime.handle(),
                ),
                None => generate::produce(&config, &target, events, runtime.handle()),
            }
            .context("generate")?;
            eprintln!(
                "generate: {} records ({} orders) to {} ({} partitions) as {} in {:.2} s: \
                 {:.0} records/s",
                produced.records,
                generate.orders,
                target.topic,
                produced.partitions,
                format_name(target.format),
                produced.elapsed.as_secs_f64(),
                produced.rate()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules {
            command: RulesCommand::Check { file },
        } => match load_rules(file.as_deref()) {
            Ok(rules) => {
                print!("{rules}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("{error:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Topics {
            command: TopicsCommand::Apply { config },
        } => {
            let config = load_config(config.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            for applied in runtime.block_on(topics::apply(&config))? {
                match applied {
                    topics::Applied::Created(t) => println!(
                        "created {} ({} partitions, replication {}{})",
                        t.name,
                        t.partitions,
                        t.replication_factor,
                        t.configs
                            .iter()
                            .map(|(k, v)| format!(", {k}={v}"))
                            .collect::<String>()
                    ),
                    topics::Applied::Existed { name, partitions } => {
                        println!("exists  {name} ({partitions} partitions)")
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            config,
            sub,
            operator,
            ttl,
        } => {
            let config = load_config(config.as_deref())?;
            let token = api::auth::hs256_token(&config.auth, &sub, operator, ttl)
                .context("auth.hs256_secret is needed to sign tokens")?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology {
            command: TopologyCommand::Describe { config },
        } => {
            let config = load_config(config.as_deref())?;
            let rules = load_rules(config.rules.file.as_deref())?;
            print!("{}", topics::describe(&config, &rules));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Structured logs on standard error; `RUST_LOG` filters (default `info`), and
/// `MILESTONES_LOG_FORMAT=json` gives one JSON object per line.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    if std::env::var("MILESTONES_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The processor on a thread of its own; the tokio runtime serves the registry and the
/// signals. The first SIGTERM or SIGINT asks the processor to stop (commit, close the
/// stores, leave the group); if it has not stopped within `processing.shutdown_timeout_ms`,
/// or on a second signal, the process exits at once.
fn run_processor(config: Config, rules: Rules) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let bound = Duration::from_millis(config.processing.shutdown_timeout_ms);
    let flag = shutdown.clone();
    runtime.spawn(async move {
        signal().await;
        tracing::info!("stopping: committing and closing (a second signal exits at once)");
        flag.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = signal() => tracing::warn!("second signal: exiting now"),
            _ = tokio::time::sleep(bound) => tracing::error!(?bound, "did not stop in time: exiting now"),
        }
        std::process::exit(1);
    });
    let telemetry = processor::Telemetry::new().context("metrics")?;
    let engine = Engine::new(Arc::new(rules));
    let auth = api::Authenticator::new(&config.auth).context("auth")?;
    // The endpoints come up first, so that /healthz and /readyz tell the truth from the start.
    let server = runtime
        .block_on(api::Server::bind_router(
            config.http.listen,
            axum::Router::new(),
        ))
        .context("http")?;
    // The processor next, while the order API is set up here. (Its forwarding client shares
    // the registry client's TLS set-up, `tls::client_builder`: whichever comes first makes it.)
    let processor = {
        let (config, engine, telemetry) = (config.clone(), engine.clone(), telemetry.clone());
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("processor".into())
            .spawn(move || processor::run(&config, engine, handle, &shutdown, &telemetry))
            .context("starting the processor thread")?
    };
    let url = advertised_url(&config, server.local_addr());
    let directory = Arc::new(api::Directory::new(&config.application.instance_id, &url));
    let orders = api::OrderApi::new(
        telemetry.orders.clone(),
        telemetry.health.clone(),
        engine.clone(),
        auth,
        directory.clone(),
        telemetry.metrics.clone(),
        config.http.max_event_streams,
    )
    .map_err(|e| anyhow::anyhow!("order API: {e}"))?;
    let server = server.with_router(api::service_router(
        telemetry.metrics.clone(),
        telemetry.health.clone(),
        Arc::new(orders),
        &config.http.cors_allowed_origins,
    ));
    tracing::info!(listen = %server.local_addr(), %url, "serving the order API, /metrics, /healthz, /readyz");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = runtime.spawn(server.run(async {
        let _ = http_stopped.await;
    }));
    let (stop_directory, directory_stopped) = tokio::sync::oneshot::channel::<()>();
    let directory_task = {
        let (config, health) = (config.clone(), telemetry.health.clone());
        runtime.spawn(async move {
            let stopped = async {
                let _ = directory_stopped.await;
            };
            directory.run(&config, health, stopped).await
        })
    };

    let result = processor.join();
    let _ = stop_directory.send(());
    match runtime.block_on(directory_task) {
        Ok(Err(error)) => tracing::warn!(%error, "instances directory"),
        Err(error) => tracing::warn!(%error, "instances directory task"),
        Ok(Ok(())) => {}
    }
    // Graceful: the requests in flight get their answers. Event streams relayed from
    // another instance would hold the server open as long as their client listens, so the
    // wait is bounded; those clients reconnect elsewhere.
    let _ = stop_http.send(());
    match runtime.block_on(async { tokio::time::timeout(HTTP_DRAIN, http).await }) {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "http server"),
        Err(_) => tracing::info!(
            after_s = HTTP_DRAIN.as_secs(),
            "open HTTP connections closed at shutdown"
        ),
        _ => {}
    }
    match result {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(error)) => Err(error).context("processor"),
        Err(_) => anyhow::bail!("the processor thread panicked"),
    }
}

/// How long, at shutdown, the HTTP server may take to finish the requests in flight.
const HTTP_DRAIN: Duration = Duration::from_secs(3);

/// The base URL other instances forward order requests to: `http.advertised_url`, else the
/// bound address, with the host name in place of an unspecified IP (0.0.0.0).
fn advertised_url(config: &Config, bound: std::net::SocketAddr) -> String {
    if let Some(url) = &config.http.advertised_url {
        return url.trim_end_matches('/').to_string();
    }
    if bound.ip().is_unspecified() {
        let host = hostname().unwrap_or_else(|| "localhost".into());
        format!("http://{host}:{}", bound.port())
    } else {
        format!("http://{bound}")
    }
}

/// The next SIGTERM or SIGINT.
async fn signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The generated events as JSON lines on standard output.
fn generate_to_stdout(config: GenerateConfig) -> anyhow::Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    for event in Generator::new(config) {
        let written = serde_json::to_writer(&mut out, &event)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        match written {
            Ok(()) => {}
            // `milestones generate | head` is a normal way to stop reading.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e).context("generate"),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("generate"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `--format`, parsed here rather than by clap so that a wrong value is one line and exit 1,
/// like every other refused argument.
fn parse_format(name: &str) -> anyhow::Result<Format> {
    match name {
        "avro" => Ok(Format::Avro),
        "json" => Ok(Format::Json),
        other => anyhow::bail!("--format is {other}: give avro or json"),
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Avro => "avro",
        Format::Json => "json",
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).context("config")
}

fn load_rules(path: Option<&Path>) -> anyhow::Result<Rules> {
    Ok(match path {
        Some(path) => Rules::load(path)?,
        None => Rules::builtin()?,
    })
}
