//! `edgemesh`: the command-line entry point: the demo, the standalone proxy, certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Edge service mesh in the KubeEdge mould.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a cloud and an edge node on loopback (no root needed) with demo Services, send
    /// a few requests by Service name through the explicit proxy, print where each went,
    /// and stay up for curl until Ctrl-C.
    Demo,
    /// Run the proxy as its own process, reading metadata from an edgecore's metamanager
    /// socket or (edgeMesh.source: kubernetes) a Kubernetes API such as KubeEdge's
    /// metaServer.
    Proxy {
        /// The config file (YAML).
        #[arg(long, value_name = "FILE", required_unless_present = "defaultconfig")]
        config: Option<PathBuf>,
        /// Print the complete, commented default config and exit.
        #[arg(long)]
        defaultconfig: bool,
    },
    /// Write a new CA, a cloudhub server certificate and one client certificate per node
    /// (named after the node, as cloudhub requires) into a folder.
    Certs {
        /// Folder to write ca.crt, server.crt/.key and <node>.crt/.key into.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A node to issue a certificate for (repeat for more).
        #[arg(long = "node", value_name = "NODE_ID", required = true)]
        nodes: Vec<String>,
        /// A name or IP the server certificate is valid for (repeat for more).
        #[arg(long = "server-name", value_name = "NAME", default_values = ["localhost", "127.0.0.1"])]
        server_names: Vec<String>,
    },
}

fn proxy(config: Option<PathBuf>, defaultconfig: bool) -> ExitCode {
    use edgemesh::standalone::{DEFAULT_YAML, ProxyConfig, run};
    if defaultconfig {
        print!("{DEFAULT_YAML}");
        return ExitCode::SUCCESS;
    }
    let path = config.expect("clap requires --config");
    let result = ProxyConfig::load(&path).and_then(|config| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.beehive.threads())
            .enable_all()
            .build()
            .map_err(|e| edgemesh::Error::Io(format!("cannot start the runtime: {e}")))?
            .block_on(run(&config, beehive::termination_signal()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn demo() -> ExitCode {
    // The demo's output is its table; logs only for what goes wrong, unless asked.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| edgemesh::Error::Io(format!("cannot start the runtime: {e}")))
        .and_then(|rt| rt.block_on(edgemesh::demo::run(beehive::termination_signal())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Command::Demo = command {
        return demo();
    }
    edgemesh::cli::init_logging();
    match command {
        Command::Demo => unreachable!("handled above"),
        Command::Proxy {
            config,
            defaultconfig,
        } => proxy(config, defaultconfig),
        Command::Certs {
            dir,
            nodes,
            server_names,
        } => match edgemesh::certs::write_all(&dir, &server_names, &nodes) {
            Ok(written) => {
                println!("CA:     {}", written.ca.display());
                println!(
                    "server: {} {}",
                    written.server.0.display(),
                    written.server.1.display()
                );
                for (crt, key) in written.nodes {
                    println!("node:   {} {}", crt.display(), key.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
