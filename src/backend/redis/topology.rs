//! One server or a Cluster: the shared connection, direct connections to each Cluster node,
//! commands sent to the right node (`query`, pipelines, `SCAN` on every primary), and the hash-slot
//! check that refuses a cross-slot append before anything is written.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisError, Script};

use super::options::{ParsedUrl, Settings, Shard};
use super::scripts::APPEND_LUA;
use super::{unexpected, Conn, RedisBackend};
use crate::backend::LogAppend;
use crate::error::{Error, Result};

/// Keys asked for per `SCAN` step.
const SCAN_COUNT: usize = 1000;
/// Connects the shared connection.
pub(super) async fn connect(parsed: &ParsedUrl, settings: &Settings) -> redis::RedisResult<Conn> {
    let certs = match &settings.tls_ca {
        Some(path) => Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(path).map_err(|e| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read the tls_ca file",
                    format!("{}: {e}", path.display()),
                ))
            })?),
        }),
        None => None,
    };
    if parsed.cluster {
        let mut builder = ClusterClientBuilder::new(parsed.driver_urls.clone())
            .connection_timeout(settings.timeout.min(Duration::from_secs(5)))
            .response_timeout(settings.timeout);
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        let client = builder.build()?;
        let conn = client.get_async_connection().await?;
        Ok(Conn::Cluster { client, conn })
    } else {
        let url = parsed.driver_urls.first().cloned().unwrap_or_default();
        let client = match certs {
            Some(certs) => Client::build_with_tls(url, certs)?,
            None => Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.min(Duration::from_secs(5))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(500));
        let mut manager = client.get_connection_manager_with_config(config).await?;
        // Loaded now so that pipelined appends (EVALSHA) find it; reloaded on NOSCRIPT.
        Script::new(APPEND_LUA).load_async(&mut manager).await?;
        Ok(Conn::Single { client, manager })
    }
}

/// `SCAN`s one node for `pattern` until its cursor returns to 0; `send` runs one `SCAN` command.
async fn scan_node<F, Fut>(pattern: &[u8], mut send: F) -> redis::RedisResult<Vec<Vec<u8>>>
where
    F: FnMut(Cmd) -> Fut,
    Fut: Future<Output = redis::RedisResult<(u64, Vec<Vec<u8>>)>>,
{
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, batch) = send(cmd).await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// One node of a Cluster as `CLUSTER NODES` lists it.
pub(super) struct ClusterNode {
    pub(super) host: String,
    pub(super) port: u16,
    /// `master`, `slave`, `myself`, `fail`, `fail?`, `handshake`, `noaddr`, ...
    pub(super) flags: Vec<String>,
}

impl ClusterNode {
    pub(super) fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Every node of the Cluster (primaries and replicas), from `CLUSTER NODES` (on every Redis
/// version with Cluster, unlike `CLUSTER SHARDS`).
pub(super) async fn cluster_nodes(
    conn: &ClusterConnection,
) -> redis::RedisResult<Vec<ClusterNode>> {
    let mut conn = conn.clone();
    let reply = conn
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    let text: String = FromRedisValue::from_redis_value(reply)?;
    Ok(parse_cluster_nodes(&text))
}

/// The nodes of a `CLUSTER NODES` reply: `<id> <ip:port@cport[,hostname]> <flags> ...` per line.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else {
            continue;
        };
        out.push(ClusterNode {
            host: host.to_owned(),
            port,
            flags: flags.split(',').map(str::to_owned).collect(),
        });
    }
    out
}

/// The address of every primary of the Cluster that is not marked failed (it cannot answer).
pub(super) async fn primaries(conn: &ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
    let out: Vec<(String, u16)> = cluster_nodes(conn)
        .await?
        .into_iter()
        .filter(|n| n.has("master") && !n.has("fail"))
        .map(|n| (n.host, n.port))
        .collect();
    if out.is_empty() {
        return Err(unexpected(
            "CLUSTER NODES lists no reachable primary".into(),
        ));
    }
    Ok(out)
}

/// A connection to one server for compaction: the shared one of a single server, or a direct
/// one to a Cluster node (primary or replica, which the Cluster client does not route to).
pub(super) enum NodeConn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
}

impl NodeConn {
    pub(super) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            NodeConn::Managed(m) => cmd.query_async(m).await,
            NodeConn::Direct(c) => cmd.query_async(c).await,
        }
    }

    /// The `key:value` lines of `INFO section`.
    pub(super) async fn info(
        &mut self,
        section: &str,
    ) -> redis::RedisResult<HashMap<String, String>> {
        let text: String = self.query(redis::cmd("INFO").arg(section)).await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect())
    }
}

/// The Redis Cluster hash slot of `key` (CRC16 of the hash tag, or of the key, mod 16384).
fn key_slot(key: &[u8]) -> u16 {
    let tag = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(tag) % 16384
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

impl RedisBackend {
    /// A direct connection to one Cluster node, with the URL's credentials and TLS settings.
    pub(super) async fn connect_node(&self, node: &ClusterNode) -> Result<NodeConn> {
        let name = format!("{}:{}", node.host, node.port);
        let url = format!("{}{name}{}", self.node_url.0, self.node_url.1);
        let connect = || async {
            let client = match &self.settings.tls_ca {
                Some(path) => {
                    let root = std::fs::read(path).map_err(|e| {
                        RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "cannot read the tls_ca file",
                            format!("{}: {e}", path.display()),
                        ))
                    })?;
                    let certs = redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    };
                    Client::build_with_tls(url.as_str(), certs)?
                }
                None => Client::open(url.as_str())?,
            };
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.settings.timeout.min(Duration::from_secs(5))))
                .set_response_timeout(Some(self.settings.timeout));
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        self.retrying(|| format!("connecting to Cluster node {name}"), connect)
            .await
            .map(NodeConn::Direct)
    }

    /// One command on the shared connection.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match &self.conn {
            Conn::Single { manager, .. } => cmd.query_async(&mut manager.clone()).await,
            Conn::Cluster { conn, .. } => cmd.query_async(&mut conn.clone()).await,
        }
    }

    /// Several independent single-key commands with one round trip: a pipeline on one server;
    /// on a Cluster (where a pipeline cannot span slots) concurrent requests, which the
    /// multiplexed node connections pipeline by themselves.
    pub(super) async fn query_many<T: FromRedisValue>(
        &self,
        cmds: &[Cmd],
    ) -> redis::RedisResult<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match &self.conn {
            Conn::Single { manager, .. } => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query_async(&mut manager.clone()).await
            }
            Conn::Cluster { conn, .. } => {
                let futures = cmds.iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<T>(&mut conn).await }
                });
                join_all(futures).await.into_iter().collect()
            }
        }
    }

    /// Every key matching `pattern`, by `SCAN` (never `KEYS`); on a Cluster, on every primary.
    pub(super) async fn scan_keys(&self, pattern: &[u8]) -> redis::RedisResult<Vec<Vec<u8>>> {
        match &self.conn {
            Conn::Single { manager, .. } => {
                scan_node(pattern, |cmd| {
                    let mut conn = manager.clone();
                    async move { cmd.query_async(&mut conn).await }
                })
                .await
            }
            Conn::Cluster { conn, .. } => {
                let mut keys = Vec::new();
                for (host, port) in primaries(conn).await? {
                    let conn = conn.clone();
                    let found = scan_node(pattern, |cmd| {
                        let mut conn = conn.clone();
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        async move {
                            let v = conn.route_command(cmd, route).await?;
                            FromRedisValue::from_redis_value(v).map_err(RedisError::from)
                        }
                    })
                    .await?;
                    keys.extend(found);
                }
                // A node may report keys of slots it is giving away; keep each key once.
                let unique: BTreeSet<Vec<u8>> = keys.into_iter().collect();
                Ok(unique.into_iter().collect())
            }
        }
    }

    /// Refuses, before anything is written, an append a Cluster cannot make atomic: logs in
    /// more than one hash slot (only possible with `shard=execution`).
    pub(super) fn check_one_slot(&self, appends: &[LogAppend]) -> Result<()> {
        if !matches!(self.conn, Conn::Cluster { .. }) || self.settings.shard == Shard::Store {
            return Ok(());
        }
        let slots: BTreeSet<u16> = appends
            .iter()
            .map(|a| key_slot(self.next_key(&a.log).as_bytes()))
            .collect();
        if slots.len() > 1 {
            let logs: Vec<&str> = appends.iter().map(|a| a.log.as_str()).collect();
            return Err(Error::InvalidInput(format!(
                "an atomic save across executions {logs:?} is not supported on Redis Cluster \
                 with shard=execution (their logs live in different hash slots, which no Redis \
                 command can update atomically); save them separately, or use shard=store \
                 (the default), which keeps every log of a store in one slot"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_hash_tags() {
        // Reference values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
    }
}
