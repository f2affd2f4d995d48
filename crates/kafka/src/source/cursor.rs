//! Where the reading thread stands in each partition it holds: one cursor per assigned
//! partition, so what was handed on, where the tables resume and whether the end was reached
//! cannot disagree between partitions or outlive an assignment.

use std::collections::BTreeSet;

use crate::common::hashing::FastMap;

/// One assigned partition as the reader sees it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// Where the tables resume the partition; `None` when they hold nothing from it (reading
    /// starts where `start_from` says, and whatever arrives first is where it starts).
    resume: Option<i64>,
    /// The offset after the last message handed on since the partition was last positioned.
    /// A seek back (the broker workaround) reads messages again that must not be handed on
    /// twice.
    next: Option<i64>,
    /// The first offset handed on since the assignment: where a partition the tables hold
    /// nothing from is rewound to (seeking to `start_from` again would let messages fetched
    /// before the seek through, and the check above would then drop everything before them).
    first: Option<i64>,
    /// The last fetch answer reached the partition's end.
    at_end: bool,
}

/// The cursors of the partitions the group gave this reader.
#[derive(Debug, Default)]
pub struct Cursors {
    partitions: FastMap<i32, Cursor>,
    /// How many of them are at their end: asked after every message, where going through the
    /// map was a visible share of the reading thread.
    ends: usize,
}

/// What a rewind of one partition leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewound {
    /// Read again from this offset.
    To(i64),
    /// Nothing was handed on since the assignment and the tables hold nothing: read from
    /// where the partition starts.
    FromStart,
}

impl Cursors {
    /// Fresh cursors for an assignment: `resume` holds where the tables resume each partition
    /// (a partition missing from it starts where `start_from` says).
    pub fn assign(partitions: &BTreeSet<i32>, resume: impl Fn(i32) -> Option<i64>) -> Self {
        Cursors {
            partitions: partitions
                .iter()
                .map(|p| {
                    let cursor = Cursor {
                        resume: resume(*p),
                        ..Cursor::default()
                    };
                    (*p, cursor)
                })
                .collect(),
            ends: 0,
        }
    }

    /// Sets whether `cursor` is at its partition's end, keeping the count of those that are.
    fn set_at_end(ends: &mut usize, cursor: &mut Cursor, at_end: bool) {
        match (cursor.at_end, at_end) {
            (false, true) => *ends += 1,
            (true, false) => *ends -= 1,
            _ => {}
        }
        cursor.at_end = at_end;
    }

    /// A message of `partition` arrived, so it is not at its end. `false` when the partition is
    /// not held (a message fetched before a rebalance may still arrive).
    pub fn touched(&mut self, partition: i32) -> bool {
        let Some(cursor) = self.partitions.get_mut(&partition) else {
            return false;
        };
        Self::set_at_end(&mut self.ends, cursor, false);
        true
    }

    /// Where the tables resume the partition.
    pub fn resume(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|c| c.resume)
    }

    /// The held partitions the tables resume somewhere.
    pub fn resumed(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions
            .iter()
            .filter(|(_, c)| c.resume.is_some())
            .map(|(p, _)| *p)
    }

    /// Whether the message at `offset` is handed on: not below what was handed on already (a
    /// seek back reads it again) nor below where the tables resume (already absorbed). Unheld
    /// partitions hand on nothing.
    pub fn arrived(&mut self, partition: i32, offset: i64) -> bool {
        let Some(cursor) = self.partitions.get_mut(&partition) else {
            return false;
        };
        let seen = cursor.next.is_some_and(|next| offset < next);
        if seen || cursor.resume.is_some_and(|resume| offset < resume) {
            return false;
        }
        cursor.next = Some(offset + 1);
        cursor.first.get_or_insert(offset);
        true
    }

    /// The pipeline dropped what it held of the partition and reads it again from `offset`
    /// (where its tables resume) or, without one, from the first offset handed on.
    pub fn rewind(&mut self, partition: i32, offset: Option<i64>) -> Option<Rewound> {
        let cursor = self.partitions.get_mut(&partition)?;
        cursor.next = None;
        Self::set_at_end(&mut self.ends, cursor, false);
        cursor.resume = offset.or(cursor.first);
        Some(cursor.resume.map_or(Rewound::FromStart, Rewound::To))
    }

    /// The partition is read again from `start` as if nothing had been handed on (its offsets
    /// jumped back: the topic was recreated or truncated).
    pub fn restart(&mut self, partition: i32, start: i64) {
        if let Some(cursor) = self.partitions.get_mut(&partition) {
            Self::set_at_end(&mut self.ends, cursor, false);
            *cursor = Cursor {
                resume: Some(start),
                ..Cursor::default()
            };
        }
    }

    /// The last fetch answer reached the end of the partition.
    pub fn reached_end(&mut self, partition: i32) {
        if let Some(cursor) = self.partitions.get_mut(&partition) {
            Self::set_at_end(&mut self.ends, cursor, true);
        }
    }

    /// The held partitions read to their end.
    pub fn at_end(&self) -> BTreeSet<i32> {
        self.partitions
            .iter()
            .filter(|(_, c)| c.at_end)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Every held partition read to its end (none held: not caught up).
    pub fn caught_up(&self) -> bool {
        !self.partitions.is_empty() && self.ends == self.partitions.len()
    }

    /// No partition held.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// How many partitions are held.
    pub fn len(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursors(resume: &[(i32, i64)], held: &[i32]) -> Cursors {
        let held: BTreeSet<i32> = held.iter().copied().collect();
        Cursors::assign(&held, |p| {
            resume
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, offset)| *offset)
        })
    }

    #[test]
    fn a_message_below_the_tables_or_handed_on_already_is_not_handed_on_again() {
        let mut c = cursors(&[(0, 10)], &[0, 1]);
        assert!(!c.arrived(0, 9), "below where the tables resume");
        assert!(c.arrived(0, 10));
        assert!(c.arrived(0, 11));
        // A seek back reads 10 and 11 again.
        assert!(!c.arrived(0, 10));
        assert!(!c.arrived(0, 11));
        assert!(c.arrived(0, 12));
        assert!(
            c.arrived(1, 0),
            "no resume offset: the first message is the start"
        );
        assert!(!c.arrived(2, 0), "not held");
    }

    #[test]
    fn a_rewind_goes_to_the_tables_offset_or_the_first_handed_on() {
        let mut c = cursors(&[], &[0, 1]);
        assert_eq!(c.rewind(0, None), Some(Rewound::FromStart));
        assert!(c.arrived(0, 5));
        assert!(c.arrived(0, 6));
        assert_eq!(c.rewind(0, None), Some(Rewound::To(5)));
        assert!(c.arrived(0, 5), "handed on again after the rewind");
        assert_eq!(c.rewind(0, Some(6)), Some(Rewound::To(6)));
        assert!(!c.arrived(0, 5));
        assert!(c.arrived(0, 6));
        assert_eq!(c.rewind(3, Some(1)), None, "not held");
    }

    #[test]
    fn caught_up_needs_every_held_partition_at_its_end() {
        let mut c = cursors(&[], &[0, 1]);
        assert!(!c.caught_up());
        c.reached_end(0);
        c.reached_end(7);
        assert_eq!(c.at_end(), BTreeSet::from([0]));
        c.reached_end(1);
        assert!(c.caught_up());
        assert!(c.touched(1));
        assert!(!c.caught_up(), "a message moves the partition off its end");
        assert!(!c.touched(7), "not held");
        c.reached_end(1);
        let _ = c.rewind(1, Some(0));
        assert!(!c.caught_up(), "a rewound partition is read again");
        assert!(
            !Cursors::default().caught_up(),
            "holding nothing is not caught up"
        );
    }

    #[test]
    fn caught_up_agrees_with_the_cursors_whatever_the_order_of_changes() {
        let mut c = cursors(&[(0, 10)], &[0, 1, 2]);
        // A fixed pseudo-random walk over every change, partitions 0..=3 (3 is not held).
        let mut state = 7_u32;
        for _ in 0..2_000 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let partition = ((state >> 8) % 4) as i32;
            match (state >> 16) % 5 {
                0 | 1 => c.reached_end(partition),
                2 => {
                    c.touched(partition);
                }
                3 => {
                    let _ = c.rewind(partition, None);
                }
                _ => c.restart(partition, 0),
            }
            assert_eq!(c.caught_up(), c.at_end().len() == 3);
        }
    }

    #[test]
    fn a_restart_forgets_what_was_handed_on() {
        let mut c = cursors(&[(0, 100)], &[0]);
        assert!(c.arrived(0, 100));
        c.restart(0, 3);
        assert_eq!(c.resume(0), Some(3));
        assert!(c.arrived(0, 3));
        assert_eq!(c.rewind(0, None), Some(Rewound::To(3)));
    }
}
