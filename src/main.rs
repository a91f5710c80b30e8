//! `ckpt`: the command-line tool of the ckpt checkpoint store.
//!
//! `cargo run --release -- demo` runs a small agent against the store, crashes it half way and
//! resumes it from its last checkpoint; `ckpt bench` measures the store on a workload. See
//! `ckpt --help`, and [`cli`] for the layout (one module per subcommand).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
