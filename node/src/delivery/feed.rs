//! Shared partition feeds: one read, one decode and one match per stored record, whatever
//! the number of subscriptions reading its partition.
//!
//! Owns: a [`Feed`] per (topic, partition) that has readers. Its task tails the partition,
//! decodes each new record once, finds the readers whose filter it matches (patterns through
//! one shared [`Matcher`]; other filter kinds evaluated on the decoded event) and queues the
//! record for them only. A reader ([`FeedReader`]) joins at the feed's scan point (`from`):
//! records before it are the reader's own to read from the store (a subscription catching
//! up reads on its own, as before); from `from` on it takes its queue, and everything the
//! feed scanned without queueing for it is known not to match (its offsets complete in one
//! range). A reader that does not keep up (its queue reaches [`QUEUE_CAP`]) is detached at
//! the first record it missed: it reads from the store from there and joins again when it
//! has caught up, so one slow subscription never holds the others or grows memory.
//!
//! The feed never waits for a reader; a reader never waits for another.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshd_core::codec::decode_event;
use meshd_core::filter::Filter;
use meshd_core::pattern::Matcher;
use meshd_core::Event;
use tokio::sync::{watch, Notify};
use tracing::{error, warn};

use crate::store::EventStore;

/// Records queued for one reader before it is detached (small in unit tests, so they
/// exercise detaching).
pub const QUEUE_CAP: usize = if cfg!(test) { 64 } else { 1024 };
/// Records queued for all the readers of one feed together: past it, a reader the feed
/// would queue for is detached instead (its queue dropped), so many slow readers with
/// sparse filters cannot hold more than this many decoded events in memory.
pub const FEED_QUEUE_CAP: usize = if cfg!(test) { 4096 } else { 16 * 1024 };
/// Records the feed reads per batch.
const FEED_BATCH: usize = 1024;
/// Pause after a store failure before reading again.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// A record queued for a reader.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    /// Offset.
    pub offset: u64,
    /// Store time, ms since the epoch.
    pub timestamp_ms: u64,
    /// The decoded event (shared by every reader it matched).
    pub event: Arc<Event>,
}

/// What a reader takes from its queue.
#[derive(Debug, Default)]
pub struct Taken {
    /// Matching records, in offset order.
    pub entries: Vec<FeedEntry>,
    /// Every offset below this that is not in `entries` (and not taken before) does not
    /// match the reader's filter (or is not stored).
    pub scanned: u64,
    /// The reader was detached: it missed records from this offset on and must read them
    /// from the store (`scanned` is then this offset).
    pub detached_at: Option<u64>,
}

struct Slot {
    filter: Option<Filter>,
    /// In the shared matcher (a pattern filter).
    in_matcher: bool,
    queue: VecDeque<FeedEntry>,
    detached_at: Option<u64>,
}

struct State {
    /// The next offset the feed has not scanned.
    next: u64,
    matcher: Matcher,
    slots: HashMap<u64, Slot>,
    /// Records queued over all slots.
    queued: usize,
    next_id: u64,
    /// The task is running.
    running: bool,
}

/// The feed of one partition.
pub struct Feed {
    topic: String,
    partition: u32,
    state: Mutex<State>,
    /// `next` after each scanned batch (readers wait on it).
    scanned: watch::Sender<u64>,
    /// A reader left (the task exits when none remain).
    left: Notify,
}

/// Every feed of a node (one engine-wide registry).
pub struct Feeds {
    store: Arc<dyn EventStore>,
    feeds: Mutex<HashMap<(String, u32), Arc<Feed>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feeds {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Arc<Feeds> {
        Arc::new(Feeds {
            store,
            feeds: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the feed of (topic, partition) with `filter` (`None`: every record). The
    /// reader owns offsets below its [`FeedReader::from`]; the feed queues matching records
    /// from there on.
    pub async fn join(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        filter: Option<Filter>,
    ) -> Result<FeedReader, crate::store::StoreError> {
        // The scan point of a new feed: the partition's end now.
        let end = self.store.bounds(topic, partition).await?.end;
        let (feed, spawn) = {
            let mut feeds = lock(&self.feeds);
            let key = (topic.to_string(), partition);
            match feeds.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Feed {
                        topic: topic.to_string(),
                        partition,
                        state: Mutex::new(State {
                            next: end,
                            matcher: Matcher::new(),
                            slots: HashMap::new(),
                            queued: 0,
                            next_id: 1,
                            running: false,
                        }),
                        scanned: watch::channel(end).0,
                        left: Notify::new(),
                    });
                    feeds.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        let (id, from, start_task) = {
            let mut st = lock(&feed.state);
            let id = st.next_id;
            st.next_id += 1;
            let in_matcher = match &filter {
                Some(Filter::Pattern(p)) => {
                    st.matcher.add(id, p);
                    true
                }
                _ => false,
            };
            st.slots.insert(
                id,
                Slot {
                    filter,
                    in_matcher,
                    queue: VecDeque::new(),
                    detached_at: None,
                },
            );
            let start_task = spawn || !st.running;
            st.running = true;
            (id, st.next, start_task)
        };
        if start_task {
            tokio::spawn(run(self.clone(), feed.clone()));
        }
        let scanned = feed.scanned.subscribe();
        Ok(FeedReader {
            feed,
            id,
            from,
            scanned,
        })
    }

    /// Number of feeds with readers (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.feeds).len()
    }

    /// Whether no feed has readers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One reader's membership in a feed; leaving happens on drop.
pub struct FeedReader {
    feed: Arc<Feed>,
    id: u64,
    from: u64,
    scanned: watch::Receiver<u64>,
}

impl FeedReader {
    /// The first offset the feed queues for this reader; below it the reader reads the
    /// store itself.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// Takes what was queued. Marks the scan point seen, so [`FeedReader::changed`] waits
    /// for the next batch.
    pub fn take(&mut self) -> Taken {
        self.scanned.borrow_and_update();
        let mut st = lock(&self.feed.state);
        let next = st.next;
        let State { slots, queued, .. } = &mut *st;
        let Some(slot) = slots.get_mut(&self.id) else {
            return Taken {
                entries: Vec::new(),
                scanned: self.from,
                detached_at: Some(self.from),
            };
        };
        let entries: Vec<FeedEntry> = slot.queue.drain(..).collect();
        *queued -= entries.len();
        match slot.detached_at {
            Some(at) => Taken {
                entries,
                scanned: at,
                detached_at: Some(at),
            },
            None => Taken {
                entries,
                scanned: next,
                detached_at: None,
            },
        }
    }

    /// Joins again at the feed's current scan point after a detach (the reader has read
    /// the store up to where it stands); returns the new `from`.
    pub fn rejoin(&mut self) -> u64 {
        let mut st = lock(&self.feed.state);
        let next = st.next;
        let State { slots, queued, .. } = &mut *st;
        if let Some(slot) = slots.get_mut(&self.id) {
            *queued -= slot.queue.len();
            slot.queue.clear();
            slot.detached_at = None;
        }
        self.from = next;
        next
    }

    /// Resolves when the feed scanned another batch (or went away).
    pub async fn changed(&mut self) {
        let _ = self.scanned.changed().await;
    }
}

impl Drop for FeedReader {
    fn drop(&mut self) {
        let mut st = lock(&self.feed.state);
        if let Some(slot) = st.slots.remove(&self.id) {
            st.queued -= slot.queue.len();
            if slot.in_matcher {
                st.matcher.remove(self.id);
            }
        }
        drop(st);
        self.feed.left.notify_one();
    }
}

/// The feed task: tails the partition while the feed has readers.
async fn run(feeds: Arc<Feeds>, feed: Arc<Feed>) {
    let (topic, partition) = (feed.topic.clone(), feed.partition);
    let mut end = match feeds.store.watch_end(&topic, partition) {
        Ok(w) => w,
        Err(e) => {
            error!(topic = %topic, partition, error = %e, "cannot watch partition; feed stops");
            detach_all(&feed);
            retire(&feeds, &feed);
            return;
        }
    };
    loop {
        if retire(&feeds, &feed) {
            return;
        }
        end.borrow_and_update();
        let next = lock(&feed.state).next;
        let records = match feeds.store.read(&topic, partition, next, FEED_BATCH).await {
            Ok(r) => r,
            Err(e) => {
                warn!(topic = %topic, partition, error = %e, "feed read failed; retrying");
                tokio::time::sleep(STORE_RETRY).await;
                continue;
            }
        };
        if records.is_empty() {
            let closed = tokio::select! {
                changed = end.changed() => changed.is_err(),
                _ = feed.left.notified() => false,
            };
            if closed {
                detach_all(&feed);
                retire_now(&feeds, &feed);
                return;
            }
            continue;
        }
        // Decode outside the lock; match and queue under it (cheap).
        let decoded: Vec<(u64, u64, Option<Arc<Event>>)> = records
            .iter()
            .filter(|r| r.offset >= next)
            .map(|r| match decode_event(&r.payload) {
                Ok(e) => (r.offset, r.timestamp_ms, Some(Arc::new(e))),
                Err(e) => {
                    error!(topic = %topic, partition, offset = r.offset, error = %e, "undecodable record skipped");
                    (r.offset, r.timestamp_ms, None)
                }
            })
            .collect();
        let mut st = lock(&feed.state);
        let mut matched = Vec::new();
        let mut last = next;
        for (offset, timestamp_ms, event) in decoded {
            last = offset + 1;
            let Some(event) = event else { continue };
            matched.clear();
            if !st.matcher.is_empty() {
                matched.extend(st.matcher.matches(&event));
            }
            let State { slots, queued, .. } = &mut *st;
            for (id, slot) in slots.iter() {
                if !slot.in_matcher && slot.filter.as_ref().is_none_or(|f| f.matches(&event)) {
                    matched.push(*id);
                }
            }
            for id in &matched {
                let Some(slot) = slots.get_mut(id) else {
                    continue;
                };
                if slot.detached_at.is_some() {
                    continue;
                }
                if slot.queue.len() >= QUEUE_CAP {
                    slot.detached_at = Some(offset);
                    continue;
                }
                if *queued >= FEED_QUEUE_CAP {
                    // Detached where its queue begins: the queue is dropped, and everything
                    // before that offset was taken or does not match.
                    slot.detached_at = Some(slot.queue.front().map_or(offset, |e| e.offset));
                    *queued -= slot.queue.len();
                    slot.queue.clear();
                    continue;
                }
                *queued += 1;
                slot.queue.push_back(FeedEntry {
                    offset,
                    timestamp_ms,
                    event: event.clone(),
                });
            }
        }
        st.next = last;
        drop(st);
        feed.scanned.send_replace(last);
    }
}

/// Marks every reader detached at the scan point (the feed cannot go on).
fn detach_all(feed: &Feed) {
    let mut st = lock(&feed.state);
    let next = st.next;
    for slot in st.slots.values_mut() {
        slot.detached_at.get_or_insert(next);
    }
    drop(st);
    feed.scanned.send_modify(|_| {});
}

/// Removes the feed from the registry when it has no readers; `true` when it did (the task
/// then ends).
fn retire(feeds: &Feeds, feed: &Arc<Feed>) -> bool {
    let mut all = lock(&feeds.feeds);
    let mut st = lock(&feed.state);
    if !st.slots.is_empty() {
        return false;
    }
    st.running = false;
    let key = (feed.topic.clone(), feed.partition);
    if all.get(&key).is_some_and(|f| Arc::ptr_eq(f, feed)) {
        all.remove(&key);
    }
    true
}

/// Removes the feed from the registry whatever its readers (they were detached).
fn retire_now(feeds: &Feeds, feed: &Arc<Feed>) {
    let mut all = lock(&feeds.feeds);
    lock(&feed.state).running = false;
    let key = (feed.topic.clone(), feed.partition);
    if all.get(&key).is_some_and(|f| Arc::ptr_eq(f, feed)) {
        all.remove(&key);
    }
}
