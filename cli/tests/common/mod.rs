//! Running the `strata` binary from the CLI's tests.

// Each test file uses what it needs of these.
#![allow(dead_code)]

use std::process::{Command, Output};

use strata_core::error::BoxError;

/// Run `strata args` against the database at `url`.
pub fn run(url: &str, args: &[&str]) -> Result<Output, BoxError> {
    Ok(Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()?)
}

/// Run a command that must succeed; its standard output.
pub fn strata(url: &str, args: &[&str]) -> Result<String, BoxError> {
    let out = run(url, args)?;
    if !out.status.success() {
        return Err(format!("strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Run a command that must fail with exit status 1; its standard error.
pub fn strata_fails(url: &str, args: &[&str]) -> Result<String, BoxError> {
    let out = run(url, args)?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "strata {args:?} must fail with status 1"
    );
    Ok(String::from_utf8(out.stderr)?)
}
