//! `edgecore --config FILE`: the edge side of the edge mesh.

use std::process::ExitCode;

use edgemesh::cli;
use edgemesh::edgecore::{DEFAULT_YAML, EdgeCore, EdgeCoreConfig};

fn main() -> ExitCode {
    cli::main_for(DEFAULT_YAML, EdgeCoreConfig::load, async |config| {
        let edgecore = EdgeCore::build(&config).await?;
        let report = edgecore.run_until(beehive::termination_signal()).await;
        log::info!("stopped: {report:?}");
        Ok(())
    })
}
