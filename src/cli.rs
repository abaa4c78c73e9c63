//! What the `cloudcore` and `edgecore` binaries share: arguments, logging, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::error::{Error, Result};

/// Arguments of a core binary.
#[derive(Debug, Parser)]
pub struct CoreArgs {
    /// The config file (YAML).
    #[arg(long, value_name = "FILE", required_unless_present = "defaultconfig")]
    pub config: Option<PathBuf>,
    /// Print the complete, commented default config and exit.
    #[arg(long)]
    pub defaultconfig: bool,
}

/// Logs through env_logger (`RUST_LOG`, default `info`).
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// Lets the process hold as many sockets as the hard limit allows: a cloudcore serving
/// ten thousand nodes needs more than the usual soft limit of 1024.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            log::warn!("cannot raise the open file limit: {e}");
        }
    }
}

/// Runs a core binary: prints the default config, or loads the config and runs `run` on a
/// multi-threaded runtime. Bad config exits with 64.
pub fn main_for<C: AsRef<beehive::CoreConfig>>(
    default_yaml: &str,
    load: impl FnOnce(&std::path::Path) -> Result<C>,
    run: impl AsyncFnOnce(C) -> Result<()>,
) -> ExitCode {
    let args = CoreArgs::parse();
    if args.defaultconfig {
        print!("{default_yaml}");
        return ExitCode::SUCCESS;
    }
    init_logging();
    let path = args.config.expect("clap requires --config");
    let result = load(&path).and_then(|config| {
        raise_fd_limit();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.as_ref().threads())
            .enable_all()
            .build()
            .map_err(|e| Error::Io(format!("cannot start the runtime: {e}")))?
            .block_on(run(config))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
