//! The open connections of one listener, oldest first. At the cap, a new connection
//! takes the place of the oldest one that has no request in flight: slow or silent
//! clients (the slowloris kind) then cannot keep anyone out, while a request being
//! served is never cut. An attacker would have to open connections faster than a
//! client sends its request head to push that client's connection out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::activity::{Activity, Heir};

/// Entries looked at per eviction: bounds the work a flood of new connections causes
/// when the oldest ones are all busy (those are moved to the back and looked at last).
const SCAN: usize = 64;

#[derive(Debug)]
pub struct Open {
    queue: Mutex<VecDeque<Weak<Activity>>>,
    max: usize,
}

impl Open {
    pub fn new(max: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            max: max.max(1),
        }
    }

    pub fn add(&self, activity: &Arc<Activity>) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // Closed connections leave their entries behind; sweep them now and then, so
        // the queue stays within twice the cap.
        if queue.len() >= 2 * self.max {
            queue.retain(|a| a.strong_count() > 0);
        }
        queue.push_back(Arc::downgrade(activity));
    }

    /// Closes the oldest connection that has no request in flight, its slot going to
    /// `heir`; false when none of those looked at is waiting.
    pub fn evict_one(&self, heir: &mut Option<Heir>) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_is_evicted_and_busy_ones_are_kept() {
        let open = Open::new(3);
        let (oldest, busy, newest) = (Activity::new(), Activity::new(), Activity::new());
        for a in [&busy, &oldest, &newest] {
            open.add(a);
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
        let open = Open::new(2);
        for _ in 0..100 {
            open.add(&Activity::new());
        }
        assert!(open.queue.lock().unwrap().len() <= 4);
        assert!(!open.evict_one(&mut None), "all of them are gone");
    }
}
