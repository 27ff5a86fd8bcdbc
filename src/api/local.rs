//! [`LocalOrders`]: what the processor shares with the order API about the orders this
//! instance holds: a reader of each served partition's store, and a signal per watched
//! order each time a transaction that changed it commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use compact_str::CompactString;
use tokio::sync::watch;

use crate::kafka::partition_for_key;
use crate::state::StoreReader;

/// Shared, in an `Arc`, by the processor (which serves partitions and signals commits) and
/// the HTTP handlers (which read and watch).
///
/// `std` locks and not Tokio ones: nothing awaits while holding them, and each section is a
/// map lookup or insert.
pub struct LocalOrders {
    /// The input topics' partition count (0 until the processor has checked the topics):
    /// with the key, it says which partition holds an order.
    partitions: AtomicI32,
    /// A reader per partition whose store is restored and processed here.
    stores: RwLock<HashMap<i32, StoreReader>>,
    /// A version counter per order someone is watching, bumped after each commit that
    /// changed the order. A `watch` channel keeps only the latest value, so a slow client
    /// costs nothing here: it reads the store when it gets to it.
    watched: Mutex<HashMap<CompactString, watch::Sender<u64>>>,
    /// `watched.len()`, read without the lock on every commit: with nobody watching, a
    /// commit does not look at the map.
    watched_count: AtomicUsize,
    /// Bumped each time a partition stops being served here, so that event streams of its
    /// orders end and their clients reconnect to the new owner.
    moved: watch::Sender<u64>,
}

impl Default for LocalOrders {
    fn default() -> Self {
        LocalOrders {
            partitions: AtomicI32::new(0),
            stores: RwLock::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            watched_count: AtomicUsize::new(0),
            moved: watch::Sender::new(0),
        }
    }
}

impl LocalOrders {
    /// The processor found the inputs to have `partitions` partitions.
    pub fn set_partition_count(&self, partitions: i32) {
        self.partitions.store(partitions, Ordering::Relaxed);
    }

    /// The partition holding `order_id`, once the partition count is known.
    pub fn partition_of(&self, order_id: &str) -> Option<i32> {
        match self.partitions.load(Ordering::Relaxed) {
            n if n > 0 => Some(partition_for_key(order_id.as_bytes(), n)),
            _ => None,
        }
    }

    /// `partition` is restored: its orders are served from `reader`.
    pub fn serve(&self, partition: i32, reader: StoreReader) {
        write(&self.stores).insert(partition, reader);
    }

    /// `partition` leaves this instance (before its store closes).
    pub fn stop_serving(&self, partition: i32) {
        if write(&self.stores).remove(&partition).is_some() {
            self.moved.send_modify(|v| *v += 1);
        }
    }

    /// The reader of `partition`, if it is served here.
    pub fn reader(&self, partition: i32) -> Option<StoreReader> {
        read(&self.stores).get(&partition).cloned()
    }

    /// Whether anyone watches any order (cheap: one atomic load).
    pub fn has_watchers(&self) -> bool {
        self.watched_count.load(Ordering::Relaxed) > 0
    }

    /// A transaction that changed `orders` committed and its state is in the store: wakes
    /// their watchers.
    pub fn committed<'a>(&self, orders: impl Iterator<Item = &'a CompactString>) {
        if !self.has_watchers() {
            return;
        }
        let watched = lock(&self.watched);
        for order in orders {
            if let Some(sender) = watched.get(order) {
                sender.send_modify(|v| *v += 1);
            }
        }
    }

    /// Starts watching `order_id`'s commits; the watch ends when the returned guard drops.
    pub fn watch(self: &Arc<Self>, order_id: &str) -> Watch {
        let mut watched = lock(&self.watched);
        let commits = match watched.get(order_id) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                watched.insert(order_id.into(), sender);
                self.watched_count.store(watched.len(), Ordering::Relaxed);
                receiver
            }
        };
        Watch {
            local: self.clone(),
            order_id: order_id.into(),
            commits,
            moved: self.moved.subscribe(),
        }
    }
}

/// One client watching one order: [`commits`](Watch::commits) changes after each commit of
/// the order, [`moved`](Watch::moved) after each partition leaving this instance.
pub struct Watch {
    local: Arc<LocalOrders>,
    order_id: CompactString,
    pub commits: watch::Receiver<u64>,
    pub moved: watch::Receiver<u64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = lock(&self.local.watched);
        // Our receiver still counts here: 1 means we are the last watcher of the order.
        if watched
            .get(&self.order_id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            watched.remove(&self.order_id);
            self.local
                .watched_count
                .store(watched.len(), Ordering::Relaxed);
        }
    }
}

// Poisoned only if a thread panicked inside one of the short sections above, none of which
// can leave a map half-changed.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_wake_only_the_watchers_of_the_order_and_the_last_watcher_cleans_up() {
        let local = Arc::new(LocalOrders::default());
        assert!(!local.has_watchers());
        let mut a1 = local.watch("A");
        let a2 = local.watch("A");
        let b = local.watch("B");
        assert!(local.has_watchers());
        local.committed([CompactString::from("A")].iter());
        assert!(a1.commits.has_changed().unwrap());
        assert!(!b.commits.has_changed().unwrap());
        a1.commits.mark_unchanged();
        drop(a2);
        local.committed([CompactString::from("A")].iter());
        assert!(
            a1.commits.has_changed().unwrap(),
            "one watcher left, still woken"
        );
        drop(a1);
        drop(b);
        assert!(!local.has_watchers());
    }
}
