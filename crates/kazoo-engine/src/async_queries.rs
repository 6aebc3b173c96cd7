//! The asynchronous queries waiting for their reply when the consumer
//! workers take the replies themselves (`amqp_worker_replies`): a table in
//! memory every process shares, which the SIP worker that published a
//! query fills and the consumer worker that reads its reply (or finds it
//! past its deadline) empties, to resume the suspended transaction.
//!
//! The table is a fixed number of slots of plain words ([`AtomicU64`]), so
//! that it needs no lock and no pointer across processes: a slot's first
//! word holds its state and a generation, bumped each time the slot is
//! filled. A SIP worker claims a free slot (compare-and-swap), writes the
//! query's fields and publishes the slot as waiting; whoever takes it (a
//! reply, the deadline, or the publisher taking it back) swaps that exact
//! word for taken, so exactly one process resumes a query, and a slot
//! reused meanwhile (another generation) is never taken by mistake. A
//! query that does not fit (the table is full, or a name is longer than a
//! slot holds) is left to the AMQP process, which has no such limit.
//!
//! A query's slot is the first free one from where its `Msg-ID`'s hash
//! points; the table remembers the farthest any query went from there, so
//! that looking a `Msg-ID` up (a reply, or a query whose `Msg-ID` already
//! waits, which is refused) reads only that far, not the whole table.
//!
//! Deadlines are on the system's monotonic clock ([`now_ms`]), which every
//! process reads alike.
use std::sync::atomic::{AtomicU64, Ordering};

/// How many queries may wait at once.
pub const CAPACITY: usize = 2048;
/// The longest `Msg-ID` and route names a slot holds.
pub const NAME_BYTES: usize = 64;
const NAME_WORDS: usize = NAME_BYTES / 8;

/// Words of the table's header: queries waiting, the next sweep's time,
/// the farthest a query's slot was from where its hash points.
const HEADER_WORDS: usize = 3;
const IN_FLIGHT: usize = 0;
const NEXT_SWEEP: usize = 1;
const FARTHEST: usize = 2;

/// A slot's words.
const STATE: usize = 0;
const HASH: usize = 1;
const TRANSACTION: usize = 2;
const DEADLINE: usize = 3;
/// Timeout (ms, 32 bits) and the three names' lengths (8 bits each).
const LENGTHS: usize = 4;
const MSG_ID: usize = 5;
const OK_ROUTE: usize = MSG_ID + NAME_WORDS;
const ERR_ROUTE: usize = OK_ROUTE + NAME_WORDS;
const SLOT_WORDS: usize = ERR_ROUTE + NAME_WORDS;

/// The table's size in words.
pub const WORDS: usize = HEADER_WORDS + CAPACITY * SLOT_WORDS;

/// A slot's state, in the low bits of its first word.
const FREE: u64 = 0;
const FILLING: u64 = 1;
const WAITING: u64 = 2;
const TAKEN: u64 = 3;
const STATE_BITS: u64 = 3;
const GENERATION: u64 = 4;

/// How often expired queries are looked for, by one of the workers.
pub const SWEEP_EVERY_MS: u64 = 10;

/// A query to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting<'a> {
    pub msg_id: &'a str,
    /// The suspended transaction (tm's hash index and label).
    pub hash: u32,
    pub label: u32,
    pub ok_route: &'a str,
    pub err_route: &'a str,
    /// When it is not answered any more ([`now_ms`]).
    pub deadline_ms: u64,
    pub timeout_ms: u32,
}

/// A query taken from the table, to resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub msg_id: String,
    pub hash: u32,
    pub label: u32,
    pub ok_route: String,
    pub err_route: String,
    pub timeout_ms: u32,
}

/// Why [`AsyncQueries::insert`] did not take a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotInserted {
    /// Every slot is taken, or a name is longer than [`NAME_BYTES`].
    DoesNotFit,
    /// A query with the same `Msg-ID` waits: its reply could not tell them
    /// apart.
    Duplicate,
}

/// Where [`AsyncQueries::insert`] put a query, to take it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    slot: usize,
    word: u64,
}

/// The table (see the module's comment); copies share it.
#[derive(Clone, Copy, Debug)]
pub struct AsyncQueries {
    words: &'static [AtomicU64; WORDS],
}

impl AsyncQueries {
    /// A table in `words` (zero at start).
    pub fn new(words: &'static [AtomicU64; WORDS]) -> AsyncQueries {
        AsyncQueries { words }
    }

    fn word(&self, slot: usize, word: usize) -> &AtomicU64 {
        &self.words[HEADER_WORDS + slot * SLOT_WORDS + word]
    }

    /// How many queries wait now.
    pub fn in_flight(&self) -> u64 {
        self.words[IN_FLIGHT].load(Ordering::Relaxed)
    }

    /// The slots a `Msg-ID` whose hash is `hash` may be in, nearest first.
    fn probe(&self, hash: u64) -> impl Iterator<Item = usize> {
        let start = (hash % CAPACITY as u64) as usize;
        let farthest = (self.words[FARTHEST].load(Ordering::SeqCst) as usize).min(CAPACITY - 1);
        (0..=farthest).map(move |n| (start + n) % CAPACITY)
    }

    /// Puts `query` in a free slot, unless it does not fit or a query with
    /// its `Msg-ID` already waits (two processes putting in the same
    /// `Msg-ID` at the same moment may both get in).
    pub fn insert(&self, query: &Waiting<'_>) -> Result<Ticket, NotInserted> {
        let names = [query.msg_id, query.ok_route, query.err_route];
        if names.iter().any(|name| name.len() > NAME_BYTES) {
            return Err(NotInserted::DoesNotFit);
        }
        let hash = hash(query.msg_id);
        if self
            .probe(hash)
            .any(|slot| self.holds(slot, hash, query.msg_id))
        {
            return Err(NotInserted::Duplicate);
        }
        let start = (hash % CAPACITY as u64) as usize;
        for n in 0..CAPACITY {
            let slot = (start + n) % CAPACITY;
            let state = self.word(slot, STATE);
            let current = state.load(Ordering::Relaxed);
            if current & STATE_BITS != FREE {
                continue;
            }
            let filling = (current & !STATE_BITS).wrapping_add(GENERATION) | FILLING;
            if state
                .compare_exchange(current, filling, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            self.word(slot, HASH).store(hash, Ordering::Relaxed);
            self.word(slot, TRANSACTION).store(
                u64::from(query.hash) << 32 | u64::from(query.label),
                Ordering::Relaxed,
            );
            self.word(slot, DEADLINE)
                .store(query.deadline_ms, Ordering::Relaxed);
            let lengths = u64::from(query.timeout_ms) << 32
                | (query.msg_id.len() as u64) << 16
                | (query.ok_route.len() as u64) << 8
                | query.err_route.len() as u64;
            self.word(slot, LENGTHS).store(lengths, Ordering::Relaxed);
            for (name, at) in names.iter().zip([MSG_ID, OK_ROUTE, ERR_ROUTE]) {
                self.write_name(slot, at, name.as_bytes());
            }
            self.words[IN_FLIGHT].fetch_add(1, Ordering::Relaxed);
            // Before the query shows as waiting: a lookup that sees it
            // also reads this far.
            self.words[FARTHEST].fetch_max(n as u64, Ordering::SeqCst);
            let waiting = (filling & !STATE_BITS) | WAITING;
            state.store(waiting, Ordering::Release);
            return Ok(Ticket {
                slot,
                word: waiting,
            });
        }
        Err(NotInserted::DoesNotFit)
    }

    /// Whether `slot` holds a waiting query for `msg_id` (whose hash is
    /// `hash`), read without taking it.
    fn holds(&self, slot: usize, hash: u64, msg_id: &str) -> bool {
        let state = self.word(slot, STATE);
        let current = state.load(Ordering::Acquire);
        if current & STATE_BITS != WAITING || self.word(slot, HASH).load(Ordering::Relaxed) != hash
        {
            return false;
        }
        let length = (self.word(slot, LENGTHS).load(Ordering::Relaxed) >> 16 & 0xff) as usize;
        let same = length == msg_id.len() && self.read_name(slot, MSG_ID, length) == msg_id;
        // Read while it waited, not while another query filled the slot.
        same && state.load(Ordering::Acquire) == current
    }

    /// Takes back the query `ticket` put in (its publish failed): `false`
    /// when another process took it first (it resumes it).
    pub fn cancel(&self, ticket: Ticket) -> bool {
        self.take(ticket.slot, ticket.word).is_some()
    }

    /// Takes the query whose `Msg-ID` is `msg_id`, if one waits.
    pub fn take_reply(&self, msg_id: &str) -> Option<Taken> {
        let hash = hash(msg_id);
        for slot in self.probe(hash) {
            let current = self.word(slot, STATE).load(Ordering::Acquire);
            if current & STATE_BITS != WAITING
                || self.word(slot, HASH).load(Ordering::Relaxed) != hash
            {
                continue;
            }
            let Some(taken) = self.take(slot, current) else {
                continue;
            };
            if taken.msg_id == msg_id {
                return Some(taken);
            }
            // Another query with the same hash: put back as it was.
            self.words[IN_FLIGHT].fetch_add(1, Ordering::Relaxed);
            self.word(slot, STATE).store(current, Ordering::Release);
        }
        None
    }

    /// Whether the caller should look for expired queries now: true for
    /// one caller every [`SWEEP_EVERY_MS`] while queries wait.
    pub fn sweep_due(&self, now_ms: u64) -> bool {
        if self.in_flight() == 0 {
            return false;
        }
        let next = self.words[NEXT_SWEEP].load(Ordering::Relaxed);
        now_ms >= next
            && self.words[NEXT_SWEEP]
                .compare_exchange(
                    next,
                    now_ms + SWEEP_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Takes every query whose deadline is `now_ms` or earlier.
    pub fn take_expired(&self, now_ms: u64) -> Vec<Taken> {
        let mut expired = Vec::new();
        for slot in 0..CAPACITY {
            let current = self.word(slot, STATE).load(Ordering::Acquire);
            if current & STATE_BITS != WAITING
                || self.word(slot, DEADLINE).load(Ordering::Relaxed) > now_ms
            {
                continue;
            }
            expired.extend(self.take(slot, current));
        }
        expired
    }

    /// Swaps `slot`'s state word `current` (waiting) for taken, reads the
    /// query and frees the slot; `None` when the word changed meanwhile.
    fn take(&self, slot: usize, current: u64) -> Option<Taken> {
        let state = self.word(slot, STATE);
        let taken = (current & !STATE_BITS) | TAKEN;
        state
            .compare_exchange(current, taken, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        let transaction = self.word(slot, TRANSACTION).load(Ordering::Relaxed);
        let lengths = self.word(slot, LENGTHS).load(Ordering::Relaxed);
        let length = |shift: u32| ((lengths >> shift) & 0xff) as usize;
        let query = Taken {
            msg_id: self.read_name(slot, MSG_ID, length(16)),
            hash: (transaction >> 32) as u32,
            label: transaction as u32,
            ok_route: self.read_name(slot, OK_ROUTE, length(8)),
            err_route: self.read_name(slot, ERR_ROUTE, length(0)),
            timeout_ms: (lengths >> 32) as u32,
        };
        self.words[IN_FLIGHT].fetch_sub(1, Ordering::Relaxed);
        state.store((current & !STATE_BITS) | FREE, Ordering::Release);
        Some(query)
    }

    fn write_name(&self, slot: usize, at: usize, name: &[u8]) {
        for (i, chunk) in name.chunks(8).enumerate() {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            self.word(slot, at + i)
                .store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
    }

    fn read_name(&self, slot: usize, at: usize, len: usize) -> String {
        let mut bytes = Vec::with_capacity(len.div_ceil(8) * 8);
        for i in 0..len.div_ceil(8) {
            let word = self.word(slot, at + i).load(Ordering::Relaxed);
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.truncate(len);
        // Written from a `&str`, cut at its length: always UTF-8.
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// FNV-1a: where a `Msg-ID` starts looking for its slot.
fn hash(msg_id: &str) -> u64 {
    msg_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Milliseconds on the system's monotonic clock, the same in every process.
pub fn now_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    impl AsyncQueries {
        /// A table of this process only.
        fn private() -> AsyncQueries {
            let words: Vec<AtomicU64> = (0..WORDS).map(|_| AtomicU64::new(0)).collect();
            let words: Box<[AtomicU64; WORDS]> = words.into_boxed_slice().try_into().unwrap();
            AsyncQueries::new(Box::leak(words))
        }
    }

    fn query(msg_id: &str, deadline_ms: u64) -> Waiting<'_> {
        Waiting {
            msg_id,
            hash: 7,
            label: 11,
            ok_route: "KZ_OK",
            err_route: "KZ_ERR",
            deadline_ms,
            timeout_ms: 2500,
        }
    }

    #[test]
    fn a_reply_takes_its_query_once() {
        let table = AsyncQueries::private();
        table.insert(&query("a", 100)).unwrap();
        table.insert(&query("b", 100)).unwrap();
        assert_eq!(table.in_flight(), 2);
        let taken = table.take_reply("b").unwrap();
        assert_eq!(
            taken,
            Taken {
                msg_id: "b".into(),
                hash: 7,
                label: 11,
                ok_route: "KZ_OK".into(),
                err_route: "KZ_ERR".into(),
                timeout_ms: 2500,
            }
        );
        assert_eq!(table.take_reply("b"), None);
        assert_eq!(table.in_flight(), 1);
        assert_eq!(table.take_reply("a").unwrap().msg_id, "a");
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn expired_queries_are_taken_once_and_others_stay() {
        let table = AsyncQueries::private();
        table.insert(&query("early", 100)).unwrap();
        table.insert(&query("late", 200)).unwrap();
        let expired = table.take_expired(150);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].msg_id, "early");
        assert!(table.take_expired(150).is_empty());
        assert_eq!(table.take_reply("early"), None);
        assert_eq!(table.take_reply("late").unwrap().msg_id, "late");
    }

    #[test]
    fn a_cancelled_query_is_gone_and_a_taken_one_cannot_be_cancelled() {
        let table = AsyncQueries::private();
        let ticket = table.insert(&query("a", 100)).unwrap();
        assert!(table.cancel(ticket));
        assert!(!table.cancel(ticket));
        assert_eq!(table.take_reply("a"), None);
        let ticket = table.insert(&query("b", 100)).unwrap();
        table.take_reply("b").unwrap();
        assert!(!table.cancel(ticket));
        // The slot reused by another query is not taken with the old ticket.
        let reused = table.insert(&query("b", 100)).unwrap();
        assert_eq!(reused.slot, ticket.slot);
        assert!(!table.cancel(ticket));
        assert!(table.cancel(reused));
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let table = AsyncQueries::private();
        let long = "x".repeat(NAME_BYTES + 1);
        assert_eq!(table.insert(&query(&long, 1)), Err(NotInserted::DoesNotFit));
        let names: Vec<String> = (0..CAPACITY).map(|i| format!("q{i}")).collect();
        for name in &names {
            assert!(table.insert(&query(name, 1)).is_ok());
        }
        assert_eq!(
            table.insert(&query("one more", 1)),
            Err(NotInserted::DoesNotFit)
        );
        assert_eq!(table.in_flight(), CAPACITY as u64);
        // Longest names round-trip whole.
        let full = "m".repeat(NAME_BYTES);
        assert_eq!(table.take_reply("q5").unwrap().msg_id, "q5");
        table.insert(&query(&full, 1)).unwrap();
        assert_eq!(table.take_reply(&full).unwrap().msg_id, full);
    }

    #[test]
    fn a_msg_id_that_already_waits_is_refused_until_its_query_is_taken() {
        let table = AsyncQueries::private();
        table.insert(&query("a", 100)).unwrap();
        assert_eq!(table.insert(&query("a", 200)), Err(NotInserted::Duplicate));
        assert_eq!(table.in_flight(), 1);
        table.take_reply("a").unwrap();
        table.insert(&query("a", 200)).unwrap();
    }

    #[test]
    fn queries_placed_far_from_their_hash_are_found() {
        // Nearly full: many queries sit far from where their hash points.
        let table = AsyncQueries::private();
        let names: Vec<String> = (0..CAPACITY - 8).map(|i| format!("far{i}")).collect();
        for name in &names {
            table.insert(&query(name, 1)).unwrap();
        }
        assert!(table.words[FARTHEST].load(Ordering::Relaxed) > 8);
        for name in &names {
            assert_eq!(
                table.insert(&query(name, 1)),
                Err(NotInserted::Duplicate),
                "{name}"
            );
        }
        for name in &names {
            assert_eq!(table.take_reply(name).map(|t| t.msg_id), Some(name.clone()));
        }
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn one_sweeper_at_a_time_and_none_when_nothing_waits() {
        let table = AsyncQueries::private();
        assert!(!table.sweep_due(1000));
        table.insert(&query("a", 5000)).unwrap();
        assert!(table.sweep_due(1000));
        assert!(!table.sweep_due(1005));
        assert!(table.sweep_due(1000 + SWEEP_EVERY_MS));
    }

    #[test]
    fn processes_racing_for_the_same_query_resume_it_once() {
        let table = AsyncQueries::private();
        for round in 0..200 {
            let id = format!("q{round}");
            table.insert(&query(&id, 0)).unwrap();
            let takers: Vec<_> = (0..4)
                .map(|n| {
                    let id = id.clone();
                    std::thread::spawn(move || {
                        if n % 2 == 0 {
                            table.take_reply(&id).into_iter().count()
                        } else {
                            table.take_expired(u64::MAX).len()
                        }
                    })
                })
                .collect();
            let total: usize = takers.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(total, 1, "round {round}");
        }
        assert_eq!(table.in_flight(), 0);
    }
}
