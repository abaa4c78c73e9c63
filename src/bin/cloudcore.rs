//! `cloudcore --config FILE`: the cloud side of the edge mesh; `cloudcore token …` and
//! `cloudcore cert …` manage its join tokens and node certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgemesh::cli::{self, CoreArgs};
use edgemesh::cloudcore::{CloudCore, CloudCoreConfig, DEFAULT_YAML};
use edgemesh::pki::commands;

/// The cloud side of the edge mesh: cloudhub, edgecontroller, the cloud's mesh and PKI.
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
    /// Join tokens: what `edgecore join --token` takes.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Node certificates issued by this cloudcore's CA.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a token and print it.
    Create {
        /// cloudcore's config file (its pki.dir holds the tokens).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// How long it works: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = cli::parse_duration)]
        ttl: std::time::Duration,
    },
    /// List the tokens not yet expired.
    List {
        /// cloudcore's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Revoke a token by its id (from `token list`).
    Revoke {
        /// cloudcore's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The token's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// List the node certificates issued and not expired.
    List {
        /// cloudcore's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Revoke every certificate of a node: its next connection is refused.
    Revoke {
        /// cloudcore's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
    },
}

fn print(result: edgemesh::Result<String>) -> ExitCode {
    cli::exit(result.map(|text| print!("{text}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return cli::main_for(
            cli.core,
            beehive::CoreConfig::per_core(),
            DEFAULT_YAML,
            CloudCoreConfig::load,
            async |config| {
                let cloudcore = CloudCore::build(&config).await?;
                let report = cloudcore.run_until(beehive::termination_signal()).await;
                log::info!("stopped: {report:?}");
                Ok(())
            },
        );
    };
    cli::init_logging();
    print(match command {
        Command::Token { action } => match action {
            TokenAction::Create { config, ttl } => {
                commands::token_create(&config, ttl).map(|t| format!("{t}\n"))
            }
            TokenAction::List { config } => commands::token_list(&config),
            TokenAction::Revoke { config, id } => commands::token_revoke(&config, &id),
        },
        Command::Cert { action } => match action {
            CertAction::List { config } => commands::cert_list(&config),
            CertAction::Revoke { config, node } => commands::cert_revoke(&config, &node),
        },
    })
}
