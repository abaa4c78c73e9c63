//! Reading a process's YAML config, with every problem reported by field.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Parses `text` (from `origin`, for messages) into `T`; then `validate` lists the problems
/// of each section, already prefixed with the section's path.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    validate: impl Fn(&T) -> Vec<String>,
) -> Result<T> {
    let config: T = serde_yaml_ng::from_str(text).map_err(|e| {
        let place = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        Error::Config(vec![format!("{origin}{place}: {e}")])
    })?;
    let problems = validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(Error::Config(
            problems
                .into_iter()
                .map(|p| format!("{origin}: {p}"))
                .collect(),
        ))
    }
}

/// Reads and parses the file at `path`.
pub fn load<T: DeserializeOwned>(path: &Path, validate: impl Fn(&T) -> Vec<String>) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(vec![format!("{}: {e}", path.display())]))?;
    parse(&text, &path.display().to_string(), validate)
}

/// Adds `section.` before a module's validation error, which names the field.
pub fn check<E: std::fmt::Display>(section: &str, result: Result<(), E>) -> Option<String> {
    result.err().map(|e| format!("{section}: {e}"))
}

/// Adds `section.` before each of a module's validation errors, which name their fields.
pub fn section<E: std::fmt::Display>(section: &str, problems: Vec<E>) -> Vec<String> {
    problems
        .into_iter()
        .map(|e| format!("{section}: {e}"))
        .collect()
}
