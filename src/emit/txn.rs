//! The transactional producer's calls, done the way librdkafka documents them for a
//! `BaseProducer` whose delivery reports the calling thread serves itself:
//!
//! - [`send`] waits for room when librdkafka's queue is full instead of failing;
//! - [`flush`] serves delivery reports in short polls until nothing is in flight;
//! - [`abort`] serves the delivery reports of the records in flight between resumable
//!   calls of `abort_transaction`, which waits for those reports while nobody else polls;
//! - [`retrying`] runs a transactional call again while librdkafka says it is retriable.
//!
//! Errors are returned as librdkafka classifies them (`RDKafkaError::txn_requires_abort`,
//! `is_fatal`); the caller decides between aborting and stopping.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::warn;

/// How long one transactional call may take before it counts as failed.
pub const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Produces one record, serving delivery reports while librdkafka's queue is full.
///
/// Errors: any production error other than a full queue (unknown topic, record too large).
pub fn send<C, K, P>(
    producer: &BaseProducer<C>,
    record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    C: ProducerContext<DeliveryOpaque = ()>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(5));
                record = back;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Waits until every produced record has its delivery report (or `timeout` passed),
/// serving the reports as they arrive.
///
/// `commit_transaction` flushes too, but rdkafka's `BaseProducer::flush` serves reports in
/// polls that each last their whole 100 ms slice however soon the last report arrives: every
/// commit would wait at least 100 ms. Polling in 1 ms slices here leaves it nothing to wait
/// for. A timeout is not an error here: the transactional call that follows waits and
/// reports it.
pub fn flush<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
}

/// Aborts the open transaction.
///
/// librdkafka's `abort_transaction` purges the records still in its queue (flagged as an
/// abort's purge, so the idempotent sequence numbers stay consistent) and then waits until
/// every record of the transaction has its delivery report served. A `BaseProducer` serves
/// reports only when polled, and the thread that would poll is the one waiting in
/// `abort_transaction`: with records in flight the abort timed out ("the event queue must be
/// polled for delivery report events ... prior to calling abort"). librdkafka documents that
/// timeout as retriable, the abort resuming where it stopped. So, with records in flight: a
/// short first call (which purges), then serve the reports, then resume the abort with the
/// rest of `timeout`.
///
/// Purging here with `rd_kafka_purge` instead is wrong: without the abort's flag the purged
/// records leave a gap in the partition's sequence numbers and the *next* transaction fails
/// with "skipped sequence numbers".
///
/// Errors: a fatal error (the producer was fenced) or a timeout; retriable errors are
/// retried for up to `timeout`.
pub fn abort<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    const PURGE_CALL: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let call = if producer.in_flight_count() > 0 {
            PURGE_CALL.min(remaining)
        } else {
            remaining
        };
        match producer.abort_transaction(call) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                if producer.in_flight_count() == 0 {
                    warn!(error = %e, "retriable transaction error while aborting; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                flush(producer, deadline.saturating_duration_since(Instant::now()));
            }
            result => return result,
        }
    }
}

/// Runs a transactional call again while librdkafka says its error is retriable (as its
/// documentation asks), for up to `timeout`; any other error goes to the caller to classify.
pub fn retrying(
    timeout: Duration,
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match call() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                warn!(error = %e, "retriable transaction error; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}
