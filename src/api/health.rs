//! Liveness and readiness of this instance, set by the processing loop and read by
//! `/healthz` and `/readyz`.
//!
//! - **Alive** while the processing loop heartbeats: [`Health::heartbeat`] at least once per
//!   bound (default [`DEFAULT_STALE_AFTER`], 30 s), including from a long restore's progress
//!   callback. A loop that is stuck stops heartbeating and `/healthz` turns 503, so the
//!   orchestrator restarts the instance. Creating the `Health` counts as a heartbeat: a
//!   starting instance has one bound to begin.
//! - **Ready** when no assigned partition is still to restore: every partition the group
//!   gave this instance has been restored and is processed. With no partition assigned (not
//!   yet in the group, or more instances than partitions) the instance is ready: there is
//!   nothing it would serve late.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long without a heartbeat before `/healthz` reports the instance stale.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

/// Shared, in an `Arc`, by the processing loop (which sets it) and the HTTP server (which
/// reads it).
#[derive(Debug)]
pub struct Health {
    /// The zero of `last_heartbeat`: monotonic, so a wall-clock jump cannot fake staleness.
    origin: Instant,
    /// Nanoseconds from `origin` to the last heartbeat. An atomic: the loop heartbeats often
    /// and must never wait for a request being served.
    last_heartbeat: AtomicU64,
    stale_after: Duration,
    /// The assigned partitions and how far each is. A `std::sync::Mutex` and not a Tokio one:
    /// nothing awaits while holding it, and it changes only on rebalances and restores.
    partitions: Mutex<BTreeMap<i32, PartitionState>>,
}

/// Where an assigned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Assigned, its restore not yet begun.
    Assigned,
    /// Its store is being restored from the changelog.
    Restoring,
    /// Restored; its records are processed.
    Ready,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The assigned partitions that are not ready yet (restore pending or in progress), in
    /// order.
    pub restoring: Vec<i32>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEFAULT_STALE_AFTER)
    }
}

impl Health {
    /// A `Health` that turns stale `stale_after` without a heartbeat (tests pass a short one).
    pub fn new(stale_after: Duration) -> Health {
        Health {
            origin: Instant::now(),
            last_heartbeat: AtomicU64::new(0),
            stale_after,
            partitions: Mutex::new(BTreeMap::new()),
        }
    }

    /// The processing loop is making progress. Cheap: one atomic store.
    pub fn heartbeat(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_heartbeat.store(nanos, Ordering::Relaxed);
    }

    /// How long ago the last heartbeat was, as seen at `now`.
    pub fn since_heartbeat(&self, now: Instant) -> Duration {
        let last = self.origin + Duration::from_nanos(self.last_heartbeat.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// True while the last heartbeat is less than the bound old.
    pub fn is_alive(&self) -> bool {
        self.is_alive_at(Instant::now())
    }

    /// [`is_alive`](Self::is_alive) as seen at `now`, so tests need not wait out the bound.
    pub fn is_alive_at(&self, now: Instant) -> bool {
        self.since_heartbeat(now) < self.stale_after
    }

    /// The bound given to [`new`](Self::new).
    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    /// The group assigned `partition` to this instance; it is not ready until
    /// [`partition_ready`](Self::partition_ready).
    pub fn partition_assigned(&self, partition: i32) {
        self.set(partition, PartitionState::Assigned);
    }

    /// `partition`'s store is being restored.
    pub fn partition_restoring(&self, partition: i32) {
        self.set(partition, PartitionState::Restoring);
    }

    /// `partition` is restored and processed.
    pub fn partition_ready(&self, partition: i32) {
        self.set(partition, PartitionState::Ready);
    }

    /// `partition` left this instance (revoked or lost); it no longer counts.
    pub fn partition_revoked(&self, partition: i32) {
        self.lock().remove(&partition);
    }

    /// True when no assigned partition is still to restore (so true with none assigned).
    pub fn is_ready(&self) -> bool {
        self.lock()
            .values()
            .all(|state| *state == PartitionState::Ready)
    }

    /// Readiness with the partitions that hold it back.
    pub fn readiness(&self) -> Readiness {
        let restoring: Vec<i32> = self
            .lock()
            .iter()
            .filter(|(_, state)| **state != PartitionState::Ready)
            .map(|(partition, _)| *partition)
            .collect();
        Readiness {
            ready: restoring.is_empty(),
            restoring,
        }
    }

    /// Where `partition` stands here; None when it is not assigned to this instance.
    pub fn partition_state(&self, partition: i32) -> Option<PartitionState> {
        self.lock().get(&partition).copied()
    }

    /// Every assigned partition and its state, in partition order.
    pub fn partitions(&self) -> Vec<(i32, PartitionState)> {
        self.lock().iter().map(|(p, s)| (*p, *s)).collect()
    }

    fn set(&self, partition: i32, state: PartitionState) {
        self.lock().insert(partition, state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, PartitionState>> {
        // Poisoned only if a thread panicked inside one of the short sections above, none of
        // which can leave the map half-changed.
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_instance_is_alive_for_one_bound_then_needs_heartbeats() {
        let health = Health::new(Duration::from_secs(30));
        let start = Instant::now();
        assert!(health.is_alive());
        assert!(health.is_alive_at(start + Duration::from_secs(29)));
        assert!(!health.is_alive_at(start + Duration::from_secs(31)));
    }

    #[test]
    fn a_heartbeat_restarts_the_bound() {
        let health = Health::new(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!health.is_alive());
        // Taken before the heartbeat, so that a slow machine cannot make it stale again
        // before the assertion.
        let before = Instant::now();
        health.heartbeat();
        assert!(health.is_alive_at(before));
        assert!(!health.is_alive_at(Instant::now() + Duration::from_millis(20)));
    }

    #[test]
    fn ready_with_no_partitions_and_only_when_every_assigned_partition_is_restored() {
        let health = Health::default();
        assert!(health.is_ready());
        health.partition_assigned(0);
        health.partition_assigned(1);
        assert!(!health.is_ready());
        health.partition_restoring(0);
        health.partition_ready(1);
        assert_eq!(
            health.readiness(),
            Readiness {
                ready: false,
                restoring: vec![0]
            }
        );
        health.partition_ready(0);
        assert!(health.is_ready());
        // A newly assigned partition holds readiness back again until restored...
        health.partition_assigned(2);
        assert!(!health.is_ready());
        // ...unless it is revoked first.
        health.partition_revoked(2);
        assert!(health.is_ready());
        assert_eq!(
            health.partitions(),
            [(0, PartitionState::Ready), (1, PartitionState::Ready)]
        );
    }
}
