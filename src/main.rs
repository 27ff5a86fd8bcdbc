//! The `milestones` binary: parses the command line, loads config, wires, and runs.

use clap::Parser;

/// order-milestones: tells a customer where their order is.
#[derive(Parser)]
#[command(name = "milestones", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
