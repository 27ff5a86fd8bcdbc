//! The `milestones` binary: parses the command line, loads config, wires, and runs.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use order_milestones::engine::{Engine, Rules};
use order_milestones::simulate;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// order-milestones: tells a customer where their order is.
#[derive(Parser)]
#[command(name = "milestones", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Milestone rules files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
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
    }
}

fn load_rules(path: Option<&Path>) -> anyhow::Result<Rules> {
    Ok(match path {
        Some(path) => Rules::load(path)?,
        None => Rules::builtin()?,
    })
}
