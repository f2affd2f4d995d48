//! `commit.mode: one_committer` (DESIGN.md, scale model): the runner holding source partition
//! 0 lands the shares the other runners send over the control topic, each only where its claim
//! holds on the state its snapshot lands on; every other runner hands its rows over at its
//! commit and waits for the outcome, landing them itself when none comes.

use std::time::Instant;

use super::{Committed, PipelineError, Runner};
use crate::common::cpu;
use crate::control::{Control, ControlMessage, Outcome, ShareMessage, Verdict};
use crate::dlq::Delivery;
use crate::sink::iceberg::{CommitStats, Share, ShareOutcome, TableWriter};
use crate::sink::SinkError;
use crate::source::Source;

/// The source partition whose holder is the committer.
pub const COMMITTER_PARTITION: i32 = 0;
/// Most shares one landing takes; the rest wait for the next.
const SHARES_PER_LANDING: usize = 64;
/// How many commit intervals a runner waits for its share's outcome before landing it itself.
const PATIENCE_INTERVALS: u32 = 3;

/// A runner's end of the control topic.
pub struct Handover {
    control: Box<dyn Control>,
    /// This runner, as the committer's log names it.
    sender: String,
}

impl Handover {
    /// Hands over through `control`, as `sender`.
    pub fn new(control: Box<dyn Control>, sender: String) -> Self {
        Self { control, sender }
    }

    /// The next message; never ready once the channel is closed.
    pub(super) async fn next(handover: &mut Option<Self>) -> ControlMessage {
        if let Some(handover) = handover {
            if let Some(message) = handover.control.next().await {
                return message;
            }
        }
        std::future::pending().await
    }
}

/// What became of a runner's share.
enum Fate {
    /// Both parts landed.
    Landed {
        events: Option<i64>,
        metrics: Option<i64>,
    },
    /// The events part landed and the metrics part was refused.
    EventsOnly { events: Option<i64> },
    /// No snapshot took either part: the files are deleted.
    Refused,
    /// Refused when the runner landed them itself, maybe because the committer had landed them
    /// after all: the files are left to the maintenance sweep.
    Unsure,
}

impl<S: Source, D: Delivery> Runner<S, D> {
    /// Whether this runner hands its rows to a committer instead of committing them.
    pub(super) fn hands_over(&self) -> bool {
        self.handover.is_some() && !self.assigned.contains(&COMMITTER_PARTITION)
    }

    /// Whether this runner lands the others' shares.
    pub(super) fn is_committer(&self) -> bool {
        self.handover.is_some() && self.assigned.contains(&COMMITTER_PARTITION)
    }

    /// A message of the control topic: the committer lands a share and the ones already
    /// waiting behind it; everyone else has nothing to do with it (a runner reads the outcome
    /// of its own share while it waits for it).
    pub(super) async fn control_message(
        &mut self,
        message: ControlMessage,
    ) -> Result<(), PipelineError> {
        match message {
            ControlMessage::Share(share) if self.is_committer() => self.land_shares(*share).await,
            _ => Ok(()),
        }
    }

    /// Hands this runner's rows of both tables to the committer and waits for the outcome;
    /// lands them itself when none comes. `None` when they did not land (or may not have: the
    /// caller then reads the partitions again from the tables).
    pub(super) async fn hand_over(&mut self) -> Result<Option<Committed>, PipelineError> {
        let started = Instant::now();
        let (events, events_cpu) = cpu::timed(self.branches.events.share(&self.progress)).await;
        let events = events?;
        let (metrics, metrics_cpu) = cpu::timed(self.branches.metrics.share(&self.progress)).await;
        let metrics = match metrics {
            Ok(metrics) => metrics,
            Err(error) => {
                self.branches.events.delete_share(&events).await;
                return Err(error);
            }
        };
        let id = uuid::Uuid::now_v7().to_string();
        let outcome = match self.send_share(&id, &events, &metrics).await {
            Ok(()) => self.outcome_of(&id).await,
            Err(reason) => {
                tracing::warn!(pipeline = %self.name(), "handing the commit to the committer failed ({reason}): landing it itself");
                None
            }
        };
        let fate = match outcome {
            Some(outcome) => match (outcome.events, outcome.metrics) {
                (
                    Verdict::Landed { snapshot_id },
                    Verdict::Landed {
                        snapshot_id: metrics,
                    },
                ) => Fate::Landed {
                    events: snapshot_id,
                    metrics,
                },
                (Verdict::Landed { snapshot_id }, Verdict::Refused { .. }) => Fate::EventsOnly {
                    events: snapshot_id,
                },
                (Verdict::Refused { .. }, _) => Fate::Refused,
                // The committer cannot tell whether the windows landed: their claim decides.
                (Verdict::Landed { snapshot_id }, Verdict::Unknown) => {
                    self.land_windows_itself(snapshot_id, &metrics).await?
                }
                // The committer cannot tell what landed: the claims decide.
                (Verdict::Unknown, _) => self.land_itself(&events, &metrics).await?,
            },
            None => {
                tracing::warn!(pipeline = %self.name(), share = %id, "no outcome from the committer: landing the commit itself");
                self.land_itself(&events, &metrics).await?
            }
        };
        let stats = |share: &Share, snapshot_id: Option<i64>, files_cpu| CommitStats {
            rows: share.files.iter().map(|f| f.record_count()).sum(),
            files: share.files.len(),
            snapshot_id,
            millis: started.elapsed().as_millis(),
            files_cpu,
            ..CommitStats::default()
        };
        match fate {
            Fate::Landed {
                events: events_snapshot,
                metrics: metrics_snapshot,
            } => {
                self.branches
                    .events
                    .landed_elsewhere(&mut self.progress, &events);
                self.branches
                    .metrics
                    .landed_elsewhere(&mut self.progress, &metrics);
                // One hand-over lands both tables: its time counts once, with the events.
                Ok(Some(Committed {
                    events: stats(&events, events_snapshot, events_cpu),
                    metrics: CommitStats {
                        millis: 0,
                        ..stats(&metrics, metrics_snapshot, metrics_cpu)
                    },
                }))
            }
            Fate::EventsOnly { events: snapshot } => {
                self.branches
                    .events
                    .landed_elsewhere(&mut self.progress, &events);
                self.branches.metrics.delete_share(&metrics).await;
                tracing::warn!(pipeline = %self.name(), table = self.branches.metrics.label(), snapshot, "the committer landed the events but refused the windows: reading the partitions again from the tables");
                Ok(None)
            }
            Fate::Refused => {
                self.branches.events.delete_share(&events).await;
                self.branches.metrics.delete_share(&metrics).await;
                tracing::warn!(pipeline = %self.name(), "the committer refused this runner's commit: another runner moved its partitions on; reading them again from the tables");
                Ok(None)
            }
            Fate::Unsure => {
                tracing::warn!(pipeline = %self.name(), "the commit this runner landed itself was refused (the committer may have landed it first): reading the partitions again from the tables");
                Ok(None)
            }
        }
    }

    /// Sends a share of `events` and `metrics` as `id`.
    async fn send_share(
        &mut self,
        id: &str,
        events: &Share,
        metrics: &Share,
    ) -> Result<(), String> {
        let events = self
            .branches
            .events
            .writer()
            .encode(events.clone())
            .map_err(|e| e.to_string())?;
        let metrics = self
            .branches
            .metrics
            .writer()
            .encode(metrics.clone())
            .map_err(|e| e.to_string())?;
        let Some(handover) = &mut self.handover else {
            return Err("no control topic".into());
        };
        let message = ControlMessage::Share(Box::new(ShareMessage {
            id: id.to_string(),
            sender: handover.sender.clone(),
            events,
            metrics,
        }));
        handover
            .control
            .send(&message)
            .await
            .map_err(|e| crate::common::error::Causes(&e).to_string())
    }

    /// The committer's outcome of share `id`, or `None` after a few commit intervals.
    async fn outcome_of(&mut self, id: &str) -> Option<Outcome> {
        let clock = self.clock.clone();
        let deadline = clock.now() + self.pipeline.commit.interval * PATIENCE_INTERVALS;
        let handover = self.handover.as_mut()?;
        loop {
            let left = deadline.saturating_duration_since(clock.now());
            if left.is_zero() {
                return None;
            }
            match handover.control.next_within(left).await? {
                ControlMessage::Outcomes { outcomes } => {
                    if let Some(outcome) = outcomes.into_iter().find(|o| o.id == id) {
                        return Some(outcome);
                    }
                }
                ControlMessage::Share(_) => {}
            }
        }
    }

    /// Lands this runner's own shares itself, as the committer would. A share its claim
    /// refuses may have been landed by the committer meanwhile: [`Fate::Unsure`].
    async fn land_itself(
        &mut self,
        events: &Share,
        metrics: &Share,
    ) -> Result<Fate, PipelineError> {
        let events_writer = self.branches.events.writer();
        let landed = land_one(events_writer, events).await;
        let events_snapshot = match landed.map_err(|e| self.sink_err(e))? {
            Some(snapshot) => snapshot,
            None => return Ok(Fate::Unsure),
        };
        self.land_windows_itself(events_snapshot, metrics).await
    }

    /// Lands the metrics part of this runner's own share itself, its events part being in
    /// snapshot `events`. Refused, the windows may have landed or not: [`Fate::Unsure`] (the
    /// tables decide where the partitions are read again from).
    async fn land_windows_itself(
        &mut self,
        events: Option<i64>,
        metrics: &Share,
    ) -> Result<Fate, PipelineError> {
        let landed = land_one(self.branches.metrics.writer(), metrics).await;
        Ok(match landed.map_err(|e| self.sink_err(e))? {
            Some(metrics) => Fate::Landed { events, metrics },
            None => Fate::Unsure,
        })
    }

    /// The committer: lands `first` and the shares already waiting behind it (the events parts
    /// in one snapshot, then the metrics parts of those that landed in another) and answers
    /// each.
    async fn land_shares(&mut self, first: ShareMessage) -> Result<(), PipelineError> {
        let mut messages = vec![first];
        if let Some(handover) = &mut self.handover {
            while messages.len() < SHARES_PER_LANDING {
                match handover.control.try_next() {
                    Some(ControlMessage::Share(share)) => messages.push(*share),
                    Some(ControlMessage::Outcomes { .. }) => {}
                    None => break,
                }
            }
        }
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(messages.len());
        let mut readable = Vec::with_capacity(messages.len());
        for message in messages {
            let events = self.branches.events.writer().decode(message.events);
            let metrics = self.branches.metrics.writer().decode(message.metrics);
            match (events, metrics) {
                (Ok(events), Ok(metrics)) => readable.push((message.id, events, metrics)),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(pipeline = %self.name(), sender = %message.sender, "a share cannot be read: {}", crate::common::error::Causes(&error));
                    outcomes.push(Outcome {
                        id: message.id,
                        events: Verdict::Unknown,
                        metrics: Verdict::Unknown,
                    });
                }
            }
        }
        let events: Vec<Share> = readable.iter().map(|(_, e, _)| e.clone()).collect();
        let landed = self.branches.events.writer().land_shares(&events).await;
        let events_outcomes = match landed {
            Ok((_, outcomes)) => outcomes,
            Err(error) => {
                let unknown = readable.iter().map(|(id, _, _)| Outcome {
                    id: id.clone(),
                    events: Verdict::Unknown,
                    metrics: Verdict::Unknown,
                });
                outcomes.extend(unknown);
                self.answer(outcomes).await;
                return Err(self.sink_err(error));
            }
        };
        let metrics: Vec<Share> = readable
            .iter()
            .zip(&events_outcomes)
            .filter(|(_, outcome)| matches!(outcome, ShareOutcome::Landed { .. }))
            .map(|((_, _, m), _)| m.clone())
            .collect();
        let landed = self.branches.metrics.writer().land_shares(&metrics).await;
        let (metrics_outcomes, failed) = match landed {
            Ok((_, outcomes)) => (outcomes, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let mut metrics_outcomes = metrics_outcomes.into_iter();
        let (mut landed_shares, mut rows) = (0, 0);
        for ((id, events, _), events_outcome) in readable.into_iter().zip(events_outcomes) {
            let (events_verdict, metrics_verdict) = match events_outcome {
                ShareOutcome::Landed { snapshot_id } => {
                    landed_shares += 1;
                    rows += events.files.iter().map(|f| f.record_count()).sum::<u64>();
                    let metrics = match metrics_outcomes.next() {
                        Some(outcome) => verdict(outcome),
                        None => Verdict::Unknown,
                    };
                    (Verdict::Landed { snapshot_id }, metrics)
                }
                ShareOutcome::Fenced(fenced) => (
                    verdict(ShareOutcome::Fenced(fenced)),
                    Verdict::Refused {
                        partitions: Vec::new(),
                    },
                ),
            };
            outcomes.push(Outcome {
                id,
                events: events_verdict,
                metrics: metrics_verdict,
            });
        }
        let shares = outcomes.len();
        self.answer(outcomes).await;
        tracing::info!(pipeline = %self.name(), shares, landed = landed_shares, rows, "landed the other runners' shares");
        match failed {
            Some(error) => Err(self.sink_err(error)),
            None => Ok(()),
        }
    }

    /// Sends the outcomes of one landing (a runner that hears nothing lands its share itself).
    async fn answer(&mut self, outcomes: Vec<Outcome>) {
        let Some(handover) = &mut self.handover else {
            return;
        };
        let message = ControlMessage::Outcomes { outcomes };
        if let Err(error) = handover.control.send(&message).await {
            tracing::warn!(pipeline = %self.pipeline.name, "answering the shares failed: {}; their runners land them themselves", crate::common::error::Causes(&error));
        }
    }

    fn sink_err(&self, source: SinkError) -> PipelineError {
        PipelineError::Sink {
            pipeline: self.pipeline.name.clone(),
            source,
        }
    }
}

/// Lands one share of this runner's own on the table as it stands now: `Some(snapshot)` when it
/// landed, `None` when its claim was refused.
async fn land_one(
    writer: &mut TableWriter,
    share: &Share,
) -> Result<Option<Option<i64>>, SinkError> {
    writer.refresh().await?;
    Ok(match writer.land_own_share(share).await? {
        ShareOutcome::Landed { snapshot_id } => Some(snapshot_id),
        ShareOutcome::Fenced(_) => None,
    })
}

/// A share's outcome as its runner hears it.
fn verdict(outcome: ShareOutcome) -> Verdict {
    match outcome {
        ShareOutcome::Landed { snapshot_id } => Verdict::Landed { snapshot_id },
        ShareOutcome::Fenced(fenced) => Verdict::Refused {
            partitions: fenced.partitions.iter().map(|p| p.partition).collect(),
        },
    }
}
