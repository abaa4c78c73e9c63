//! Files of the PKI: private ones written whole (a temporary file renamed over the old)
//! with mode 0600 from the start, so a key is never readable by others, not even briefly.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Pki(format!("{}: {e}", path.display()))
}

/// Creates `dir` (and parents) with mode 0700 when missing.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, e))
}

/// Writes `bytes` to `path` with mode 0600, replacing it whole.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_mode(path, bytes, 0o600)
}

/// Writes `bytes` to `path` with `mode`, replacing it whole.
pub fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))
}

/// `n` random bytes.
pub fn random(n: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Pki("no randomness from the system".into()))?;
    Ok(bytes)
}

/// `n` random bytes in hex.
pub fn random_hex(n: usize) -> Result<String> {
    Ok(random(n)?.iter().map(|b| format!("{b:02x}")).collect())
}

/// The secret in `path`, made (`len` random bytes, mode 0600) when missing.
pub fn secret(path: &Path, len: usize) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= len => Ok(bytes),
        Ok(_) => Err(err(path, format!("shorter than {len} bytes"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = random(len)?;
            write_private(path, &bytes)?;
            Ok(bytes)
        }
        Err(e) => Err(err(path, e)),
    }
}
