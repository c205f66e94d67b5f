//! The message bus contract and the in-memory bus.
//!
//! A bus carries recorded events to other services. Its contract, which the
//! Kafka adapter honours too:
//! - **Keyed order**: messages are keyed by stream id; all messages of one
//!   key land in one partition and are delivered in publish order.
//! - **Acknowledged publish**: [`MessageBus::publish`] returns only once the
//!   bus holds every message; a caller moves its checkpoint after that.
//! - **At-least-once delivery**: a consumer group resumes after its last
//!   committed offset per partition, so a message delivered but not
//!   committed is delivered again. Consumers de-duplicate by event id.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::event::RecordedEvent;

/// A message as delivered to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The topic it came from.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Its key: the event's stream id.
    pub key: String,
    /// The event.
    pub event: RecordedEvent,
}

/// Something that carries recorded events between services.
pub trait MessageBus: Send + Sync + 'static {
    /// The consumer type of this bus.
    type Consumer: BusConsumer;

    /// Publish `events` to `topic`, keyed by stream id, in order. Returns
    /// once the bus has acknowledged all of them.
    fn publish(&self, topic: &str, events: Vec<RecordedEvent>) -> impl Future<Output = Result<()>> + Send;

    /// A consumer of `topic` in consumer group `group`, starting after the
    /// group's committed offsets.
    fn consumer(&self, topic: &str, group: &str) -> impl Future<Output = Result<Self::Consumer>> + Send;
}

/// Receives messages of one topic for one consumer group.
pub trait BusConsumer: Send {
    /// The next message, waiting for one if none is pending.
    fn next(&mut self) -> impl Future<Output = Result<Delivery>> + Send;

    /// Mark `delivery` and everything before it in its partition as done for
    /// the group.
    fn commit(&mut self, delivery: &Delivery) -> impl Future<Output = Result<()>> + Send;
}

#[derive(Debug, Default)]
struct BusState {
    /// topic -> partitions -> messages
    topics: HashMap<String, Vec<Vec<RecordedEvent>>>,
    /// (group, topic) -> committed next offset per partition
    committed: HashMap<(String, String), Vec<u64>>,
}

#[derive(Debug)]
struct BusInner {
    state: Mutex<BusState>,
    partitions: u32,
    published: watch::Sender<u64>,
}

/// A [`MessageBus`] in process memory. Cloning shares the bus.
///
/// One consumer per group at a time is supported (there is no rebalancing).
#[derive(Debug, Clone)]
pub struct InMemoryBus {
    inner: Arc<BusInner>,
}

impl Default for InMemoryBus {
    fn default() -> Self {
        Self::new(4)
    }
}

impl InMemoryBus {
    /// A bus whose topics have `partitions` partitions (at least 1).
    pub fn new(partitions: u32) -> Self {
        InMemoryBus {
            inner: Arc::new(BusInner {
                state: Mutex::new(BusState::default()),
                partitions: partitions.max(1),
                published: watch::channel(0).0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, BusState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The partition of `key`: FNV-1a, stable across processes and versions.
    pub fn partition_for(&self, key: &str) -> u32 {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % u64::from(self.inner.partitions)) as u32
    }
}

impl MessageBus for InMemoryBus {
    type Consumer = InMemoryConsumer;

    async fn publish(&self, topic: &str, events: Vec<RecordedEvent>) -> Result<()> {
        let partitions = self.inner.partitions as usize;
        let keyed: Vec<_> = events
            .into_iter()
            .map(|e| (self.partition_for(e.stream_id.as_str()) as usize, e))
            .collect();
        {
            let mut st = self.state();
            let parts = st
                .topics
                .entry(topic.to_owned())
                .or_insert_with(|| vec![Vec::new(); partitions]);
            for (p, e) in keyed {
                parts[p].push(e);
            }
        }
        self.inner.published.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<InMemoryConsumer> {
        let positions = self
            .state()
            .committed
            .get(&(group.to_owned(), topic.to_owned()))
            .cloned()
            .unwrap_or_else(|| vec![0; self.inner.partitions as usize]);
        Ok(InMemoryConsumer {
            bus: self.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            positions,
            next_partition: 0,
            published: self.inner.published.subscribe(),
        })
    }
}

/// A consumer of an [`InMemoryBus`] topic.
#[derive(Debug)]
pub struct InMemoryConsumer {
    bus: InMemoryBus,
    topic: String,
    group: String,
    positions: Vec<u64>,
    next_partition: usize,
    published: watch::Receiver<u64>,
}

impl InMemoryConsumer {
    fn poll_pending(&mut self) -> Option<Delivery> {
        let st = self.bus.state();
        let parts = st.topics.get(&self.topic)?;
        let n = parts.len();
        for k in 0..n {
            let p = (self.next_partition + k) % n;
            if let Some(event) = parts[p].get(self.positions[p] as usize) {
                let delivery = Delivery {
                    topic: self.topic.clone(),
                    partition: p as u32,
                    offset: self.positions[p],
                    key: event.stream_id.to_string(),
                    event: event.clone(),
                };
                self.positions[p] += 1;
                self.next_partition = (p + 1) % n;
                return Some(delivery);
            }
        }
        None
    }
}

impl BusConsumer for InMemoryConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            self.published.borrow_and_update();
            if let Some(d) = self.poll_pending() {
                return Ok(d);
            }
            self.published.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    async fn commit(&mut self, delivery: &Delivery) -> Result<()> {
        let mut st = self.bus.state();
        let partitions = self.positions.len();
        let committed = st
            .committed
            .entry((self.group.clone(), self.topic.clone()))
            .or_insert_with(|| vec![0; partitions]);
        let slot = &mut committed[delivery.partition as usize];
        *slot = (*slot).max(delivery.offset + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Metadata, StreamId};

    fn event(stream: &str, version: u64) -> Result<RecordedEvent> {
        Ok(RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_id: StreamId::new(stream)?,
            stream_version: version,
            global_position: version,
            event_type: "Happened".into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        })
    }

    #[tokio::test]
    async fn keyed_messages_arrive_in_publish_order() -> Result<()> {
        let bus = InMemoryBus::new(3);
        let mut batch = Vec::new();
        for v in 1..=20 {
            batch.push(event(&format!("s-{}", v % 5), v)?);
        }
        bus.publish("t", batch.clone()).await?;
        let mut consumer = bus.consumer("t", "g").await?;
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        for _ in 0..20 {
            let d = consumer.next().await?;
            assert_eq!(d.partition, bus.partition_for(&d.key));
            seen.entry(d.key).or_default().push(d.event.stream_version);
        }
        for versions in seen.values() {
            assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        }
        assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 20);
        Ok(())
    }

    #[tokio::test]
    async fn uncommitted_messages_are_delivered_again() -> Result<()> {
        let bus = InMemoryBus::new(1);
        bus.publish("t", vec![event("a", 1)?, event("a", 2)?, event("a", 3)?])
            .await?;
        let mut first = bus.consumer("t", "g").await?;
        let one = first.next().await?;
        first.commit(&one).await?;
        let two = first.next().await?;
        drop(first); // crashed before committing `two`
        let mut second = bus.consumer("t", "g").await?;
        assert_eq!(second.next().await?.event.event_id, two.event.event_id);
        // another group starts from the beginning
        let mut other = bus.consumer("t", "other").await?;
        assert_eq!(other.next().await?.event.event_id, one.event.event_id);
        Ok(())
    }

    #[tokio::test]
    async fn consumer_waits_for_later_publish() -> Result<()> {
        let bus = InMemoryBus::new(2);
        let mut consumer = bus.consumer("t", "g").await?;
        let publisher = bus.clone();
        let late = event("late", 1)?;
        let id = late.event_id;
        let task = tokio::spawn(async move { publisher.publish("t", vec![late]).await });
        assert_eq!(consumer.next().await?.event.event_id, id);
        task.await.map_err(|e| Error::Backend(e.into()))??;
        Ok(())
    }
}
