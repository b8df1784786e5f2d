//! The open connections of one listener, oldest first. At the cap, a new connection
//! takes the place of the oldest one that has no request in flight: slow or silent
//! clients (the slowloris kind) then cannot keep anyone out, while a request being
//! served is never cut. An attacker would have to open connections faster than a
//! client sends its request head to push that client's connection out.
//!
//! One client address (an IPv4 address, an IPv6 /64: the TCP peer) holds only a share
//! of the cap: past it, its new connection takes the place of its own oldest idle one,
//! never someone else's, so one host cannot fill the cap however it behaves.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::activity::{Activity, Heir};

/// Entries looked at per eviction: bounds the work a flood of new connections causes
/// when the oldest ones are all busy (those are moved to the back and looked at last).
const SCAN: usize = 64;

/// The address a share is counted by: IPv4 as is, IPv6 by its /64 (one host's
/// allocation), an IPv4-mapped IPv6 address as the IPv4 one.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

#[derive(Debug, Default)]
struct Peer {
    held: usize,
    queue: VecDeque<Weak<Activity>>,
}

#[derive(Debug, Default)]
struct Queues {
    all: VecDeque<Weak<Activity>>,
    peers: HashMap<IpAddr, Peer>,
}

#[derive(Debug)]
pub struct Open {
    queues: Mutex<Queues>,
    max: usize,
    share: usize,
}

/// A connection counted against its address's share, until dropped.
#[derive(Debug)]
pub struct Held {
    open: Arc<Open>,
    key: IpAddr,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut queues = self.open.lock();
        if let Some(peer) = queues.peers.get_mut(&self.key) {
            peer.held = peer.held.saturating_sub(1);
            if peer.held == 0 {
                queues.peers.remove(&self.key);
            }
        }
    }
}

/// Closed connections leave their entries behind; sweep them now and then, so a queue
/// stays within twice its bound.
fn push(queue: &mut VecDeque<Weak<Activity>>, bound: usize, activity: &Arc<Activity>) {
    if queue.len() >= 2 * bound {
        queue.retain(|a| a.strong_count() > 0);
    }
    queue.push_back(Arc::downgrade(activity));
}

/// Closes the oldest connection of `queue` that is waiting, its slot going to `heir`.
fn evict_from(queue: &mut VecDeque<Weak<Activity>>, heir: &mut Option<Heir>) -> bool {
    for _ in 0..SCAN {
        let Some(entry) = queue.pop_front() else {
            return false;
        };
        let Some(activity) = entry.upgrade() else {
            continue;
        };
        if activity.evict_if_waiting(heir) {
            return true;
        }
        // Busy: looked at again later. Already evicted: on its way out.
        if !activity.is_evicted() {
            queue.push_back(entry);
        }
    }
    false
}

impl Open {
    /// `share`: connections one address may hold (at least 1).
    pub fn new(max: usize, share: usize) -> Self {
        Self {
            queues: Mutex::new(Queues::default()),
            max: max.max(1),
            share: share.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the address `key` already holds its whole share.
    pub fn over_share(&self, key: IpAddr) -> bool {
        self.lock()
            .peers
            .get(&key)
            .is_some_and(|p| p.held >= self.share)
    }

    /// Counts a connection; `key` is its address, `None` for one exempt from the share
    /// (a trusted proxy, which carries many clients).
    pub fn add(self: &Arc<Self>, activity: &Arc<Activity>, key: Option<IpAddr>) -> Option<Held> {
        let mut queues = self.lock();
        push(&mut queues.all, self.max, activity);
        let key = key?;
        let peer = queues.peers.entry(key).or_default();
        peer.held += 1;
        push(&mut peer.queue, self.share, activity);
        Some(Held {
            open: self.clone(),
            key,
        })
    }

    /// Closes the oldest waiting connection of the address `key` (see `evict_one`).
    pub fn evict_own(&self, key: IpAddr, heir: &mut Option<Heir>) -> bool {
        let mut queues = self.lock();
        queues
            .peers
            .get_mut(&key)
            .is_some_and(|peer| evict_from(&mut peer.queue, heir))
    }

    /// Closes the oldest connection that has no request in flight (or only requests
    /// whose body is still awaited), its slot going to `heir`; false when none of
    /// those looked at is waiting.
    pub fn evict_one(&self, heir: &mut Option<Heir>) -> bool {
        evict_from(&mut self.lock().all, heir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_is_evicted_and_busy_ones_are_kept() {
        let open = Arc::new(Open::new(3, 3));
        let (oldest, busy, newest) = (Activity::new(), Activity::new(), Activity::new());
        for a in [&busy, &oldest, &newest] {
            open.add(a, None);
        }
        let _request = busy.begin();
        assert!(open.evict_one(&mut None));
        assert!(!oldest.is_waiting(), "the oldest waiting one went");
        assert!(newest.is_waiting() && !busy.is_waiting());
        assert!(open.evict_one(&mut None));
        assert!(!newest.is_waiting());
        assert!(!open.evict_one(&mut None), "only a busy connection is left");
        assert!(!busy.is_evicted(), "and it was not touched");
    }

    #[test]
    fn closed_connections_do_not_pile_up() {
        let open = Arc::new(Open::new(2, 1));
        let key = Some(peer_key("10.0.0.1".parse().unwrap()));
        for _ in 0..100 {
            drop(open.add(&Activity::new(), key));
        }
        assert!(open.lock().all.len() <= 4);
        assert!(open.lock().peers.is_empty(), "closed ones are not counted");
        assert!(!open.evict_one(&mut None), "all of them are gone");
    }

    #[test]
    fn an_address_past_its_share_evicts_only_its_own() {
        let open = Arc::new(Open::new(10, 2));
        let (me, other) = (
            peer_key("2001:db8::1".parse().unwrap()),
            peer_key("10.0.0.2".parse().unwrap()),
        );
        assert_eq!(me, peer_key("2001:db8::ffff:1".parse().unwrap()), "a /64");
        let theirs = Activity::new();
        let _theirs = open.add(&theirs, Some(other));
        let (first, second) = (Activity::new(), Activity::new());
        let _held = [open.add(&first, Some(me)), open.add(&second, Some(me))];
        assert!(open.over_share(me) && !open.over_share(other));
        assert!(open.evict_own(me, &mut None));
        assert!(!first.is_waiting() && second.is_waiting() && theirs.is_waiting());
    }
}
