//! Input records in batches. `BaseConsumer::poll` hands out one record per call, each with
//! a queue lock, clock reads and an event allocated and freed around it: on this machine
//! that was about a tenth of the processing thread's time. A [`FetchQueue`] takes the
//! fetched records of the partitions it is told to follow and gives them out up to
//! [`FetchQueue::consume`]'s batch size per call (librdkafka's `rd_kafka_consume_batch_queue`).
//!
//! The group consumer's own queue keeps its events (rebalances, errors, statistics), so the
//! consumer is still polled between batches, and a rebalance never falls inside one.
//! librdkafka stops forwarding a partition when its fetcher stops (revoke, unassign), so
//! a partition is followed again after every assignment. Until then its records are held
//! in its own queue ([`hold`]).

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;

/// What the processor reads of an input record: a consumed message, whichever way it
/// was consumed.
pub trait InputRecord {
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    /// The record's timestamp (epoch ms), when it has one.
    fn timestamp_ms(&self) -> Option<i64>;
}

impl InputRecord for BorrowedMessage<'_> {
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }
    fn topic(&self) -> &str {
        Message::topic(self)
    }
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn timestamp_ms(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }
}

/// Keeps the fetched records of `topic`/`partition` in the partition's own queue, out of
/// the consumer's, until a [`FetchQueue`] follows it (which takes those already fetched
/// too). Called before the partition is assigned: librdkafka keeps a forwarding the
/// application set when the partition's fetcher starts, and otherwise forwards the
/// records to the consumer's queue. librdkafka stops fetching a partition whose queue
/// holds `queued.max.messages.kbytes`.
pub fn hold<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> KafkaResult<()> {
    forward(
        consumer.client().native_ptr(),
        topic,
        partition,
        std::ptr::null_mut(),
    )
}

/// Forwards the fetched records of `topic`/`partition` of consumer `rk` to `to`, or keeps
/// them in the partition's own queue with a null `to`.
fn forward(
    rk: *mut rdsys::rd_kafka_t,
    topic: &str,
    partition: i32,
    to: *mut rdsys::rd_kafka_queue_t,
) -> KafkaResult<()> {
    let name = CString::new(topic)
        .map_err(|_| KafkaError::Subscription(format!("topic name {topic:?} has a NUL byte")))?;
    // SAFETY: `rk` is a live consumer (the callers' borrow of it); the partition queue
    // handle is destroyed here (the forwarding it set stays in place); `to` is null or a
    // live queue of the same consumer.
    unsafe {
        let partition_queue = rdsys::rd_kafka_queue_get_partition(rk, name.as_ptr(), partition);
        if partition_queue.is_null() {
            return Err(KafkaError::Subscription(format!(
                "no queue for {topic}[{partition}]: not a partition of this consumer"
            )));
        }
        rdsys::rd_kafka_queue_forward(partition_queue, to);
        rdsys::rd_kafka_queue_destroy(partition_queue);
    }
    Ok(())
}

/// A queue that followed partitions' fetched records go to instead of the consumer's
/// queue. Lives no longer than its consumer (`'c`), as librdkafka requires.
pub struct FetchQueue<'c> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    consumer: *mut rdsys::rd_kafka_t,
    _consumer: PhantomData<&'c ()>,
}

// SAFETY: librdkafka's queue calls are thread-safe; `consume` and `follow` take `&self`,
// and the queue lives no longer than its consumer ('c) wherever it is used from.
unsafe impl Sync for FetchQueue<'_> {}

impl<'c> FetchQueue<'c> {
    /// A new, empty queue of `consumer`.
    pub fn new<C: ConsumerContext>(consumer: &'c BaseConsumer<C>) -> FetchQueue<'c> {
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is a live consumer for 'c; the queue is destroyed in `drop`, within 'c.
        let queue = unsafe { rdsys::rd_kafka_queue_new(rk) };
        FetchQueue {
            queue: NonNull::new(queue).expect("rd_kafka_queue_new returned NULL (out of memory)"),
            consumer: rk,
            _consumer: PhantomData,
        }
    }

    /// Sends the fetched records of `topic`/`partition` to this queue from now on, with
    /// those its own queue holds ([`hold`]). Either before the partition is assigned
    /// (librdkafka keeps a forwarding the application set when the partition's fetcher
    /// starts) or while it is assigned and held, so that nothing was fetched to the
    /// consumer's own queue before.
    pub fn follow(&self, topic: &str, partition: i32) -> KafkaResult<()> {
        forward(self.consumer, topic, partition, self.queue.as_ptr())
    }

    /// Replaces `batch` with the records waiting, up to `max`; when there are none, waits
    /// up to `timeout` for one. Consumer errors (a partition that cannot be fetched, ...)
    /// come out as `Err` items of [`Batch::get`].
    pub fn consume(&self, timeout: Duration, max: usize, batch: &mut Batch<'c>) {
        batch.clear();
        // librdkafka's batch call waits until it has `max` records or the time is up, a
        // wake-up per record: take what is there, and wait only for a first one.
        self.take(Duration::ZERO, max, batch);
        if batch.is_empty() && !timeout.is_zero() && max > 0 {
            self.take(timeout, 1, batch);
            if !batch.is_empty() {
                self.take(Duration::ZERO, max - 1, batch);
            }
        }
    }

    /// Appends up to `max` records to `batch`, waiting up to `timeout` for them all.
    fn take(&self, timeout: Duration, max: usize, batch: &mut Batch<'c>) {
        let had = batch.messages.len();
        batch.messages.reserve(max);
        let timeout_ms = wait_ms(timeout);
        // SAFETY: the array has room for `max` more pointers; librdkafka writes `n` of them,
        // which `batch` then owns and destroys.
        unsafe {
            let n = rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                batch.messages.as_mut_ptr().add(had),
                max,
            );
            // -1 only for a queue of a non-consumer handle, which this is not.
            batch
                .messages
                .set_len(had + usize::try_from(n).unwrap_or(0));
        }
    }
}

/// librdkafka's wait in whole milliseconds, rounded up: rounded down, a wait of less than
/// one would not wait at all, and a caller waiting out a deadline (`processor::fill`) would
/// spin through its last millisecond (an idle processor spent 3 to 4% of a core so).
fn wait_ms(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

impl Drop for FetchQueue<'_> {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once, before the consumer ('c).
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// Records consumed by [`FetchQueue::consume`], owned until the next call or drop.
pub struct Batch<'c> {
    messages: Vec<*mut rdsys::rd_kafka_message_t>,
    _consumer: PhantomData<&'c ()>,
}

// SAFETY: librdkafka's messages may be read and destroyed on any thread; a batch is used by
// one thread at a time (it is moved or lent `&mut`), and lives no longer than its consumer.
unsafe impl Send for Batch<'_> {}

impl Default for Batch<'_> {
    fn default() -> Self {
        Batch {
            messages: Vec::new(),
            _consumer: PhantomData,
        }
    }
}

impl<'c> Batch<'c> {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The record at `index`, or the consumer error librdkafka put in its place.
    pub fn get(&self, index: usize) -> Option<KafkaResult<Fetched<'_>>> {
        let &ptr = self.messages.get(index)?;
        // SAFETY: librdkafka gave out this message and it is destroyed only by `clear`,
        // which needs `&mut self`: the reference cannot outlive it.
        let message = unsafe { &*ptr };
        if message.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Some(Ok(Fetched { message }));
        }
        Some(Err(match message.err {
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                KafkaError::PartitionEOF(message.partition)
            }
            error => KafkaError::MessageConsumption(RDKafkaErrorCode::from(error)),
        }))
    }

    /// Destroys the records (their memory goes back to librdkafka).
    pub fn clear(&mut self) {
        for ptr in self.messages.drain(..) {
            // SAFETY: each was given out by `rd_kafka_consume_batch_queue` and is destroyed
            // once.
            unsafe { rdsys::rd_kafka_message_destroy(ptr) }
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One record of a [`Batch`].
pub struct Fetched<'b> {
    message: &'b rdsys::rd_kafka_message_t,
}

/// The bytes at `ptr`, `len` long; None for a null pointer (no key, no payload).
///
/// SAFETY: `ptr` must be null or point to `len` bytes that live for `'a`.
unsafe fn bytes<'a>(ptr: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    (!ptr.is_null()).then(|| std::slice::from_raw_parts(ptr.cast::<u8>(), len))
}

impl InputRecord for Fetched<'_> {
    fn key(&self) -> Option<&[u8]> {
        // SAFETY: the message owns its key for as long as it lives.
        unsafe { bytes(self.message.key, self.message.key_len) }
    }
    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: as for the key.
        unsafe { bytes(self.message.payload, self.message.len) }
    }
    fn topic(&self) -> &str {
        // SAFETY: a consumed message holds a reference to its topic, whose name is a C
        // string. Kafka topic names are ASCII: checked so (not validated as UTF-8) for
        // every record.
        let name = unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.message.rkt)) };
        crate::engine::codec::utf8(name.to_bytes()).unwrap_or("(topic name not UTF-8)")
    }
    fn partition(&self) -> i32 {
        self.message.partition
    }
    fn offset(&self) -> i64 {
        self.message.offset
    }
    fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; `kind` is written by librdkafka.
        let ms = unsafe { rdsys::rd_kafka_message_timestamp(self.message, &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ms >= 0)
            .then_some(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_whole_milliseconds_rounded_up() {
        let us = Duration::from_micros;
        assert_eq!(wait_ms(Duration::ZERO), 0);
        assert_eq!(wait_ms(us(1)), 1);
        assert_eq!(wait_ms(us(999)), 1);
        assert_eq!(wait_ms(us(1_000)), 1);
        assert_eq!(wait_ms(us(1_001)), 2);
        assert_eq!(wait_ms(Duration::from_millis(20)), 20);
        assert_eq!(wait_ms(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
