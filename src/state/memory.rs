//! The in-memory model of [`PartitionStore`]: obviously right, so that the RocksDB store is
//! tested against it, and handy for tests of the processor that need no disk.

use std::collections::BTreeMap;

use super::{PartitionStore, StoreBatch, StoreError};

/// A [`PartitionStore`] in a `BTreeMap`; never fails. Nothing survives a drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoint: Option<i64>,
    /// Sum of key and value lengths, kept up to date so the metric costs nothing.
    bytes: u64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The entries, in key order.
    pub fn entries(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.entries
    }
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl PartitionStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn write(&mut self, batch: StoreBatch) -> Result<(), StoreError> {
        for (key, value) in batch.puts {
            let old = match value {
                Some(value) => {
                    self.bytes += entry_bytes(&key, &value);
                    self.entries.insert(key.clone(), value)
                }
                None => self.entries.remove(&key),
            };
            if let Some(old) = old {
                self.bytes -= entry_bytes(&key, &old);
            }
        }
        if batch.checkpoint.is_some() {
            self.checkpoint = batch.checkpoint;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.checkpoint)
    }

    fn scan(
        &self,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for (key, value) in self.entries.range(from.to_vec()..) {
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        *self = MemoryStore::default();
        Ok(())
    }

    fn approximate_bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximate_bytes_follows_overwrites_and_deletes() {
        let mut store = MemoryStore::new();
        let mut batch = StoreBatch::new();
        batch
            .put("a", "12345")
            .put("a", "1")
            .put("b", "xy")
            .delete("b");
        store.write(batch).unwrap();
        assert_eq!(store.approximate_bytes(), 2);
        store.clear().unwrap();
        assert_eq!(store.approximate_bytes(), 0);
    }
}
