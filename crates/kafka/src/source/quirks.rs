//! Workarounds for the local broker, tansu 0.6, kept here so that the rest of the source reads
//! as plain Kafka. Each is harmless on Apache Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::hashing::FastSet;

/// librdkafka's longest wait of a fetch for new data, in milliseconds (a user's
/// `fetch.wait.max.ms` in `source.properties` wins). Kafka answers a waiting fetch as soon as
/// data arrives; tansu 0.6 holds it for the whole wait, librdkafka's 500 ms by default, so every
/// event waited most of that wait before it was queryable (docs/performance.md). On Kafka the
/// shorter wait only costs an idle runner 20 empty fetches a second.
pub const FETCH_WAIT_MAX_MS: &str = "50";

/// Makes sure a partition really resumes at the offset the tables hold.
///
/// Kafka answers a fetch inside a record batch with the whole batch, and the client skips the
/// records before the requested offset. tansu 0.6 instead answers with the next batch that
/// starts at or after the offset, silently skipping the rest of the batch the offset falls in.
/// So when the first message after (re)assignment lies beyond the resume offset, the reader
/// seeks back further (doubling the distance) until the resume offset itself is delivered;
/// the messages before it are then dropped as already absorbed. Only when even offset 0 starts
/// later is the gap real (retention deleted them before they were read): [`Resumed::Gone`], which
/// the reader does not pass over in silence. On Kafka the same path finds that gap: a fetch
/// below the log's start resets to its start, which answers from beyond the resume offset. When
/// the offset falls in
/// the partition's last batch, tansu answers nothing at all (no records, no end of partition),
/// so a resumed partition that stays silent for [`RESUME_PATIENCE`] is sought back the same way.
///
/// What a poll returned before a partition was positioned comes from its old position and says
/// nothing of where the broker answers from the new one: a message below the new resume offset
/// would confirm it, and the broker's answer from the batch after it would then go through. So
/// every message and end carries the number of the poll it came from ([`ResumeCheck::polled`]),
/// and one from before the positioning is [`Resumed::Stale`].
#[derive(Default)]
pub struct ResumeCheck {
    /// Partitions whose resume offset was confirmed since the last assignment.
    confirmed: FastSet<i32>,
    /// Current seek-back distance per partition.
    distance: BTreeMap<i32, i64>,
    /// Partitions not yet confirmed, with when they were last (re)positioned.
    waiting: BTreeMap<i32, Positioned>,
    /// The last poll counted.
    polls: Poll,
}

/// The number of a poll of the consumer, as [`ResumeCheck::polled`] counts them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Poll(u64);

/// When a partition was last positioned.
#[derive(Debug, Clone, Copy)]
struct Positioned {
    at: Instant,
    /// The last poll before: what it and earlier polls returned is from the old position.
    after: Poll,
}

/// What an end-of-partition event stands for ([`ResumeCheck::end_of_partition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The partition is read to its end.
    Reached,
    /// The event says nothing of the partition's position (see
    /// [`ResumeCheck::end_of_partition`]).
    Stale,
}

/// What to do with the first message a freshly positioned partition delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Read on: the resume offset is confirmed (or the partition has none).
    ReadOn,
    /// Seek back to this offset and read again.
    SeekBack(i64),
    /// The broker holds nothing from the resume offset up to `first`, even from offset 0 on:
    /// those offsets are gone (retention or compaction) before the tables absorbed them.
    Gone {
        /// The first offset the partition still holds at or after the resume offset.
        first: i64,
    },
    /// Polled before the partition was positioned: from the old position, so neither handed on
    /// nor taken as an answer from the new one.
    Stale,
}

/// How long a resumed partition may stay silent before the reader seeks it further back.
const RESUME_PATIENCE: Duration = Duration::from_secs(1);

impl ResumeCheck {
    /// Counts a poll of the consumer: what it returned carries this number.
    pub fn polled(&mut self) -> Poll {
        self.polls = Poll(self.polls.0 + 1);
        self.polls
    }

    /// Forgets every partition (a new assignment), still counting polls.
    pub fn reset(&mut self) {
        *self = Self {
            polls: self.polls,
            ..Self::default()
        };
    }

    /// Whether what poll `from` returned of `partition` predates its positioning.
    fn before_positioning(&self, partition: i32, from: Poll) -> bool {
        self.waiting
            .get(&partition)
            .is_some_and(|positioned| from <= positioned.after)
    }

    /// Forgets what was confirmed of a partition (it is positioned again).
    pub fn forget(&mut self, partition: i32) {
        self.confirmed.remove(&partition);
        self.distance.remove(&partition);
        self.waiting.remove(&partition);
    }

    /// Starts waiting for the first message of freshly positioned partitions: what the polls
    /// counted so far returned of them is stale.
    pub fn expect(&mut self, partitions: impl IntoIterator<Item = i32>, now: Instant) {
        let positioned = Positioned {
            at: now,
            after: self.polls,
        };
        for partition in partitions {
            self.waiting.insert(partition, positioned);
        }
    }

    /// The partition was read to its end: nothing lies beyond the resume offset to skip.
    pub fn reached_end(&mut self, partition: i32) {
        self.waiting.remove(&partition);
        self.confirmed.insert(partition);
    }

    /// What an end-of-partition event of poll `from` says of a partition positioned at
    /// `resume` whose end (the high watermark of the last fetch answer) is `end`. One polled
    /// before the positioning is stale.
    ///
    /// Until its first message, only an end known to lie at or below the resume offset is one:
    /// a fetch from the resume offset either delivers what lies beyond it or, on tansu, nothing
    /// at all, so an end beyond it says nothing of where the broker answers from. Taken as the
    /// end, it would confirm the resume offset without a message, and tansu's answer from the
    /// batch after it would go through unnoticed (the rest of the batch the resume offset
    /// falls in lost). Such an event is passed over; the first message or, after a silence, a
    /// seek back ([`ResumeCheck::stalled`]) confirms the partition.
    pub fn end_of_partition(
        &self,
        partition: i32,
        resume: Option<i64>,
        end: Option<i64>,
        from: Poll,
    ) -> End {
        if self.before_positioning(partition, from) {
            return End::Stale;
        }
        let awaits_first =
            !self.confirmed.contains(&partition) && self.waiting.contains_key(&partition);
        match (resume, end) {
            // An unknown end proves nothing either: a message or a seek back decides.
            (Some(resume), end) if awaits_first && end.is_none_or(|end| end > resume) => End::Stale,
            _ => End::Reached,
        }
    }

    /// Whether a positioned partition still awaits its first answer (only then can one stall).
    pub fn awaits_answers(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Partitions silent for too long since they were positioned, with where to seek them.
    pub fn stalled(
        &mut self,
        resume_of: impl Fn(i32) -> Option<i64>,
        now: Instant,
    ) -> Vec<(i32, i64)> {
        let silent: Vec<i32> = self
            .waiting
            .iter()
            .filter(|(_, positioned)| now.duration_since(positioned.at) >= RESUME_PATIENCE)
            .map(|(partition, _)| *partition)
            .collect();
        silent
            .into_iter()
            .filter_map(|partition| {
                let resume = resume_of(partition)?;
                // As if the broker had answered from beyond the resume offset; silent even from
                // offset 0 means nothing to read (the end of the partition decides the rest).
                let Resumed::SeekBack(target) = self.answered(partition, resume + 1, Some(resume))
                else {
                    return None;
                };
                self.expect([partition], now);
                Some((partition, target))
            })
            .collect()
    }

    /// What to do with a message at `offset`, returned by poll `from`, of a partition
    /// positioned at `resume`.
    pub fn check(
        &mut self,
        partition: i32,
        offset: i64,
        resume: Option<i64>,
        from: Poll,
    ) -> Resumed {
        if self.confirmed.contains(&partition) {
            return Resumed::ReadOn;
        }
        if self.before_positioning(partition, from) {
            return Resumed::Stale;
        }
        self.answered(partition, offset, resume)
    }

    /// What the broker's answer from `offset` means for a partition positioned at `resume`
    /// and not yet confirmed.
    fn answered(&mut self, partition: i32, offset: i64, resume: Option<i64>) -> Resumed {
        self.waiting.remove(&partition);
        let Some(resume) = resume else {
            self.confirmed.insert(partition);
            return Resumed::ReadOn;
        };
        if offset <= resume {
            self.confirmed.insert(partition);
            self.distance.remove(&partition);
            return Resumed::ReadOn;
        }
        let distance = self.distance.entry(partition).or_insert(1_000);
        let previous_target = resume - *distance / 2;
        if previous_target <= 0 && *distance > 1_000 {
            self.confirmed.insert(partition);
            return Resumed::Gone { first: offset };
        }
        let target = (resume - *distance).max(0);
        *distance *= 2;
        Resumed::SeekBack(target)
    }
}

/// tansu 0.6's group coordinator can leave a live member without partitions while they sit
/// assigned to members that died (it expires dead members only when a request arrives, and a
/// heartbeat that expires one keeps the stale assignment). A member that has held nothing for
/// twice the session timeout, in a group with no more members than partitions, leaves and joins
/// again as a new member, which forces a fresh assignment. Waits double after each rejoin
/// (up to ten minutes), so that a real standby on Apache Kafka (more runners than partitions)
/// rarely disturbs the group.
///
/// The same coordinator can leave a runner that is the group's only member holding only some
/// of the partitions (a member that died kept the others; seen after a broker outage and after
/// kills). A runner that has held fewer partitions than the topic has for twice the session
/// timeout asks the coordinator who is in the group, and rejoins when it is listed alone (its
/// own [`Rejoin`], so that the many runners of a healthy group, each holding some, back off
/// from asking). On Apache Kafka a lone member always holds every partition: the check never
/// finds one.
///
/// A group can also get stuck for good (a dead leader comes back as a phantom: every SyncGroup
/// answers REBALANCE_IN_PROGRESS until the broker restarts). When a rejoin did not help and the
/// coordinator lists this runner as the group's only member, the runner assigns itself every
/// partition directly. That is safe because commits are validated against the table state
/// they land on: two runners reading one partition can never both commit it.
pub struct Rejoin {
    wait: Duration,
    empty_since: Option<Instant>,
    attempts: u32,
}

/// The longest wait between two rejoins.
const MAX_REJOIN_WAIT: Duration = Duration::from_secs(600);

impl Rejoin {
    /// Rejoins after twice `session_timeout` of holding nothing.
    pub fn new(session_timeout: Duration) -> Self {
        Self {
            wait: session_timeout * 2,
            empty_since: None,
            attempts: 0,
        }
    }

    /// `Some(attempt)` (1, 2, ... since the member last held something) when it is time to
    /// rejoin, given whether the member holds no partition now.
    pub fn due(&mut self, holds_nothing: bool, now: Instant) -> Option<u32> {
        if !holds_nothing {
            self.empty_since = None;
            self.attempts = 0;
            return None;
        }
        let since = *self.empty_since.get_or_insert(now);
        if now.duration_since(since) < self.wait {
            return None;
        }
        self.empty_since = Some(now);
        self.wait = (self.wait * 2).min(MAX_REJOIN_WAIT);
        self.attempts += 1;
        Some(self.attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::{End, ResumeCheck, Resumed};

    #[test]
    fn an_end_beyond_the_resume_offset_before_the_first_message_is_stale() {
        use std::time::Instant;
        let mut check = ResumeCheck::default();
        check.expect([0, 1], Instant::now());
        let fresh = check.polled();
        // Positioned at 2909 while the partition ends at 3500: the end says nothing of where
        // the broker answers from.
        assert_eq!(
            check.end_of_partition(0, Some(2909), Some(3500), fresh),
            End::Stale
        );
        // A partition that ends where it resumes is at its end.
        assert_eq!(
            check.end_of_partition(1, Some(2909), Some(2909), fresh),
            End::Reached
        );
        // Without a known end only a message (or a seek back, after a silence) confirms.
        let fresh = check.polled();
        assert_eq!(
            check.end_of_partition(0, Some(2909), None, fresh),
            End::Stale
        );
        // A partition the tables hold nothing from has no resume offset to check.
        let fresh = check.polled();
        assert_eq!(
            check.end_of_partition(0, None, Some(3500), fresh),
            End::Reached
        );
        // Once its first message confirmed the resume offset, an end is an end.
        let fresh = check.polled();
        assert_eq!(check.check(0, 2909, Some(2909), fresh), Resumed::ReadOn);
        assert_eq!(
            check.end_of_partition(0, Some(2909), Some(3500), fresh),
            End::Reached
        );
    }

    #[test]
    fn what_a_poll_returned_before_a_partition_was_positioned_says_nothing_of_it() {
        use std::time::Instant;
        let mut check = ResumeCheck::default();
        // A message of the old position (the source was reading from an earlier table state)
        // is polled; then the pipeline's rewind positions the partition at 36812.
        let before = check.polled();
        check.expect([0], Instant::now());
        // Below 36812, it would have confirmed the new resume offset.
        assert_eq!(check.check(0, 30_000, Some(36_812), before), Resumed::Stale);
        assert_eq!(
            check.end_of_partition(0, Some(36_812), Some(36_812), before),
            End::Stale
        );
        // So the broker's answer from the batch after 36812 is still caught.
        let after = check.polled();
        assert_eq!(
            check.check(0, 36_880, Some(36_812), after),
            Resumed::SeekBack(35_812)
        );
        // A new assignment forgets the partitions, not the count of polls.
        check.reset();
        check.expect([0], Instant::now());
        assert_eq!(check.check(0, 36_812, Some(36_812), after), Resumed::Stale);
        let fresh = check.polled();
        assert_eq!(check.check(0, 36_812, Some(36_812), fresh), Resumed::ReadOn);
    }

    #[test]
    fn seeks_back_until_the_resume_offset_is_delivered() {
        let mut check = ResumeCheck::default();
        // Resume at 12000 but the broker answers from 13795: seek back, further each time.
        let fresh = check.polled();
        assert_eq!(
            check.check(1, 13795, Some(12000), fresh),
            Resumed::SeekBack(11000)
        );
        let fresh = check.polled();
        assert_eq!(
            check.check(1, 13795, Some(12000), fresh),
            Resumed::SeekBack(10000)
        );
        // Now an earlier batch arrives: confirmed, and later messages pass untouched.
        let fresh = check.polled();
        assert_eq!(check.check(1, 9500, Some(12000), fresh), Resumed::ReadOn);
        let fresh = check.polled();
        assert_eq!(check.check(1, 13795, Some(12000), fresh), Resumed::ReadOn);
    }

    #[test]
    fn a_silent_resumed_partition_is_sought_back_too() {
        use std::time::{Duration, Instant};

        use crate::common::hashing::FastMap;
        let start = Instant::now();
        let mut check = ResumeCheck::default();
        let resume_at: FastMap<i32, i64> = [(2, 14_000), (0, 50)].into_iter().collect();
        let resume_at = |p| resume_at.get(&p).copied();
        check.expect([0, 2], start);
        check.reached_end(0);
        assert!(check.stalled(resume_at, start).is_empty(), "patience first");
        let later = start + Duration::from_secs(2);
        assert_eq!(check.stalled(resume_at, later), vec![(2, 13_000)]);
        assert!(
            check.stalled(resume_at, later).is_empty(),
            "waits again after a seek"
        );
        let even_later = later + Duration::from_secs(2);
        assert_eq!(check.stalled(resume_at, even_later), vec![(2, 12_000)]);
        let fresh = check.polled();
        assert_eq!(check.check(2, 12_500, Some(14_000), fresh), Resumed::ReadOn);
        assert!(check
            .stalled(resume_at, even_later + Duration::from_secs(9))
            .is_empty());
    }

    #[test]
    fn a_partition_silent_even_from_offset_zero_is_left_to_its_end() {
        use std::time::{Duration, Instant};

        use crate::common::hashing::FastMap;
        let start = Instant::now();
        let mut check = ResumeCheck::default();
        let resume_at: FastMap<i32, i64> = [(0, 500)].into_iter().collect();
        let resume_at = |p| resume_at.get(&p).copied();
        check.expect([0], start);
        let mut now = start;
        let mut targets = Vec::new();
        for _ in 0..4 {
            now += Duration::from_secs(2);
            targets.extend(check.stalled(resume_at, now));
        }
        assert_eq!(
            targets,
            vec![(0, 0)],
            "offset 0 tried once, then no more seeks"
        );
    }

    #[test]
    fn rejoins_after_holding_nothing_for_twice_the_session_timeout_then_backs_off() {
        use super::Rejoin;
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let s = Duration::from_secs(1);
        let mut rejoin = Rejoin::new(6 * s);
        assert_eq!(rejoin.due(true, start), None);
        assert_eq!(rejoin.due(true, start + 11 * s), None);
        assert_eq!(rejoin.due(true, start + 12 * s), Some(1));
        assert_eq!(rejoin.due(true, start + 30 * s), None, "waits 24 s now");
        assert_eq!(rejoin.due(true, start + 36 * s), Some(2));
        assert_eq!(rejoin.due(false, start + 37 * s), None);
        assert_eq!(
            rejoin.due(true, start + 38 * s),
            None,
            "the count starts again"
        );
    }

    #[test]
    fn names_a_real_gap_once_offset_zero_was_tried() {
        let mut check = ResumeCheck::default();
        let fresh = check.polled();
        assert_eq!(check.check(0, 900, Some(500), fresh), Resumed::SeekBack(0));
        let fresh = check.polled();
        assert_eq!(
            check.check(0, 900, Some(500), fresh),
            Resumed::Gone { first: 900 }
        );
        let fresh = check.polled();
        assert_eq!(
            check.check(0, 901, Some(500), fresh),
            Resumed::ReadOn,
            "said once"
        );
        let fresh = check.polled();
        assert_eq!(check.check(2, 5, None, fresh), Resumed::ReadOn);
    }
}
