//! Background work on a schedule, for as long as its owner lives.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::MissedTickBehavior;

/// Runs `tick` every `interval` (a late tick is delayed, never bunched)
/// until `owner` is dropped. Each tick gets the owner for as long as it
/// takes to start its work, which is awaited after the owner is let go:
/// work in progress never keeps the owner alive.
pub(crate) async fn every<T, Tick, Work>(owner: Weak<T>, interval: Duration, mut tick: Tick)
where
    Tick: FnMut(&Arc<T>) -> Work,
    Work: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(strong) = owner.upgrade() else {
            return;
        };
        let work = tick(&strong);
        drop(strong);
        work.await;
    }
}
