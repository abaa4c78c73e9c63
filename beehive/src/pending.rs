//! Reply slots of requests waiting for answers, keyed by request id.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

use proto::{Message, MsgId};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Where a reply goes.
pub(crate) enum Slot {
    /// One reply to one waiter.
    One(oneshot::Sender<Message>),
    /// Replies from every member of a group; the slot goes when `remaining` reaches zero.
    Group {
        tx: mpsc::UnboundedSender<Message>,
        remaining: usize,
    },
}

/// The table of waiting requests. Sharded so that many concurrent callers rarely contend.
pub(crate) struct Pending {
    shards: Box<[Mutex<HashMap<MsgId, Slot>>]>,
}

const SHARDS: usize = 16;

impl Pending {
    pub(crate) fn new() -> Self {
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, id: &MsgId) -> &Mutex<HashMap<MsgId, Slot>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(id) as usize;
        &self.shards[h % SHARDS]
    }

    /// Registers a slot for `id`; the returned guard removes it when dropped, so a caller
    /// that timed out or was cancelled leaves nothing behind.
    pub(crate) fn register(&self, id: MsgId, slot: Slot) -> Result<SlotGuard<'_>> {
        let mut map = lock(self.shard(&id));
        match map.entry(id.clone()) {
            Entry::Occupied(_) => Err(Error::DuplicateId(id)),
            Entry::Vacant(v) => {
                v.insert(slot);
                Ok(SlotGuard { pending: self, id })
            }
        }
    }

    /// Hands `reply` to the waiter of its parent; gives it back when nobody waits.
    pub(crate) fn deliver(&self, parent: &MsgId, reply: Message) -> Option<Message> {
        let mut map = lock(self.shard(parent));
        match map.remove(parent) {
            None => Some(reply),
            Some(Slot::One(tx)) => tx.send(reply).err(),
            Some(Slot::Group { tx, remaining }) => {
                let sent = tx.send(reply).err().map(|e| e.0);
                if remaining > 1 {
                    let slot = Slot::Group {
                        tx,
                        remaining: remaining - 1,
                    };
                    map.insert(parent.clone(), slot);
                }
                sent
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// Removes its slot on drop.
pub(crate) struct SlotGuard<'a> {
    pending: &'a Pending,
    id: MsgId,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending.shard(&self.id)).remove(&self.id);
    }
}

/// The maps hold no invariant a panicking holder could break, so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
