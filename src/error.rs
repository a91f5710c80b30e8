//! The one public error type of the crate.
//!
//! Every message names what failed and where (the execution, the checkpoint id, the log sequence or
//! the blob hash), so that a person reading it can act on it. Backends keep their own error types
//! private and surface them as [`Error::Backend`] with the original error as `source`.

use std::error::Error as StdError;

/// A boxed error from a lower layer (a backend driver, the codec).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in ckpt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The checkpoint, version or execution does not exist (or was deleted or cleared).
    #[error("not found: {what}")]
    NotFound {
        /// What was looked up, e.g. `checkpoint exec-1@17`.
        what: String,
    },

    /// An optimistic-concurrency check failed: another writer appended first.
    #[error("conflict on execution {log:?}: the writer expected position {expected}, the log is at {actual}; another writer got there first: re-read the latest checkpoint and retry")]
    Conflict {
        /// The execution (log) that was appended to.
        log: String,
        /// What the writer expected: the log's next sequence number (an append), or the latest
        /// version (`Store::save_after`; 0 for none).
        expected: u64,
        /// What it found.
        actual: u64,
    },

    /// Bytes read from storage failed verification (checksum, hash, format).
    #[error("corrupt data at {location}: {reason}")]
    Corrupt {
        /// Where: `log exec-1 seq 17` or `blob 3fa1...`.
        location: String,
        /// What check failed.
        reason: String,
    },

    /// Encrypted data could not be opened: no key, the wrong key, or bytes that were changed or
    /// moved; or plaintext found where only encrypted data may be. Nothing is returned from it.
    #[error("cannot decrypt {location} (key {key_id}): {reason}")]
    Decrypt {
        /// Where: `execution exec-1 seq 17`, `blob 3fa1...`, or the store.
        location: String,
        /// The key id the data names (`?` when unknown or not applicable).
        key_id: String,
        /// What went wrong and what to do.
        reason: String,
    },

    /// Another process holds what this call needs (e.g. a gc is already running); nothing was
    /// changed, and trying again later will work.
    #[error("busy: {what}")]
    Busy {
        /// What is busy, since when, and when to try again.
        what: String,
    },

    /// A store URL could not be understood.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, with any password removed.
        url: String,
        /// Why it was refused and what would be accepted.
        reason: String,
    },

    /// An argument was refused before anything was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The backend cannot do what was asked (an optional capability it lacks, see
    /// [`crate::backend::Capabilities`]); nothing was changed.
    #[error("the {backend} backend does not support {operation}; use a backend that does (see the README's feature table)")]
    NotSupported {
        /// What was asked (`re-sealing in place (rekey)`).
        operation: &'static str,
        /// The backend's name.
        backend: &'static str,
    },

    /// State or metadata could not be encoded, or a stored state could not be decoded into the
    /// requested type.
    #[error("codec error: {context}")]
    Codec {
        /// What was being encoded or decoded.
        context: String,
        /// The serializer's own error.
        #[source]
        source: BoxError,
    },

    /// The storage backend failed.
    #[error("{backend} backend failed: {context}")]
    Backend {
        /// Which backend (`sled`, `memory`, ...).
        backend: &'static str,
        /// The operation that failed.
        context: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// A [`Error::Corrupt`] at `location`.
    pub(crate) fn corrupt(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            reason: reason.into(),
        }
    }

    /// A [`Error::Codec`] wrapping a serializer error.
    pub(crate) fn codec(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Codec {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A [`Error::NotFound`].
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// True for [`Error::Corrupt`].
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }

    /// The variant as a short stable word (`not_found`, `conflict`, `corrupt`, `decrypt`,
    /// `busy`, `invalid_url`, `invalid_input`, `not_supported`, `codec`, `backend`): what spans
    /// record as an operation's `outcome` and what a metrics label can group by, where the
    /// message itself names executions and differs every time.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } => "conflict",
            Error::Corrupt { .. } => "corrupt",
            Error::Decrypt { .. } => "decrypt",
            Error::Busy { .. } => "busy",
            Error::InvalidUrl { .. } => "invalid_url",
            Error::InvalidInput(_) => "invalid_input",
            Error::NotSupported { .. } => "not_supported",
            Error::Codec { .. } => "codec",
            Error::Backend { .. } => "backend",
        }
    }
}

/// An error and its causes on one line, `error: cause: cause's cause`, leaving out a cause
/// whose text the line already holds (many messages repeat their source's). What a log line
/// or a recorded failure shows, where `Display` shows only the outermost message.
///
/// ```
/// let e = ckpt::Error::Backend {
///     backend: "sled",
///     context: "appending to \"run-1\"".into(),
///     source: "disk full".into(),
/// };
/// assert_eq!(
///     ckpt::error::cause_chain(&e),
///     "sled backend failed: appending to \"run-1\": disk full"
/// );
/// ```
pub fn cause_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
