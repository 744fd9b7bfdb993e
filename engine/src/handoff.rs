//! Latest-frame-wins handoff between a camera callback and the processing thread: `offer`
//! never blocks, a newer item replaces an unprocessed older one, and replacements are counted.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

pub struct LatestSender<T> {
    tx: Sender<T>,
    // The sender drains stale items itself, so it holds a receiver too.
    rx: Receiver<T>,
    dropped: Arc<AtomicU64>,
}

pub struct LatestReceiver<T> {
    rx: Receiver<T>,
    dropped: Arc<AtomicU64>,
}

/// A slot holding at most one item.
pub fn latest<T>() -> (LatestSender<T>, LatestReceiver<T>) {
    let (tx, rx) = bounded(1);
    let dropped = Arc::new(AtomicU64::new(0));
    (LatestSender { tx, rx: rx.clone(), dropped: dropped.clone() }, LatestReceiver { rx, dropped })
}

impl<T> LatestSender<T> {
    /// Puts `item` in the slot, dropping whatever was waiting. Returns false once the
    /// receiver is gone.
    pub fn offer(&self, mut item: T) -> bool {
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    item = back;
                    if self.rx.try_recv().is_ok() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

impl<T> LatestReceiver<T> {
    /// Waits up to `timeout` for the newest item; `Err(true)` when all senders are gone.
    pub fn take(&self, timeout: Duration) -> Result<T, bool> {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(false),
            Err(RecvTimeoutError::Disconnected) => Err(true),
        }
    }

    /// Items replaced before being taken.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_drops_are_counted() {
        let (tx, rx) = latest();
        for i in 0..5 {
            assert!(tx.offer(i));
        }
        assert_eq!(rx.take(Duration::from_millis(10)), Ok(4));
        assert_eq!(rx.dropped(), 4);
        assert_eq!(rx.take(Duration::from_millis(10)), Err(false));
    }

    #[test]
    fn offer_never_blocks_with_a_slow_consumer() {
        let (tx, rx) = latest();
        let producer = std::thread::spawn(move || {
            for i in 0..10_000u32 {
                tx.offer(i);
            }
        });
        producer.join().unwrap();
        let last = rx.take(Duration::from_millis(100)).unwrap();
        assert_eq!(last, 9_999);
        assert_eq!(rx.dropped(), 9_999);
        assert_eq!(rx.take(Duration::from_millis(10)), Err(true));
    }
}
