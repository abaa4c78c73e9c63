//! `edgemesh`: the command-line entry point. Subcommands (demo, query, ...) arrive with the
//! modules they drive.

use clap::Parser;

/// Edge service mesh in the KubeEdge mould.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let _cli = Cli::parse();
    log::info!("edgemesh {}", env!("CARGO_PKG_VERSION"));
}
