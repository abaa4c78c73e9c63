//! `cloudcore --config FILE`: the cloud side of the edge mesh.

use std::process::ExitCode;

use edgemesh::cli;
use edgemesh::cloudcore::{CloudCore, CloudCoreConfig, DEFAULT_YAML};

fn main() -> ExitCode {
    cli::main_for(DEFAULT_YAML, CloudCoreConfig::load, async |config| {
        let cloudcore = CloudCore::build(&config).await?;
        let report = cloudcore.run_until(beehive::termination_signal()).await;
        log::info!("stopped: {report:?}");
        Ok(())
    })
}
