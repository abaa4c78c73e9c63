//! `cloudcore token …` and `cloudcore cert …`: edit the PKI folder of a cloudcore config.
//! They work with cloudcore running or not; a running one sees the changes at its next
//! check (revocations at the next handshake).

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cloudcore::CloudCoreConfig;
use crate::error::{Error, Result};
use crate::pki::Pki;

fn open(config: &Path) -> Result<Pki> {
    let config = CloudCoreConfig::load(config)?;
    if !config.pki.enabled() {
        return Err(Error::Pki(
            "the config has no pki.dir: this cloudcore has no PKI to issue tokens from".into(),
        ));
    }
    Pki::open(&config.pki)
}

fn when(secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if secs > now {
        format!("in {}", human(secs - now))
    } else {
        format!("{} ago", human(now - secs))
    }
}

fn human(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Makes a token valid for `ttl`; returns the token (printed alone, for scripts).
pub fn token_create(config: &Path, ttl: Duration) -> Result<String> {
    let pki = open(config)?;
    let (token, record) = pki.tokens().create(ttl)?;
    log::info!("token {} made, expires {}", record.id, when(record.expires));
    Ok(token)
}

/// The tokens not yet expired, one per line.
pub fn token_list(config: &Path) -> Result<String> {
    let pki = open(config)?;
    let mut out = String::from("ID                EXPIRES          STATE\n");
    for t in pki.tokens().list()? {
        let state = if t.revoked { "revoked" } else { "valid" };
        let _ = writeln!(out, "{:<17} {:<16} {state}", t.id, when(t.expires));
    }
    Ok(out)
}

/// Revokes token `id`.
pub fn token_revoke(config: &Path, id: &str) -> Result<String> {
    match open(config)?.tokens().revoke(id)? {
        true => Ok(format!("token {id} revoked\n")),
        false => Err(Error::Pki(format!("no token {id}"))),
    }
}

/// The node certificates issued and not expired, one per line.
pub fn cert_list(config: &Path) -> Result<String> {
    let pki = open(config)?;
    let mut out = String::from(
        "NODE                 SERIAL                            EXPIRES          STATE\n",
    );
    for c in pki.issued()? {
        let state = if c.revoked { "revoked" } else { "valid" };
        let _ = writeln!(
            out,
            "{:<20} {:<33} {:<16} {state}",
            c.node,
            c.serial,
            when(c.not_after)
        );
    }
    Ok(out)
}

/// Revokes every certificate of `node`.
pub fn cert_revoke(config: &Path, node: &str) -> Result<String> {
    match open(config)?.revoke_node(node)? {
        0 => Err(Error::Pki(format!("no valid certificate of node {node}"))),
        n => Ok(format!("{n} certificate(s) of node {node} revoked\n")),
    }
}
