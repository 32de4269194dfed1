//! The inodes the kernel holds references to, and which of them to ask it to let go of.
//!
//! The kernel keeps every inode it has looked up (or received in a `readdirplus` listing)
//! until it sends `forget`, and with memory to spare it never does: a `find` over a million
//! files would pin a million nodes here. So the table has a limit: once it holds more, the
//! mount asks the kernel to drop its entries for the least recently looked-up nodes (a FUSE
//! entry invalidation, see `FsCore::set_evictor`), down to three quarters of the limit. The
//! kernel answers with `forget` for those nothing uses; a node leaves the table only then, so
//! every inode the kernel still holds stays resolvable. Entries in use (open files, working
//! directories) stay in the kernel and here, whatever the limit.

use crate::cache::lock;
use crate::node::{Node, What};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Bytes one remembered node costs, about: the node, its `Arc`, the table's slot.
const NODE_BYTES: usize = std::mem::size_of::<Node>() + 96;

struct Slot {
    node: Arc<Node>,
    lookups: u64,
    /// When the kernel last looked it up (the table's clock).
    used: u64,
}

#[derive(Default)]
struct Table {
    slots: HashMap<u64, Slot>,
    clock: u64,
}

pub(crate) struct Inodes {
    table: Mutex<Table>,
    limit: usize,
    /// Wakes the evicting thread (see `FsCore::set_evictor`); a full channel means it is awake.
    wake: Mutex<Option<SyncSender<()>>>,
}

impl Inodes {
    /// A table that starts evicting above `bytes` of nodes (at least 1,024 nodes).
    pub(crate) fn new(bytes: usize) -> Inodes {
        Inodes {
            table: Mutex::new(Table::default()),
            limit: (bytes / NODE_BYTES).max(1024),
            wake: Mutex::new(None),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Node>> {
        lock(&self.table).slots.get(&ino).map(|s| s.node.clone())
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.table).slots.len()
    }

    /// The kernel now holds one more reference to each of `list`.
    pub(crate) fn remember(&self, list: Vec<Node>) {
        if list.is_empty() {
            return;
        }
        let over = {
            let mut t = lock(&self.table);
            let now = t.clock;
            t.clock += 1;
            for n in list {
                let node = Arc::new(n);
                let slot = t.slots.entry(node.ino).or_insert_with(|| Slot {
                    node: node.clone(),
                    lookups: 0,
                    used: now,
                });
                slot.node = node;
                slot.lookups += 1;
                slot.used = now;
            }
            t.slots.len() > self.limit
        };
        if over {
            if let Some(wake) = lock(&self.wake).as_ref() {
                let _ = wake.try_send(());
            }
        }
    }

    /// The kernel dropped `n` references to `ino`; true if the node is gone.
    pub(crate) fn forget(&self, ino: u64, n: u64) -> bool {
        let mut t = lock(&self.table);
        match t.slots.get_mut(&ino) {
            Some(slot) => {
                slot.lookups = slot.lookups.saturating_sub(n);
                slot.lookups == 0 && t.slots.remove(&ino).is_some()
            }
            None => false,
        }
    }

    /// A channel whose messages mean "over the limit": the evicting thread's.
    pub(crate) fn wakeups(&self) -> Receiver<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        *lock(&self.wake) = Some(tx);
        rx
    }

    /// The least recently looked-up nodes the kernel can be asked to drop, enough to bring the
    /// table to three quarters of its limit (none while it is within the limit). Only nodes
    /// named in their directory as stored qualify: entries inside snapshots and the paths of
    /// `history/`; the few synthetic directories above them stay.
    pub(crate) fn oldest(&self) -> Vec<Arc<Node>> {
        let t = lock(&self.table);
        if t.slots.len() <= self.limit {
            return Vec::new();
        }
        let want = t.slots.len() - self.limit * 3 / 4;
        let mut aged: Vec<(u64, &Arc<Node>)> = t
            .slots
            .values()
            .filter(|s| evictable(&s.node, &t.slots))
            .map(|s| (s.used, &s.node))
            .collect();
        if aged.len() > want {
            aged.select_nth_unstable_by_key(want, |(used, _)| *used);
            aged.truncate(want);
        }
        aged.into_iter().map(|(_, n)| n.clone()).collect()
    }
}

/// Whether the kernel can be asked to drop `n` by the name `FsCore::name_of` gives: not the
/// versions in `history/` (named by date there; they go with their directory).
fn evictable(n: &Node, slots: &HashMap<u64, Slot>) -> bool {
    match &n.what {
        What::Entry { .. } => !matches!(
            slots.get(&n.parent).map(|p| &p.node.what),
            Some(What::History { .. })
        ),
        What::History { path, .. } => !path.is_empty(),
        _ => false,
    }
}
