//! The Redis Streams transport: one stream per queue (`<prefix>jobs:cpu`, `<prefix>jobs:gpu`),
//! one consumer group (`workers`). An entry carries only a job id; Postgres holds everything
//! else. The stream holds only live entries: a worker acknowledges *and deletes* an entry when
//! the job is done with, so `XRANGE` lists exactly the jobs Redis knows about and the reconciler
//! can add the ones it lost.

use crate::{QueueName, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamRangeReply, StreamReadReply};
use redis::Value;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

pub const GROUP: &str = "workers";

/// One delivery of a job to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub queue: QueueName,
    pub entry_id: String,
    /// `None` for an entry that does not carry a valid job id (acknowledged and dropped).
    pub job_id: Option<Uuid>,
}

#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    prefix: String,
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl Queue {
    /// Connect to `url`; keys are prefixed with `prefix` (e.g. `attune:`). `block` is the
    /// longest blocking read this connection will do (its response timeout is set above it).
    pub async fn connect(url: &str, prefix: &str, block: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(block + Duration::from_secs(5))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn stream_key(&self, q: QueueName) -> String {
        format!("{}jobs:{}", self.prefix, q.as_str())
    }

    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Put a job id on its queue's stream.
    pub async fn enqueue(&self, q: QueueName, job_id: Uuid) -> Result<String> {
        let mut c = self.conn.clone();
        let id: String = redis::cmd("XADD")
            .arg(self.stream_key(q))
            .arg("*")
            .arg("job")
            .arg(job_id.to_string())
            .query_async(&mut c)
            .await?;
        Ok(id)
    }

    /// Create the stream and its consumer group if missing. The group starts at `0`: entries
    /// added before the group existed (after a Redis restart, by the reconciler) are delivered.
    pub async fn ensure_group(&self, q: QueueName) -> Result<()> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream_key(q))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn delivery(
        q: QueueName,
        id: String,
        map: &std::collections::HashMap<String, Value>,
    ) -> Delivery {
        let job_id = map.get("job").and_then(|v| match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
            Value::SimpleString(s) => s.parse().ok(),
            _ => None,
        });
        Delivery {
            queue: q,
            entry_id: id,
            job_id,
        }
    }

    /// Read one new entry for `consumer`, waiting up to `block`. Recreates the group when Redis
    /// lost it (restart, flush) and then returns `None`.
    pub async fn read(
        &self,
        q: QueueName,
        consumer: &str,
        block: Duration,
    ) -> Result<Option<Delivery>> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.stream_key(q))
            .arg(">")
            .query_async(&mut c)
            .await;
        match r {
            Ok(Some(reply)) => Ok(reply
                .keys
                .into_iter()
                .flat_map(|k| k.ids)
                .map(|e| Self::delivery(q, e.id.clone(), &e.map))
                .next()),
            Ok(None) => Ok(None),
            Err(e) if is_nogroup(&e) => {
                self.ensure_group(q).await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Take over entries that have been pending (delivered, not acknowledged) for longer than
    /// `min_idle`: their worker died or lost Redis. Deleted entries are dropped from the list.
    pub async fn autoclaim(
        &self,
        q: QueueName,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(self.stream_key(q))
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await;
        match r {
            Ok(reply) => Ok(reply
                .claimed
                .into_iter()
                .map(|e| Self::delivery(q, e.id.clone(), &e.map))
                .collect()),
            Err(e) if is_nogroup(&e) => {
                self.ensure_group(q).await?;
                Ok(vec![])
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reset the idle time of an entry this worker is running (so `autoclaim` leaves it alone)
    /// and take it back if another worker claimed it. `false`: the entry is gone from Redis.
    pub async fn touch(&self, q: QueueName, consumer: &str, entry_id: &str) -> Result<bool> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<Vec<String>> = redis::cmd("XCLAIM")
            .arg(self.stream_key(q))
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(entry_id)
            .arg("JUSTID")
            .query_async(&mut c)
            .await;
        match r {
            Ok(ids) => Ok(!ids.is_empty()),
            Err(e) if is_nogroup(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Acknowledge and delete an entry: the job it carried is finished with (or re-queued in
    /// Postgres, from where the reconciler will enqueue it again).
    pub async fn done(&self, q: QueueName, entry_id: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let key = self.stream_key(q);
        let r: redis::RedisResult<Value> = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(entry_id)
            .cmd("XDEL")
            .arg(&key)
            .arg(entry_id)
            .query_async(&mut c)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_nogroup(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every job id on the stream (delivered or not).
    pub async fn job_ids(&self, q: QueueName) -> Result<HashSet<Uuid>> {
        let mut c = self.conn.clone();
        let key = self.stream_key(q);
        let mut out = HashSet::new();
        let mut start = "-".to_string();
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            let n = page.ids.len();
            for e in &page.ids {
                if let Some(id) = Self::delivery(q, e.id.clone(), &e.map).job_id {
                    out.insert(id);
                }
            }
            match page.ids.last() {
                Some(last) if n == 1000 => start = format!("({}", last.id),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Entries on the stream (`XLEN`).
    pub async fn len(&self, q: QueueName) -> Result<u64> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("XLEN")
            .arg(self.stream_key(q))
            .query_async(&mut c)
            .await?)
    }

    /// Delete every key under this queue's prefix (tests: "Redis was flushed").
    pub async fn delete_all_keys(&self) -> Result<u64> {
        let mut c = self.conn.clone();
        let mut cursor = 0u64;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                let d: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut c).await?;
                n += d;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(n)
    }
}
