//! The transactional producer's calls, done the way librdkafka documents them for a
//! `BaseProducer` whose delivery reports the calling thread serves itself:
//!
//! - [`send`] waits for room when librdkafka's queue is full instead of failing;
//!   [`send_to`] does the same for the hot path, through a [`Topic`] looked up once, and an
//!   [`Outbox`] for many records at once;
//! - [`flush`] serves delivery reports as they come until nothing is in flight;
//! - [`abort`] serves the delivery reports of the records in flight between resumable
//!   calls of `abort_transaction`, which waits for those reports while nobody else polls;
//! - [`retrying`] runs a transactional call again while librdkafka says it is retriable.
//!
//! Errors are returned as librdkafka classifies them (`RDKafkaError::txn_requires_abort`,
//! `is_fatal`); the caller decides between aborting and stopping.

use std::ffi::CString;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::warn;

/// The transactional producer's `linger.ms` unless configured otherwise: how long
/// librdkafka holds records back to fill batches. Its default (5 ms) makes batches a fifth
/// the size for the broker to handle: over the pipeline benchmark's million events, 25 ms
/// took 15% less of the broker's CPU (BENCHMARKS.md, session 20). Nothing waits for it:
/// records are read at the commit, and [`flush`] ends the linger of what is left then.
pub const LINGER_MS: u32 = 25;

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
                serve_reports(producer);
                record = back;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// An output topic of one producer, looked up in librdkafka once. `BaseProducer::send`
/// names its topic, so for every record rdkafka allocates a C string of the name and
/// librdkafka looks the topic up under the client's lock and counts a reference to it, on
/// memory every producing thread shares; [`send_to`] skips all of that.
pub struct Topic {
    rkt: NonNull<rdsys::rd_kafka_topic_t>,
}

// SAFETY: librdkafka's topic handles may be used from any thread.
unsafe impl Send for Topic {}
unsafe impl Sync for Topic {}

impl Topic {
    /// The handle of `name` in `producer`.
    ///
    /// # Safety
    /// The handle must be dropped before `producer` is (librdkafka frees its topics with the
    /// client): keep it in a struct that declares it before the producer.
    pub unsafe fn new<C: ProducerContext>(
        producer: &BaseProducer<C>,
        name: &str,
    ) -> Result<Topic, KafkaError> {
        let c_name = CString::new(name)
            .map_err(|_| KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTopic))?;
        // SAFETY: a live producer and a C string; a null configuration takes the defaults.
        let rkt = unsafe {
            rdsys::rd_kafka_topic_new(
                producer.client().native_ptr(),
                c_name.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        NonNull::new(rkt)
            .map(|rkt| Topic { rkt })
            .ok_or(KafkaError::MessageProduction(
                RDKafkaErrorCode::InvalidTopic,
            ))
    }

    /// librdkafka's handle, as a delivery report's `rkt` names it.
    pub fn as_ptr(&self) -> *mut rdsys::rd_kafka_topic_t {
        self.rkt.as_ptr()
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_topic_new`, destroyed once, before its producer (the
        // contract of `Topic::new`).
        unsafe { rdsys::rd_kafka_topic_destroy(self.rkt.as_ptr()) }
    }
}

/// librdkafka's `RD_KAFKA_PARTITION_UA`: the partitioner picks the partition.
const PARTITION_UNASSIGNED: i32 = -1;

/// Keyed records for one topic, collected and then produced together, in the order they
/// were added, each to the partition the producer's partitioner picks for its key
/// ([`Outbox::send`]).
///
/// One `rd_kafka_produce_batch` call per send instead of one `rd_kafka_produce` per record:
/// librdkafka then checks the producer's state, reads the clock for the records'
/// timestamps and takes the topic's lock once for the batch, and reads the clock once per
/// record (to queue it), where a record produced alone costs three reads; those reads were
/// 5% of the processing threads' time (BENCHMARKS.md, session 28).
///
/// Records are not given partitions here: for a record with its partition given,
/// librdkafka 2.12's `rd_kafka_produce_batch` adds the topic's unassigned-partition queue
/// to the transaction when it does not know the topic's partitions yet, which then fails
/// (tests/kafka_transactions.rs showed it on a topic just created); [`send_to`] has no such
/// hazard.
#[derive(Default)]
pub struct Outbox {
    /// The records' keys and values, one after the other.
    bytes: Vec<u8>,
    /// Per record: where its key starts, where its value starts, where it ends.
    records: Vec<(usize, usize, usize)>,
    /// librdkafka's messages of a send, pointing into `bytes`; kept for its allocation.
    messages: Vec<rdsys::rd_kafka_message_t>,
}

// SAFETY: `messages` holds pointers into `bytes` only during `send`, which fills and uses
// them on the calling thread; between sends they are stale and never read.
unsafe impl Send for Outbox {}

impl Outbox {
    /// How many records wait to be sent.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds a record with `key` and the value `write` appends to the buffer it is given;
    /// if `write` fails, nothing is added.
    pub fn push<E>(
        &mut self,
        key: &[u8],
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let value = self.bytes.len();
        match write(&mut self.bytes) {
            Ok(()) => {
                self.records.push((start, value, self.bytes.len()));
                Ok(())
            }
            Err(error) => {
                self.bytes.truncate(start);
                Err(error)
            }
        }
    }

    /// Adds a record with `key` and `value`, as they are.
    pub fn push_copy(&mut self, key: &[u8], value: &[u8]) {
        let Ok(()) = self.push(key, |out| {
            out.extend_from_slice(value);
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Forgets the records not sent (their transaction is aborted).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
        self.messages.clear();
    }

    /// Produces every record added since the last send to `topic` (a handle of
    /// `producer`), in order, serving delivery reports while librdkafka's queue is full; the
    /// outbox is empty after it, also when it fails. Nothing to do when it is empty.
    ///
    /// Errors: any production error other than a full queue (unknown topic, record too
    /// large); records before the failing one may have been produced.
    pub fn send<C: ProducerContext<DeliveryOpaque = ()>>(
        &mut self,
        producer: &BaseProducer<C>,
        topic: &Topic,
    ) -> Result<(), KafkaError> {
        let result = self.send_all(producer, topic);
        self.clear();
        result
    }

    fn send_all<C: ProducerContext<DeliveryOpaque = ()>>(
        &mut self,
        producer: &BaseProducer<C>,
        topic: &Topic,
    ) -> Result<(), KafkaError> {
        let base = self.bytes.as_ptr();
        let mut from = 0;
        while from < self.records.len() {
            self.messages.clear();
            self.messages
                .extend(self.records[from..].iter().map(|&(key, value, end)| {
                    // SAFETY: the offsets are within `bytes`, which is not changed until the
                    // produce call below has returned (librdkafka copies keys and values).
                    let (key_ptr, value_ptr) = unsafe { (base.add(key), base.add(value)) };
                    rdsys::rd_kafka_message_t {
                        err: rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                        rkt: std::ptr::null_mut(),
                        partition: PARTITION_UNASSIGNED,
                        payload: value_ptr.cast_mut().cast::<std::ffi::c_void>(),
                        len: end - value,
                        key: key_ptr.cast_mut().cast::<std::ffi::c_void>(),
                        key_len: value - key,
                        offset: 0,
                        _private: std::ptr::null_mut(),
                    }
                }));
            let count = i32::try_from(self.messages.len()).unwrap_or(i32::MAX);
            // SAFETY: a topic handle of a live producer (the contract of `Topic::new`) and
            // `count` initialized messages whose keys and values live in `bytes`; each is
            // copied (`RD_KAFKA_MSG_F_COPY`), and its error set, before the call returns. No
            // delivery opaque, as `DeliveryOpaque = ()` reads it.
            unsafe {
                rdsys::rd_kafka_produce_batch(
                    topic.rkt.as_ptr(),
                    PARTITION_UNASSIGNED,
                    rdsys::RD_KAFKA_MSG_F_COPY,
                    self.messages.as_mut_ptr(),
                    count,
                );
            }
            let sent = &self.messages[..count as usize];
            match sent
                .iter()
                .position(|m| m.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            {
                None => from += sent.len(),
                Some(failed) => match RDKafkaErrorCode::from(sent[failed].err) {
                    // The queue filled up at `failed`: it and every record after it were
                    // left out, those before it are queued.
                    RDKafkaErrorCode::QueueFull => {
                        serve_reports(producer);
                        from += failed;
                    }
                    code => return Err(KafkaError::MessageProduction(code)),
                },
            }
        }
        Ok(())
    }
}

/// [`send`] for the hot path: one record to `topic` (a handle of `producer`), to
/// `partition` or, with none, to the partition the producer's partitioner picks for `key`;
/// no payload is a tombstone. librdkafka copies key and payload.
///
/// Errors: any production error other than a full queue (unknown partition, record too
/// large).
pub fn send_to<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &Topic,
    partition: Option<i32>,
    key: &[u8],
    payload: Option<&[u8]>,
) -> Result<(), KafkaError> {
    let (payload_ptr, payload_len) = payload.map_or((std::ptr::null_mut(), 0), |p| {
        (p.as_ptr().cast_mut().cast::<std::ffi::c_void>(), p.len())
    });
    loop {
        // `rd_kafka_produce` rather than `rd_kafka_producev`: the same checks and message,
        // without parsing a list of arguments, zeroing a message on the stack and counting a
        // reference to the topic (an atomic on memory every producing thread shares), per
        // record: a record's send went from about 1,100 instructions to 980 (callgrind).
        //
        // SAFETY: a topic handle of a live producer (the contract of `Topic::new`); key and
        // payload are copied before the call returns (`RD_KAFKA_MSG_F_COPY`); no delivery
        // opaque, as `DeliveryOpaque = ()` reads it. The error is read at once, on the
        // calling thread, as librdkafka asks.
        let error = unsafe {
            let status = rdsys::rd_kafka_produce(
                topic.rkt.as_ptr(),
                partition.unwrap_or(PARTITION_UNASSIGNED),
                rdsys::RD_KAFKA_MSG_F_COPY,
                payload_ptr,
                payload_len,
                key.as_ptr().cast::<std::ffi::c_void>(),
                key.len(),
                std::ptr::null_mut(),
            );
            match status {
                0 => rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                _ => rdsys::rd_kafka_last_error(),
            }
        };
        match RDKafkaErrorCode::from(error) {
            RDKafkaErrorCode::NoError => return Ok(()),
            RDKafkaErrorCode::QueueFull => {
                serve_reports(producer);
            }
            code => return Err(KafkaError::MessageProduction(code)),
        }
    }
}

/// Waits until every produced record has its delivery report (or `timeout` passed),
/// serving the reports as they arrive.
///
/// `commit_transaction` flushes too, but rdkafka's `BaseProducer::flush` serves reports in
/// polls that each last their whole 100 ms slice however soon the last report arrives: every
/// commit would wait at least 100 ms. A timeout is not an error here: the transactional
/// call that follows waits and reports it.
///
/// librdkafka holds records back for up to `linger.ms` to fill batches, except while an
/// `rd_kafka_flush` call is in progress: then its broker threads, which the call wakes, send
/// what they hold at once. So that the wait here is not the linger's too, another thread
/// makes that call for as long as this one serves reports (rdkafka's `flush` makes calls
/// that return at once, which a broker thread may miss). With the reports served here the
/// call only waits: it returns when the last report is served, or at the deadline.
pub fn flush<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) {
    if producer.in_flight_count() == 0 {
        return;
    }
    let deadline = Instant::now() + timeout;
    let handle = Handle(producer.client().native_ptr());
    let wait_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let handle = handle;
            // SAFETY: the producer outlives this scope, and `rd_kafka_flush` is
            // thread-safe. Its result (a timeout) is what the caller goes on to report.
            unsafe { rdsys::rd_kafka_flush(handle.0, wait_ms) };
        });
        while producer.in_flight_count() > 0 && Instant::now() < deadline {
            serve_reports(producer);
        }
    });
}

/// A producer's librdkafka handle, for [`flush`]'s second thread.
struct Handle(*mut rdsys::rd_kafka_t);

// SAFETY: librdkafka's handle is meant to be used from several threads.
unsafe impl Send for Handle {}

/// How long [`serve_reports`] sleeps when no report is there: about what a produce
/// request takes on a local broker, so that the last report waits at most this long.
const REPORT_NAP: Duration = Duration::from_micros(100);

/// Serves the delivery reports (and other producer events) that are there; when there is
/// none, sleeps [`REPORT_NAP`] instead.
///
/// Not `BaseProducer::poll(d)` with a short `d`: it polls until its deadline, in waits of
/// whole milliseconds rounded down, so its last, partial millisecond is a busy loop of
/// zero-timeout polls and clock reads, and all of `poll(1 ms)` is: every commit's flush
/// spun one of this machine's two cores, which the broker and librdkafka's own threads
/// needed to deliver what the flush waited for.
/// `poll(Duration::ZERO)` serves at most one event and never waits.
fn serve_reports<C: ProducerContext<DeliveryOpaque = ()>>(producer: &BaseProducer<C>) {
    // Serving an event changes the count: a report destroys its records, and any event
    // leaves the queue it was counted in.
    let mut count = producer.in_flight_count();
    let mut served = false;
    loop {
        producer.poll(Duration::ZERO);
        let now = producer.in_flight_count();
        if now == count {
            break;
        }
        served = true;
        count = now;
    }
    if !served {
        std::thread::sleep(REPORT_NAP);
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

/// How long one `init_transactions` call of [`init_transactions`] may wait.
const INIT_STEP: Duration = Duration::from_millis(10);

/// Initialises the producer's transactions (fencing earlier incarnations of its
/// transactional id) in calls of up to 10 ms, each resuming the last, for up to `timeout`.
///
/// One long call can wait librdkafka's 500 ms producer-id timer for nothing. Called within
/// about 50 ms of the producer's creation, the producer finds its transaction coordinator
/// but that connection is not up yet, and the producer-id request is put off to the timer,
/// though the connection comes up a few milliseconds later. A call that times out is
/// resumed by calling again ("retry call to resume", librdkafka), and each call looks at
/// the connection again. Measured in the benchmark's passthrough, which calls it 3 ms after
/// creating its producer: 504 to 537 ms as one call, 55 to 67 ms in 50 ms calls, 17 to 26
/// ms in 10 ms calls (its first record 130 to 146 ms after its start instead of 165 to 178;
/// 5 and 2 ms calls did no better).
///
/// A step that times out returns librdkafka's last retriable error of the initialisation
/// in place of the timeout: "coordinator load in progress" while a broker that has just
/// started loads its transaction state. Those are resumed the same way.
///
/// Errors: what librdkafka returns that is not retriable, or its last error after
/// `timeout`.
pub fn init_transactions<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        let called = Instant::now();
        let step = INIT_STEP.min(deadline.saturating_duration_since(called));
        match producer.init_transactions(step) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                // Not a tight loop should an error come back at once: a step per call.
                std::thread::sleep(step.saturating_sub(called.elapsed()));
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
