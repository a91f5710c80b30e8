//! The Lua scripts (compare-and-append, raise, rewrite) and how an append runs them: the keys and
//! arguments in the order a script reads them, retries, and the read-back that settles an append
//! whose outcome is unknown.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, RedisError, Value};

use super::{backend_error, is_ambiguous, is_transient, unexpected, Conn, RedisBackend};
use crate::backend::retry;
use crate::backend::{Backend, BlobHash, Expiry, LogAppend};
use crate::error::{Error, Result};

/// The compare-and-append script. KEYS: per log part, its stream and next-seq keys. ARGV: the TTL
/// in ms (0: none), then per part its expected seq, frame count and frames. Checks every part
/// (a log appearing twice is checked against the state the earlier part leaves) before writing
/// anything; returns 0, or `{part index (1-based), actual next seq}` on a conflict. Both keys get
/// the same expiry (or none), so they expire together and a store reopened without `ttl=` makes
/// its logs permanent again.
pub(super) const APPEND_LUA: &str = r"
local ttl = tonumber(ARGV[1])
local parts = #KEYS / 2
local nexts = {}
local new_log = {}
local plan = {}
local pos = 2
for i = 1, parts do
  local nkey = KEYS[2 * i]
  local cur = nexts[nkey]
  if cur == nil then
    local stored = redis.call('GET', nkey)
    new_log[nkey] = (stored == false)
    cur = tonumber(stored or '1')
  end
  local expected = tonumber(ARGV[pos])
  local count = tonumber(ARGV[pos + 1])
  if cur ~= expected then return {i, cur} end
  plan[i] = {pos + 2, count, expected}
  nexts[nkey] = cur + count
  pos = pos + 2 + count
end
for i = 1, parts do
  local p = plan[i]
  if p[2] > 0 then
    local skey = KEYS[2 * i - 1]
    local nkey = KEYS[2 * i]
    if new_log[nkey] then
      -- No next-seq key: the log is new or expired; a stream left without one is stale.
      redis.call('DEL', skey)
      new_log[nkey] = false
    end
    for j = 0, p[2] - 1 do
      redis.call('XADD', skey, string.format('%d-1', p[3] + j), 'f', ARGV[p[1] + j])
    end
    redis.call('SET', nkey, string.format('%d', p[3] + p[2]))
    if ttl > 0 then
      redis.call('PEXPIRE', skey, ttl)
      redis.call('PEXPIRE', nkey, ttl)
    else
      -- SET cleared the next-seq key's TTL; the stream must not keep one either.
      redis.call('PERSIST', skey)
    end
  end
end
return 0
";

/// Raises a log's next seq (never lowers it), creating the log. KEYS: stream, next. ARGV: the new
/// next seq, the TTL in ms (0: none).
pub(super) const RAISE_LUA: &str = r"
local stored = redis.call('GET', KEYS[2])
if stored == false then redis.call('DEL', KEYS[1]) end
local cur = tonumber(stored or '0')
local want = math.max(tonumber(ARGV[1]), 1)
if cur < want then redis.call('SET', KEYS[2], string.format('%d', want)) end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
else
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[1])
end
return 0
";

/// Replaces entries of one stream in place (rekey). KEYS: the stream. ARGV: pairs of sequence
/// number and new frame. A stream entry cannot be changed, and ids cannot go back, so the stream
/// is rebuilt with the same ids (and expiry), the given frames replacing theirs; sequence numbers
/// it does not hold are skipped. Returns how many entries were replaced.
pub(super) const REWRITE_LUA: &str = r"
local repl = {}
for i = 1, #ARGV, 2 do repl[ARGV[i] .. '-1'] = ARGV[i + 1] end
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
local n = 0
for _, e in ipairs(entries) do if repl[e[1]] then n = n + 1 end end
if n == 0 then return 0 end
local pttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for _, e in ipairs(entries) do
  redis.call('XADD', KEYS[1], e[1], 'f', repl[e[1]] or e[2][2])
end
if pttl > 0 then redis.call('PEXPIRE', KEYS[1], pttl) end
return n
";

/// One [`crate::backend::SearchTable::write_index`] call, atomically. KEYS: the index's sorted
/// set and hash. ARGV: the number of keys to delete, those keys, then key and value of each
/// entry to put. Deletes first, then puts (a key in both ends up put). Returns 0.
pub(super) const INDEX_WRITE_LUA: &str = r"
local deletes = tonumber(ARGV[1])
for i = 2, deletes + 1 do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
for i = deletes + 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 0
";

/// A range of the search index with its values, read at one point in time. KEYS: the sorted set
/// and the hash. ARGV: `ZRANGEBYLEX` min and max, and the most entries. Returns key, value, key,
/// value, ... in key order (all scores are 0, so the set orders its members bytewise).
pub(super) const INDEX_SCAN_LUA: &str = r"
local keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for i, k in ipairs(keys) do
  out[2 * i - 1] = k
  out[2 * i] = redis.call('HGET', KEYS[2], k)
end
return out
";

/// One step of measuring the search index without sending its values: `HSCAN` from the cursor
/// in ARGV[1] over the hash KEYS[1]. Returns the next cursor, the entries seen and their bytes
/// (keys plus values).
pub(super) const INDEX_SIZE_LUA: &str = r"
local step = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', 1000)
local kv = step[2]
local bytes = 0
for i = 1, #kv, 2 do bytes = bytes + #kv[i] + #kv[i + 1] end
return {step[1], #kv / 2, bytes}
";

/// The append script's reply: `None` when applied, else the conflicting part (0-based) and the
/// log's actual next sequence number.
fn append_reply(reply: Value) -> redis::RedisResult<Option<(usize, u64)>> {
    match reply {
        Value::Int(0) => Ok(None),
        other => {
            let (part, actual): (usize, u64) = FromRedisValue::from_redis_value(other)?;
            Ok(Some((part.saturating_sub(1), actual)))
        }
    }
}

/// The [`Error::Conflict`] of part `part` of `appends`.
pub(super) fn conflict(appends: &[LogAppend], part: usize, actual: u64) -> Error {
    match appends.get(part).or(appends.first()) {
        Some(a) => Error::Conflict {
            log: a.log.clone(),
            expected: a.expected_seq,
            actual,
        },
        None => Error::InvalidInput("a conflict reported for an empty append".into()),
    }
}

/// Whether `e` says the server does not know the script (its script cache starts empty).
fn is_no_script(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

impl RedisBackend {
    /// Runs a prepared script on the shared connection (one server or Cluster), retried.
    pub(super) async fn run_script(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        what: impl Fn() -> String,
    ) -> Result<Value> {
        self.retrying(what, || async {
            match &self.conn {
                Conn::Single { manager, .. } => inv.invoke_async(&mut manager.clone()).await,
                Conn::Cluster { conn, .. } => inv.invoke_async(&mut conn.clone()).await,
            }
        })
        .await
    }

    pub(super) fn ttl_ms(&self) -> u64 {
        self.settings
            .ttl
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The expiry an append arms: none when it writes to a log the store says never expires
    /// (its own logs: the gc log, an encrypted store's descriptor).
    fn ttl_for(&self, appends: &[LogAppend]) -> u64 {
        let never = |a: &LogAppend| !a.frames.is_empty() && a.expiry == Expiry::Never;
        if appends.iter().any(never) {
            0
        } else {
            self.ttl_ms()
        }
    }

    /// The appends as one script call: keys and arguments in the order `APPEND_LUA` reads them.
    fn append_invocation(&self, appends: &[LogAppend]) -> redis::ScriptInvocation<'_> {
        let mut inv = self.append_script.prepare_invoke();
        inv.arg(self.ttl_for(appends));
        for a in appends {
            inv.key(self.stream_key(&a.log)).key(self.next_key(&a.log));
            inv.arg(a.expected_seq).arg(a.frames.len());
            for frame in &a.frames {
                inv.arg(frame.as_slice());
            }
        }
        inv
    }

    /// The append script until it answers, retrying transient failures until the timeout.
    /// `maybe_applied`: an earlier attempt may have landed unheard; a conflict is then checked
    /// against the log, and the append counts as done if the log holds exactly its frames.
    pub(super) async fn append_retrying(
        &self,
        appends: &[LogAppend],
        mut maybe_applied: bool,
    ) -> Result<()> {
        let what = || {
            let logs: Vec<&str> = appends.iter().map(|a| a.log.as_str()).collect();
            format!("appending to logs {logs:?}")
        };
        let deadline = Instant::now() + self.settings.timeout;
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = match tokio::time::timeout(remaining, self.try_append(appends)).await {
                Ok(outcome) => outcome,
                // The abandoned attempt may have reached the server.
                Err(_) => return self.give_up(appends, true, self.timed_out(&what())).await,
            };
            let e = match outcome {
                Ok(None) => return Ok(()),
                Ok(Some((part, actual))) => {
                    if maybe_applied {
                        if let Ok(true) = self.append_landed(appends).await {
                            return Ok(());
                        }
                    }
                    return Err(conflict(appends, part, actual));
                }
                Err(e) => e,
            };
            maybe_applied |= is_ambiguous(&e);
            if !is_transient(&e) || Instant::now() >= deadline {
                let err = backend_error(format!("{} on {}", what(), self.url), e);
                return self.give_up(appends, maybe_applied, err).await;
            }
            retry::REDIS.pause_until(attempt, deadline).await;
            retry::note_retry();
            attempt += 1;
        }
    }

    /// Ends a failed append with `err`, unless an attempt may have landed unheard and the log,
    /// read once more (briefly), holds exactly its frames: a save that landed is not reported
    /// as failed.
    async fn give_up(&self, appends: &[LogAppend], maybe_applied: bool, err: Error) -> Result<()> {
        if maybe_applied {
            let grace = self.settings.timeout.min(Duration::from_secs(2));
            if let Ok(Ok(true)) = tokio::time::timeout(grace, self.append_landed(appends)).await {
                return Ok(());
            }
        }
        Err(err)
    }

    /// [`Backend::commit`] with blobs: on one server one
    /// pipeline, on a Cluster the blobs first.
    pub(super) async fn append_blobs_first(
        &self,
        appends: &[LogAppend],
        blobs: Vec<(BlobHash, Vec<u8>)>,
    ) -> Result<()> {
        let Conn::Single { manager, .. } = &self.conn else {
            self.put_blobs(blobs).await?;
            return self.append_retrying(appends, false).await;
        };
        let first = tokio::time::timeout(
            self.settings.timeout,
            self.try_append_pipelined(manager, appends, &blobs),
        )
        .await;
        match first {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some((part, actual)))) => Err(conflict(appends, part, actual)),
            // The script was not loaded (a restarted server), or a transient failure: the blobs
            // may be stored; do both again the slow way, remembering the append may have landed.
            Ok(Err(e)) if is_transient(&e) || is_no_script(&e) => {
                self.put_blobs(blobs).await?;
                self.append_retrying(appends, is_ambiguous(&e)).await
            }
            Ok(Err(e)) => Err(backend_error(
                format!("appending with {} blobs on {}", blobs.len(), self.url),
                e,
            )),
            Err(_) => {
                self.put_blobs(blobs).await?;
                self.append_retrying(appends, true).await
            }
        }
    }

    /// One server: `SET NX` of every blob, then the append script (`EVALSHA`), in one pipeline.
    async fn try_append_pipelined(
        &self,
        manager: &ConnectionManager,
        appends: &[LogAppend],
        blobs: &[(BlobHash, Vec<u8>)],
    ) -> redis::RedisResult<Option<(usize, u64)>> {
        let mut pipe = redis::pipe();
        for (hash, bytes) in blobs {
            pipe.cmd("SET")
                .arg(self.blob_key(hash))
                .arg(bytes.as_slice())
                .arg("NX");
        }
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.append_script.get_hash())
            .arg(2 * appends.len());
        for a in appends {
            eval.arg(self.stream_key(&a.log)).arg(self.next_key(&a.log));
        }
        eval.arg(self.ttl_for(appends));
        for a in appends {
            eval.arg(a.expected_seq).arg(a.frames.len());
            for frame in &a.frames {
                eval.arg(frame.as_slice());
            }
        }
        pipe.add_command(eval);
        let mut replies: Vec<Value> = pipe.query_async(&mut manager.clone()).await?;
        let reply = replies
            .pop()
            .ok_or_else(|| unexpected("an empty reply to the append pipeline".into()))?;
        append_reply(reply)
    }

    /// One attempt of the append script: `Ok(None)` when applied, `Ok(Some((part, actual)))` on a
    /// conflict of part `part` (0-based).
    async fn try_append(&self, appends: &[LogAppend]) -> redis::RedisResult<Option<(usize, u64)>> {
        let inv = self.append_invocation(appends);
        let reply: Value = match &self.conn {
            Conn::Single { manager, .. } => inv.invoke_async(&mut manager.clone()).await?,
            Conn::Cluster { conn, .. } => inv.invoke_async(&mut conn.clone()).await?,
        };
        append_reply(reply)
    }

    /// After an append whose outcome is unknown: whether the logs hold exactly its frames at the
    /// expected positions (it was applied). The script is all or nothing, so the first part with
    /// frames decides.
    async fn append_landed(&self, appends: &[LogAppend]) -> redis::RedisResult<bool> {
        let Some(first) = appends.iter().find(|a| !a.frames.is_empty()) else {
            return Ok(false);
        };
        let got = self
            .scan_once(&first.log, first.expected_seq, first.frames.len())
            .await?;
        Ok(got.len() == first.frames.len()
            && got
                .iter()
                .zip(&first.frames)
                .enumerate()
                .all(|(i, ((seq, bytes), frame))| {
                    *seq == first.expected_seq + i as u64 && bytes == frame
                }))
    }
}
