//! Errors of the command line: any error (the library's [`ckpt::Error`] included) boxed, with
//! optional context, printed as a chain.

use std::error::Error as StdError;
use std::fmt;
use std::io::Write as _;

/// Any error, boxed.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a subcommand returns.
pub type CliResult<T = ()> = Result<T, BoxError>;

/// An error of the command line itself, or context around a lower error (its `source`).
#[derive(Debug)]
pub struct Failure {
    message: String,
    source: Option<BoxError>,
    /// The process exit code when this error ends the command (1 unless a command says
    /// otherwise, as `verify` does to tell damage from configuration).
    exit_code: u8,
}

impl Failure {
    /// An error with no lower cause.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            source: None,
            exit_code: 1,
        }
    }

    /// This error with `source` as its cause.
    pub fn caused_by(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// This error, ending the process with `code` instead of 1.
    pub fn with_exit_code(mut self, code: u8) -> Self {
        self.exit_code = code;
        self
    }
}

/// The exit code an error ends the process with: its own if it is a [`Failure`], else 1.
pub fn exit_code(e: &(dyn StdError + 'static)) -> u8 {
    e.downcast_ref::<Failure>().map_or(1, |f| f.exit_code)
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn StdError + 'static))
    }
}

/// Adds what was being done to an error.
pub trait Context<T> {
    /// Wraps the error in a [`Failure`] saying `what` was being done.
    fn context(self, what: impl Into<String>) -> CliResult<T>;
    /// Like [`Context::context`], with the message built only on error.
    fn with_context(self, what: impl FnOnce() -> String) -> CliResult<T>;
}

impl<T, E: Into<BoxError>> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> CliResult<T> {
        self.map_err(|e| Box::new(Failure::new(what).caused_by(e)) as BoxError)
    }

    fn with_context(self, what: impl FnOnce() -> String) -> CliResult<T> {
        self.map_err(|e| Box::new(Failure::new(what()).caused_by(e)) as BoxError)
    }
}

/// Prints `error: <message>` and one `  caused by: <source>` line per source to stderr.
pub fn report(e: &(dyn StdError + 'static)) {
    let mut err = std::io::stderr().lock();
    // Nothing sensible is left to do when stderr itself fails.
    let _ = writeln!(err, "error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let _ = writeln!(err, "  caused by: {s}");
        source = s.source();
    }
}

/// Whether an error (or any of its sources) is a write to a closed pipe.
pub fn is_broken_pipe(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        next = e.source();
    }
    false
}
