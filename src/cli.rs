//! What the `cloudcore` and `edgecore` binaries share: arguments, logging, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{Error, Result};

/// Arguments of a core binary.
#[derive(Debug, clap::Args)]
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
/// multi-threaded runtime of `beehive.workerThreads` threads (`auto_threads` when that is
/// 0). Bad config exits with 64.
pub fn main_for<C: AsRef<beehive::CoreConfig>>(
    args: CoreArgs,
    auto_threads: usize,
    default_yaml: &str,
    load: impl FnOnce(&std::path::Path) -> Result<C>,
    run: impl AsyncFnOnce(C) -> Result<()>,
) -> ExitCode {
    if args.defaultconfig {
        print!("{default_yaml}");
        return ExitCode::SUCCESS;
    }
    init_logging();
    let Some(path) = args.config else {
        eprintln!("--config FILE is required");
        return ExitCode::from(64);
    };
    let result = load(&path).and_then(|config| {
        raise_fd_limit();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.as_ref().threads_or(auto_threads))
            .enable_all()
            .build()
            .map_err(|e| Error::Io(format!("cannot start the runtime: {e}")))?
            .block_on(run(config))
    });
    exit(result)
}

/// The exit code of a finished command, its error printed: 64 for bad config, 1 otherwise.
pub fn exit(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// A duration written as a number and a unit: `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: give a unit (s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a number and a unit"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

/// Runs `work` on a small runtime (for one-shot commands), printing its error.
pub fn run_once(work: impl std::future::Future<Output = Result<()>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the runtime: {e}")))
        .and_then(|rt| rt.block_on(work));
    exit(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(
            parse_duration("24h"),
            Ok(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86_400);
        assert!(parse_duration("24").unwrap_err().contains("unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5w").unwrap_err().contains("s, m, h or d"));
    }
}
