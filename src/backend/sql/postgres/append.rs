//! The compare-and-append: one `ckpt_append` call per attempt, its conflicts (SQLSTATE `CK409`),
//! retries of transient failures, and the read-back that settles an append whose outcome is unknown.

use tokio::time::Instant;

use super::{is_transient, PostgresBackend};
use crate::backend::retry::{self};
use crate::backend::sql::{end_seq, to_db_seq};
use crate::backend::{Backend, BlobHash, LogAppend};
use crate::error::{Error, Result};

/// The SQLSTATE `ckpt_append` raises when a compare fails.
const CONFLICT_STATE: &str = "CK409";
/// Whether a statement that failed with `e` may still have committed: only when the connection
/// was lost (an answer that never came), not when the server answered with an error or the
/// statement was never sent.
fn may_have_committed(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
        || e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
}

/// The failing part (1-based) and the log's actual next sequence number of a `CK409` error.
fn conflict_of(e: &sqlx::Error) -> Option<(usize, u64)> {
    let d = e.as_database_error()?;
    if d.code()?.as_ref() != CONFLICT_STATE {
        return None;
    }
    let (part, actual) = d.message().split_once(' ')?;
    Some((part.parse().ok()?, actual.parse().ok()?))
}

impl PostgresBackend {
    /// One `ckpt_append` call, retried on transient failures; after a failure that may have
    /// committed, a conflict (or the last failure) is checked against what is stored.
    pub(super) async fn append_call(
        &self,
        appends: &[LogAppend],
        blobs: Vec<(BlobHash, Vec<u8>)>,
    ) -> Result<()> {
        let what = "appending";
        let mut logs = Vec::with_capacity(appends.len());
        let mut expected = Vec::with_capacity(appends.len());
        let mut counts = Vec::with_capacity(appends.len());
        let mut frames: Vec<&[u8]> = Vec::new();
        for a in appends {
            let desc = format!("appending to log {:?}", a.log);
            expected.push(to_db_seq(a.expected_seq, &desc)?);
            to_db_seq(end_seq(&a.log, a.expected_seq, a.frames.len())?, &desc)?;
            counts.push(a.frames.len() as i64);
            logs.push(a.log.as_str());
            frames.extend(a.frames.iter().map(Vec::as_slice));
        }
        let mut blobs = blobs;
        blobs.sort_by_key(|a| a.0);
        let hashes: Vec<&[u8]> = blobs.iter().map(|(h, _)| &h[..]).collect();
        let datas: Vec<&[u8]> = blobs.iter().map(|(_, d)| d.as_slice()).collect();

        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        let mut ambiguous = false;
        let mut healed = false;
        loop {
            let call = sqlx::query(&self.sql.append)
                .bind(&logs)
                .bind(&expected)
                .bind(&counts)
                .bind(&frames)
                .bind(&hashes)
                .bind(&datas)
                .execute(&self.db);
            let e = match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => {
                    if ambiguous && self.already_appended(appends).await.unwrap_or(false) {
                        return Ok(());
                    }
                    return Err(self.timed_out(what));
                }
            };
            if let Some((part, actual)) = conflict_of(&e) {
                if ambiguous && self.already_appended(appends).await? {
                    return Ok(());
                }
                let Some(a) = part.checked_sub(1).and_then(|i| appends.get(i)) else {
                    return Err(self.error(what, &e));
                };
                // Stored numbers only grow: one below what the writer read from `next_seq`
                // was lowered under its last frame. Move it back above it (never further) and
                // try again, so writes continue instead of conflicting forever.
                if actual < a.expected_seq && !healed {
                    healed = true;
                    self.heal_next_seq(&a.log).await?;
                    continue;
                }
                return Err(Error::Conflict {
                    log: a.log.clone(),
                    expected: a.expected_seq,
                    actual,
                });
            }
            ambiguous |= may_have_committed(&e);
            let delay = retry::SQL.delay(attempt);
            if !is_transient(&e) || Instant::now() + delay >= deadline {
                if ambiguous && self.already_appended(appends).await.unwrap_or(false) {
                    return Ok(());
                }
                return Err(self.error(what, &e));
            }
            tokio::time::sleep(delay).await;
            retry::note_retry();
            attempt += 1;
        }
    }

    /// Raises `log`'s stored next sequence number to its last frame + 1 if it is at or below it.
    pub(super) async fn heal_next_seq(&self, log: &str) -> Result<()> {
        self.retry(
            &format!("repairing the next sequence of log {log:?}"),
            || {
                sqlx::query(&self.sql.heal_next_seq)
                    .bind(log)
                    .execute(&self.db)
            },
        )
        .await?;
        Ok(())
    }

    /// Whether every frame of `appends` is stored at its position, byte for byte: an append whose
    /// commit was not acknowledged but happened.
    async fn already_appended(&self, appends: &[LogAppend]) -> Result<bool> {
        let mut any = false;
        for a in appends.iter().filter(|a| !a.frames.is_empty()) {
            any = true;
            let stored = self.scan(&a.log, a.expected_seq, a.frames.len()).await?;
            let same = stored.len() == a.frames.len()
                && stored
                    .iter()
                    .zip(&a.frames)
                    .enumerate()
                    .all(|(i, ((seq, bytes), sent))| {
                        *seq == a.expected_seq + i as u64 && bytes == sent
                    });
            if !same {
                return Ok(false);
            }
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendExt, ConnectOptions};

    /// What a retry after an unacknowledged commit relies on: frames stored byte for byte at
    /// their positions count as appended, anything else does not. Needs the test server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn already_appended_compares_the_stored_frames() {
        let base = match std::env::var("CKPT_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) => panic!(
                "CKPT_TEST_POSTGRES_URL is not set: start the servers with \
                 `eval \"$(scripts/servers.sh start)\"` or run scripts/test-all.sh"
            ),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!("u_{}_{nanos}", std::process::id());
        let url = match crate::url::StoreUrl::parse(&format!("{base}?schema={schema}")) {
            Ok(crate::url::StoreUrl::Postgres(raw)) => raw,
            other => panic!("{other:?}"),
        };
        let backend = PostgresBackend::open(&url, &ConnectOptions::default())
            .await
            .unwrap();
        let part = |seq: u64, frames: &[&[u8]]| {
            LogAppend::new("amb", seq, frames.iter().map(|f| f.to_vec()).collect())
        };
        let sent = vec![part(1, &[b"a", b"b"])];
        assert!(!backend.already_appended(&sent).await.unwrap());
        backend.append(sent.clone()).await.unwrap();
        assert!(backend.already_appended(&sent).await.unwrap());
        assert!(!backend
            .already_appended(&[part(1, &[b"a", b"x"])])
            .await
            .unwrap());
        assert!(!backend
            .already_appended(&[part(2, &[b"b", b"c"])])
            .await
            .unwrap());
        assert!(!backend.already_appended(&[part(3, &[])]).await.unwrap());
    }
}
