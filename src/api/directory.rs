//! [`Directory`]: which instance serves which partition, so that any instance can forward
//! an order request to the one that holds the order.
//!
//! Every instance advertises, in the compacted `<application.id>-instances` topic (key: its
//! instance id), its HTTP base URL and the partitions it serves (restored and processed),
//! each time that set changes and every [`REFRESH`]; it writes a tombstone when it stops.
//! Every instance reads the whole topic and keeps the latest advert of each instance.
//! Adverts older than [`FRESH_FOR`] are ignored, so an instance that died without a
//! tombstone stops counting; when two fresh adverts claim a partition (its old owner has not
//! re-advertised yet), the newer wins. A forwarded request that finds the partition gone
//! gets 503 and is retried by its client, so a stale answer here costs a retry, never a
//! wrong order.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::api::Health;
use crate::api::PartitionState;
use crate::config::Config;
use crate::kafka::{client_config, Role};

/// How often an instance advertises even when nothing changed.
pub const REFRESH: Duration = Duration::from_secs(10);
/// How old an advert may be and still count.
pub const FRESH_FOR: Duration = Duration::from_secs(35);
/// How often the served partitions are compared with the last advert.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// One instance's advert: the value of its record in the instances topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    pub url: String,
    pub partitions: Vec<i32>,
    /// When it was written (epoch ms).
    pub at_ms: i64,
}

/// The adverts of the other instances.
pub struct Directory {
    instance_id: String,
    url: String,
    /// A `std` lock: nothing awaits while holding it.
    adverts: RwLock<HashMap<String, Advert>>,
}

impl Directory {
    /// The directory of instance `instance_id`, reachable at `url`.
    pub fn new(instance_id: impl Into<String>, url: impl Into<String>) -> Directory {
        Directory {
            instance_id: instance_id.into(),
            url: url.into(),
            adverts: RwLock::new(HashMap::new()),
        }
    }

    /// This instance's advertised base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The base URL of the other instance that serves `partition`, per the freshest advert
    /// claiming it.
    pub fn owner(&self, partition: i32) -> Option<String> {
        self.owner_at(partition, now_ms())
    }

    fn owner_at(&self, partition: i32, now_ms: i64) -> Option<String> {
        let fresh_after = now_ms - FRESH_FOR.as_millis() as i64;
        self.adverts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(id, advert)| {
                **id != self.instance_id
                    && advert.at_ms >= fresh_after
                    && advert.partitions.contains(&partition)
            })
            .max_by_key(|(_, advert)| advert.at_ms)
            .map(|(_, advert)| advert.url.clone())
    }

    /// A record of the instances topic: an advert, or a tombstone (`None`).
    pub fn learn(&self, instance_id: &str, advert: Option<Advert>) {
        let mut adverts = self.adverts.write().unwrap_or_else(|p| p.into_inner());
        match advert {
            Some(advert) => adverts.insert(instance_id.to_string(), advert),
            None => adverts.remove(instance_id),
        };
    }

    /// Reads the instances topic and advertises this instance's served partitions until
    /// `shutdown` completes, then writes this instance's tombstone.
    ///
    /// Errors: the Kafka clients cannot be created (a configuration error). Errors while
    /// running (the topic missing, the broker away) are logged and retried: the order API
    /// then answers 503 for orders held elsewhere.
    pub async fn run(
        self: Arc<Self>,
        config: &Config,
        health: Arc<Health>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), KafkaError> {
        let topic = config.instances_topic();
        let consumer: StreamConsumer = client_config(config, Role::DirectoryConsumer).create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let producer = Arc::new(
            client_config(config, Role::Producer)
                .create_with_context(AdvertDeliveries::default())?,
        );
        let mut stream = consumer.stream();
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut advertised: Option<(BTreeSet<i32>, i64)> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        let Some(Ok(id)) = message.key().map(std::str::from_utf8) else {
                            continue;
                        };
                        let advert = match message.payload() {
                            None => None,
                            Some(bytes) => match serde_json::from_slice::<Advert>(bytes) {
                                Ok(advert) => Some(advert),
                                Err(error) => {
                                    warn!(%error, instance = id, "unreadable advert in {topic}; ignored");
                                    continue;
                                }
                            },
                        };
                        self.learn(id, advert);
                    }
                    Some(Err(error)) => {
                        warn!(%error, %topic, "reading the instances topic");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    None => break,
                },
                _ = check.tick() => {
                    let serving: BTreeSet<i32> = health
                        .partitions()
                        .into_iter()
                        .filter(|(_, state)| *state == PartitionState::Ready)
                        .map(|(partition, _)| partition)
                        .collect();
                    let now = now_ms();
                    let due = match &advertised {
                        Some((last, at)) => *last != serving || now - at >= REFRESH.as_millis() as i64,
                        None => true,
                    };
                    if due {
                        let advert = Advert {
                            url: self.url.clone(),
                            partitions: serving.iter().copied().collect(),
                            at_ms: now,
                        };
                        if self.publish(&producer, &topic, Some(&advert)).await {
                            if advertised.as_ref().is_none_or(|(last, _)| *last != serving) {
                                info!(partitions = ?advert.partitions, url = %self.url, "advertised");
                            }
                            advertised = Some((serving, now));
                        }
                    }
                }
            }
        }
        self.publish(&producer, &topic, None).await;
        Ok(())
    }

    /// Writes this instance's advert (or tombstone); false, logged, when it failed.
    ///
    /// A `BaseProducer` polled only here, until the record's delivery report: rdkafka's
    /// `FutureProducer` polls on a thread of its own in 100 ms waits whose last millisecond
    /// is a busy loop, about 1% of a core for an advert every 10 s.
    async fn publish(
        &self,
        producer: &Arc<BaseProducer<AdvertDeliveries>>,
        topic: &str,
        advert: Option<&Advert>,
    ) -> bool {
        let payload = advert.map(|a| serde_json::to_vec(a).unwrap_or_default());
        let (producer, to, key) = (
            producer.clone(),
            topic.to_string(),
            self.instance_id.clone(),
        );
        let sent = tokio::task::spawn_blocking(move || {
            let mut record = BaseRecord::<str, Vec<u8>>::to(&to).key(&key);
            if let Some(payload) = &payload {
                record = record.payload(payload);
            }
            producer.send(record).map_err(|(error, _)| error)?;
            producer.flush(PUBLISH_TIMEOUT)?;
            producer.context().take_error().map_or(Ok(()), Err)
        })
        .await;
        match sent {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                warn!(%error, %topic, "advertising this instance");
                false
            }
            Err(error) => {
                warn!(%error, %topic, "advertising this instance: the task failed");
                false
            }
        }
    }
}

/// How long one advert may take to be delivered.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory producer's delivery reports: the error of the last failed one, until
/// [`Directory::publish`] takes it.
#[derive(Default)]
struct AdvertDeliveries {
    failed: Mutex<Option<KafkaError>>,
}

impl AdvertDeliveries {
    fn take_error(&self) -> Option<KafkaError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl ClientContext for AdvertDeliveries {}

impl ProducerContext for AdvertDeliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(url: &str, partitions: &[i32], at_ms: i64) -> Option<Advert> {
        Some(Advert {
            url: url.into(),
            partitions: partitions.to_vec(),
            at_ms,
        })
    }

    #[test]
    fn the_freshest_other_instance_claiming_a_partition_owns_it() {
        let directory = Directory::new("me", "http://me");
        let now = 1_000_000;
        directory.learn("me", advert("http://me", &[0], now));
        directory.learn("a", advert("http://a", &[1, 2], now - 5_000));
        directory.learn("b", advert("http://b", &[2], now - 1_000));
        assert_eq!(directory.owner_at(0, now), None, "never itself");
        assert_eq!(directory.owner_at(1, now).as_deref(), Some("http://a"));
        assert_eq!(directory.owner_at(2, now).as_deref(), Some("http://b"));
        // A stale advert no longer counts; a tombstone removes one.
        assert_eq!(
            directory.owner_at(1, now + FRESH_FOR.as_millis() as i64),
            None
        );
        directory.learn("b", None);
        assert_eq!(directory.owner_at(2, now).as_deref(), Some("http://a"));
    }
}
