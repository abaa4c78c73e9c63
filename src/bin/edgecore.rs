//! `edgecore --config FILE`: the edge side of the edge mesh; `edgecore join` enrolls a
//! node with cloudcore's PKI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgemesh::cli::{self, CoreArgs};
use edgemesh::edgecore::{DEFAULT_YAML, EdgeCore, EdgeCoreConfig};
use edgemesh::pki::enroll::{Enrollment, enroll};

/// The edge side of the edge mesh: edgehub, metamanager and the proxy.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    core: CoreArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join cloudcore with a token (from `cloudcore token create`): check its CA against
    /// the token, get this node's certificate, write a config that uses it.
    Join {
        /// cloudhub's address, host:port (the host must be in cloudcore's pki.serverNames).
        #[arg(long, value_name = "HOST:PORT")]
        cloud: String,
        /// The join token.
        #[arg(long)]
        token: String,
        /// This node's name (a Kubernetes node name).
        #[arg(long)]
        node: String,
        /// cloudcore's PKI port; default: the cloud's host, port 10002.
        #[arg(long, value_name = "HOST:PORT")]
        pki: Option<String>,
        /// Folder for the store, the socket and the certificates.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/edgemesh")]
        dir: PathBuf,
        /// The config file to write.
        #[arg(
            long = "config-out",
            value_name = "FILE",
            default_value = "/etc/edgemesh/edgecore.yaml"
        )]
        config: PathBuf,
        /// Also write a systemd unit that runs edgecore with that config.
        #[arg(long)]
        install: bool,
        /// Where --install writes the unit.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/systemd/system/edgecore.service"
        )]
        unit: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(Command::Join {
        cloud,
        token,
        node,
        pki,
        dir,
        config,
        install,
        unit,
    }) = cli.command
    else {
        return cli::main_for(
            cli.core,
            // One module thread: see beehive's `workerThreads`.
            1,
            DEFAULT_YAML,
            EdgeCoreConfig::load,
            async |config| {
                let edgecore = EdgeCore::build(&config).await?;
                let report = edgecore.run_until(beehive::termination_signal()).await;
                log::info!("stopped: {report:?}");
                Ok(())
            },
        );
    };
    cli::init_logging();
    let pki = pki.unwrap_or_else(|| {
        let host = cloud.rsplit_once(':').map_or(cloud.as_str(), |(h, _)| h);
        format!("{host}:10002")
    });
    let enrollment = Enrollment {
        cloud,
        pki,
        token,
        node,
        dir,
        config,
        unit: install.then_some(unit),
        binary: std::env::current_exe().unwrap_or_else(|_| "/usr/local/bin/edgecore".into()),
    };
    cli::run_once(async {
        print!("{}", enroll(&enrollment).await?);
        Ok(())
    })
}
