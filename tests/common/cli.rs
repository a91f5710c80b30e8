//! Running the `ckpt` binary as a user would, for the test binaries built with the `cli` feature
//! (the binary's `CARGO_BIN_EXE_ckpt` exists only then).

use std::process::{Command, Output};

/// The `ckpt` binary, without a `CKPT_STORE` inherited from the caller's environment (a test names
/// its store itself).
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
    cmd.env_remove("CKPT_STORE");
    cmd
}

/// Runs `ckpt ARGS` with the variables `env` set, and returns what it did.
pub fn ckpt(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ckpt")
}
