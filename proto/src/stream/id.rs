//! Stream ids and their allocation.
//!
//! An id names a stream on one link (one edgehub ⇄ cloudhub connection); it means nothing on
//! another link, so a hub relaying a stream from one edge to another gives it a fresh id on the
//! second link. As in HTTP/2, the side that opens a stream picks its id from its own half of
//! the id space — the edge odd ids, the cloud even ids — so both ends can open streams at the
//! same time without agreeing first. Id 0 is reserved (never a stream).

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU32;

/// The id of one stream on one link: never 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(NonZeroU32);

impl StreamId {
    /// `id` as a stream id, or `None` for the reserved id 0.
    pub const fn new(id: u32) -> Option<Self> {
        match NonZeroU32::new(id) {
            Some(id) => Some(StreamId(id)),
            None => None,
        }
    }

    /// The id as a number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The side of the link that opened (and so allocated) this stream.
    pub const fn opener(self) -> Side {
        if self.get() % 2 == 1 {
            Side::Edge
        } else {
            Side::Cloud
        }
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.get())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

/// One end of a link.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Side {
    /// The edge node (edgehub): opens streams with odd ids.
    Edge,
    /// The cloud (cloudhub): opens streams with even ids.
    Cloud,
}

impl Side {
    /// The other end of the link.
    pub const fn peer(self) -> Side {
        match self {
            Side::Edge => Side::Cloud,
            Side::Cloud => Side::Edge,
        }
    }

    /// The first id this side allocates.
    const fn first_id(self) -> u32 {
        match self {
            Side::Edge => 1,
            Side::Cloud => 2,
        }
    }
}

/// Hands out the ids of the streams one side opens on one link.
///
/// Ids go up by two from the side's first id and wrap around at the end of the u32 range, so
/// an id is not reused soon after its stream ends (a late frame of an old stream is then
/// unlikely to land on a new one). An id still in use is skipped, never handed out twice.
/// The number of live ids is capped, which also bounds the search for a free id: among any
/// `limit + 1` consecutive candidates at least one is free.
#[derive(Debug)]
pub struct StreamIdAllocator {
    side: Side,
    /// The next candidate, always of this side's parity and non-zero.
    next: u32,
    live: HashSet<StreamId>,
    limit: usize,
}

/// The most ids of one parity: a limit above it could never be reached.
const IDS_PER_SIDE: usize = 1 << 31;

impl StreamIdAllocator {
    /// An allocator for `side` allowing at most `limit` streams open at once.
    pub fn new(side: Side, limit: usize) -> Self {
        StreamIdAllocator {
            side,
            next: side.first_id(),
            live: HashSet::new(),
            // One id of the side's half stays free so the search always ends.
            limit: limit.min(IDS_PER_SIDE - 1),
        }
    }

    /// The side whose ids this allocator hands out.
    pub fn side(&self) -> Side {
        self.side
    }

    /// A fresh id, now in use until [`release`](Self::release)d; `None` when `limit` streams
    /// are already open (the caller refuses the stream as "too many streams").
    pub fn allocate(&mut self) -> Option<StreamId> {
        if self.live.len() >= self.limit {
            return None;
        }
        loop {
            let candidate = self.next;
            self.next = match candidate.checked_add(2) {
                Some(next) => next,
                None => self.side.first_id(),
            };
            // `next` is never 0: it starts at 1 or 2, moves by 2, and wraps back to 1 or 2.
            let id = StreamId::new(candidate)?;
            if self.live.insert(id) {
                return Some(id);
            }
        }
    }

    /// Marks `id` free again; false if it was not in use.
    pub fn release(&mut self, id: StreamId) -> bool {
        self.live.remove(&id)
    }

    /// True while `id` is in use.
    pub fn is_live(&self, id: StreamId) -> bool {
        self.live.contains(&id)
    }

    /// How many ids are in use.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no id is in use.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> StreamId {
        StreamId::new(n).unwrap()
    }

    #[test]
    fn zero_is_not_an_id() {
        assert_eq!(StreamId::new(0), None);
        assert_eq!(id(7).get(), 7);
        assert_eq!(id(7).to_string(), "7");
    }

    #[test]
    fn parity_names_the_opener() {
        assert_eq!(id(1).opener(), Side::Edge);
        assert_eq!(id(u32::MAX).opener(), Side::Edge);
        assert_eq!(id(2).opener(), Side::Cloud);
        assert_eq!(id(u32::MAX - 1).opener(), Side::Cloud);
        assert_eq!(Side::Edge.peer(), Side::Cloud);
        assert_eq!(Side::Cloud.peer(), Side::Edge);
    }

    #[test]
    fn edge_allocates_odd_and_cloud_even_ids() {
        let mut edge = StreamIdAllocator::new(Side::Edge, 100);
        let mut cloud = StreamIdAllocator::new(Side::Cloud, 100);
        let e: Vec<u32> = (0..4).map(|_| edge.allocate().unwrap().get()).collect();
        let c: Vec<u32> = (0..4).map(|_| cloud.allocate().unwrap().get()).collect();
        assert_eq!(e, [1, 3, 5, 7]);
        assert_eq!(c, [2, 4, 6, 8]);
        assert_eq!(edge.len(), 4);
        assert_eq!(edge.side(), Side::Edge);
    }

    #[test]
    fn a_released_id_is_not_reused_at_once() {
        let mut ids = StreamIdAllocator::new(Side::Edge, 100);
        let first = ids.allocate().unwrap();
        assert!(ids.is_live(first));
        assert!(ids.release(first));
        assert!(!ids.release(first), "a second release is refused");
        assert!(!ids.is_live(first));
        assert_eq!(ids.allocate().unwrap().get(), 3);
        assert!(!ids.is_empty());
    }

    #[test]
    fn the_limit_caps_live_streams_and_frees_with_release() {
        let mut ids = StreamIdAllocator::new(Side::Cloud, 3);
        let a = ids.allocate().unwrap();
        ids.allocate().unwrap();
        ids.allocate().unwrap();
        assert_eq!(ids.allocate(), None);
        ids.release(a);
        assert_eq!(ids.allocate().unwrap().get(), 8);
    }

    #[test]
    fn odd_ids_wrap_around_skipping_live_ones() {
        let mut ids = StreamIdAllocator::new(Side::Edge, 10);
        let one = ids.allocate().unwrap(); // 1 stays live
        ids.allocate().unwrap(); // 3 released below
        ids.release(id(3));
        let five = ids.allocate().unwrap(); // 5 stays live
        assert_eq!(five.get(), 5);
        ids.next = u32::MAX - 2;
        let got: Vec<u32> = (0..3).map(|_| ids.allocate().unwrap().get()).collect();
        assert_eq!(
            got,
            [u32::MAX - 2, u32::MAX, 3],
            "1 and 5 are live, so skipped"
        );
        assert!(ids.is_live(one));
        assert_eq!(ids.allocate().unwrap().get(), 7);
    }

    #[test]
    fn even_ids_wrap_around_and_never_yield_zero() {
        let mut ids = StreamIdAllocator::new(Side::Cloud, 10);
        ids.next = u32::MAX - 1;
        let got: Vec<u32> = (0..3).map(|_| ids.allocate().unwrap().get()).collect();
        assert_eq!(got, [u32::MAX - 1, 2, 4]);
    }

    #[test]
    fn a_full_neighbourhood_is_searched_past() {
        // Every candidate after the cursor is live except one: allocation finds it.
        let mut ids = StreamIdAllocator::new(Side::Edge, 1000);
        let all: Vec<StreamId> = (0..1000).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(ids.allocate(), None);
        ids.release(all[500]);
        ids.next = 1;
        assert_eq!(ids.allocate(), Some(all[500]));
    }

    #[test]
    fn an_absurd_limit_is_capped() {
        let ids = StreamIdAllocator::new(Side::Edge, usize::MAX);
        assert_eq!(ids.limit, IDS_PER_SIDE - 1);
    }
}
