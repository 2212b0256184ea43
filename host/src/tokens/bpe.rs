//! A counting-only `o200k_base` byte-pair encoder over a compact, embedded
//! rank table.
//!
//! It gives the same counts as tiktoken's `encode_ordinary(text).len()`
//! (property-tested against tiktoken-rs in `tests` below; a single piece
//! longer than 16 KiB is counted in chunks and may count a little higher) in
//! about 4 MB instead of tiktoken-rs's ~40 MB: the token bytes live once, in
//! the binary, in rank order (written by `build.rs`), and a hash table of
//! `u32` ranks indexes them. Pre-tokenisation uses tiktoken-rs's own
//! `o200k_base` pattern, so only the rank storage and the merge loop are ours.

use std::collections::BinaryHeap;
use std::hash::BuildHasher;

use fancy_regex::Regex;
use hashbrown::HashTable;

/// `build.rs` output: token count, `n + 1` offsets, then the token bytes.
static RANKS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.ranks"));

type Rank = u32;

/// The longest piece merged whole; longer ones are counted in chunks.
const MAX_MERGED_PIECE: usize = 16 << 10;

/// Why the embedded table could not be loaded. Only a broken build can
/// cause it (`build.rs` writes the table), so callers treat it as fatal.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("the embedded o200k_base table is truncated")]
    Truncated,
    #[error("the o200k_base pre-tokenisation pattern does not compile: {0}")]
    Pattern(#[from] Box<fancy_regex::Error>),
}

/// The `o200k_base` token counter.
pub struct O200kCounter {
    /// `n + 1` little-endian `u32` offsets into `bytes`.
    offsets: &'static [u8],
    bytes: &'static [u8],
    /// Ranks, hashed by their token's bytes.
    index: HashTable<Rank>,
    hasher: foldhash::fast::FixedState,
    pattern: Regex,
}

impl std::fmt::Debug for O200kCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("O200kCounter")
            .field("tokens", &self.index.len())
            .finish_non_exhaustive()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

impl O200kCounter {
    /// Indexes the embedded table and compiles the pattern; done once per
    /// process, at start.
    pub fn load() -> Result<Self, TableError> {
        let count = read_u32(RANKS, 0).ok_or(TableError::Truncated)?;
        let offsets_end = 4 + 4 * (count as usize + 1);
        let offsets = RANKS.get(4..offsets_end).ok_or(TableError::Truncated)?;
        let bytes = &RANKS[offsets_end..];
        let last = read_u32(offsets, 4 * count as usize).ok_or(TableError::Truncated)?;
        if last as usize != bytes.len() {
            return Err(TableError::Truncated);
        }
        let hasher = foldhash::fast::FixedState::with_seed(0x6f32_3030_6b5f_6261);
        let mut index = HashTable::with_capacity(count as usize);
        for rank in 0..count {
            let hash = hasher.hash_one(token_of(offsets, bytes, rank));
            index.insert_unique(hash, rank, |&r| {
                hasher.hash_one(token_of(offsets, bytes, r))
            });
        }
        Ok(Self {
            offsets,
            bytes,
            index,
            hasher,
            pattern: Regex::new(tiktoken_rs::O200K_BASE_PAT_STR).map_err(Box::new)?,
        })
    }

    fn token(&self, rank: Rank) -> &'static [u8] {
        token_of(self.offsets, self.bytes, rank)
    }

    fn rank(&self, piece: &[u8]) -> Option<Rank> {
        let hash = self.hasher.hash_one(piece);
        self.index
            .find(hash, |&rank| self.token(rank) == piece)
            .copied()
    }

    /// Tokens in `text`, as `encode_ordinary(text).len()` would count them
    /// (pieces over 16 KiB aside, see below).
    pub fn count(&self, text: &str) -> usize {
        let mut total = 0usize;
        for piece in self.pattern.find_iter(text) {
            // The pattern has no construct that can fail on a `&str` at run
            // time short of its backtrack limit; a piece it gives up on is
            // counted as its bytes, an upper bound, rather than dropped.
            let piece = match piece {
                Ok(m) => m.as_str().as_bytes(),
                Err(_) => return total.saturating_add(text.len()),
            };
            // Merging costs ~50 bytes of working memory per byte of the
            // piece, so a multi-megabyte "word" (a prompt of one repeated
            // letter) would cost hundreds of megabytes; such a piece is
            // counted in chunks instead. Merges then stop at chunk edges,
            // which adds at most a token or two per chunk: a count that
            // errs high, as a spend reservation wants.
            for chunk in piece.chunks(MAX_MERGED_PIECE) {
                total = total.saturating_add(self.count_piece(chunk));
            }
        }
        total
    }

    /// Tokens in one pre-tokenised piece: one if it is a token, otherwise
    /// what byte-pair merging leaves (tiktoken's `_byte_pair_merge_large`,
    /// which gives the same merges as its small-piece variant).
    fn count_piece(&self, piece: &[u8]) -> usize {
        if piece.len() <= 1 || self.rank(piece).is_some() {
            return piece.len().min(1);
        }
        let len = piece.len();
        // `segments[i]` describes the segment starting at byte `i` (only
        // meaningful while `i` starts one): where it ends, where the segment
        // after it ends, and the rank of the two merged (`Rank::MAX`: none).
        let mut segments: Vec<Segment> = (0..len)
            .map(|i| Segment {
                prev: i.wrapping_sub(1),
                end: i + 1,
                next_end: i + 2,
                next_rank: Rank::MAX,
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(len);
        for i in 0..len - 1 {
            if let Some(rank) = self.rank(&piece[i..i + 2]) {
                heap.push(Merge { start: i, rank });
                segments[i].next_rank = rank;
            }
        }
        let mut merges = 0usize;
        let propose = |segments: &mut [Segment], heap: &mut BinaryHeap<Merge>, start, next_end| {
            let segment: &mut Segment = &mut segments[start];
            segment.next_end = next_end;
            segment.next_rank = Rank::MAX;
            if next_end <= len
                && let Some(rank) = self.rank(&piece[start..next_end])
            {
                heap.push(Merge { start, rank });
                segment.next_rank = rank;
            }
        };
        while let Some(left) = heap.pop() {
            if left.rank != segments[left.start].next_rank {
                continue; // superseded by a later merge
            }
            let left_start = left.start;
            let right_start = segments[left_start].end;
            let right_end = segments[left_start].next_end;
            let right_next_end = segments[right_start].next_end;
            segments[left_start].end = right_end;
            merges += 1;
            propose(&mut segments, &mut heap, left_start, right_next_end);
            if right_end < len {
                segments[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = segments[left_start].prev;
                propose(&mut segments, &mut heap, prev_start, right_end);
            }
            segments[right_start].next_rank = Rank::MAX;
        }
        len - merges
    }
}

fn token_of(offsets: &'static [u8], bytes: &'static [u8], rank: Rank) -> &'static [u8] {
    let at = rank as usize * 4;
    match (read_u32(offsets, at), read_u32(offsets, at + 4)) {
        (Some(start), Some(end)) => bytes.get(start as usize..end as usize).unwrap_or(&[]),
        _ => &[],
    }
}

struct Segment {
    prev: usize,
    end: usize,
    next_end: usize,
    next_rank: Rank,
}

/// A candidate merge; the heap pops the lowest rank first, then the
/// leftmost, which is BPE's merge order.
#[derive(PartialEq, Eq)]
struct Merge {
    start: usize,
    rank: Rank,
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.start.cmp(&self.start))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn counter() -> &'static O200kCounter {
        static COUNTER: OnceLock<O200kCounter> = OnceLock::new();
        COUNTER.get_or_init(|| O200kCounter::load().expect("embedded table loads"))
    }

    fn tiktoken(text: &str) -> usize {
        tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(text)
            .len()
    }

    #[test]
    fn every_token_is_indexed_under_its_own_rank() {
        let counter = counter();
        assert_eq!(counter.index.len(), 199_998);
        for rank in [0, 1, 255, 256, 9_999, 100_000, 199_997] {
            assert_eq!(counter.rank(counter.token(rank)), Some(rank));
        }
    }

    #[test]
    fn counts_match_tiktoken_on_the_project_docs_and_edge_cases() {
        let readme = include_str!("../../../README.md");
        let architecture = include_str!("../../../ARCHITECTURE.md");
        let long_word = "supercalifragilistic".repeat(40);
        let digits = "1234567890".repeat(30);
        let cases = [
            readme,
            architecture,
            "",
            " ",
            "\r\n\r\n  \t",
            "hello world",
            "<|endoftext|> is ordinary text here",
            "naïve café — déjà vu, 東京タワー, 🚀🚀 emoji",
            "He's they'LL we'VE I'm it'd",
            &long_word,
            &digits,
        ];
        for text in cases {
            assert_eq!(counter().count(text), tiktoken(text), "text: {text:.60?}");
        }
    }

    #[test]
    fn an_enormous_single_piece_is_counted_in_chunks_and_errs_high() {
        // One 200 KB "word": twelve chunks of 16 KiB.
        let text = "tollgateledger".repeat(15_000);
        let exact = tiktoken(&text);
        let chunked = counter().count(&text);
        let chunks = text.len().div_ceil(MAX_MERGED_PIECE);
        assert!(chunks > 1);
        // Merged whole, the piece would count exactly; at least one merge
        // across a chunk edge is lost for this text.
        assert!(
            chunked > exact && chunked <= exact + 2 * chunks,
            "chunked {chunked}, exact {exact}, {chunks} chunks"
        );
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            "[a-z]{1,12}",
            "[A-Z][a-z]{0,8}",
            "[0-9]{1,7}",
            "[ \t\r\n]{1,4}",
            "[!-/:-@\\[-`{-~]{1,5}",
            "'(s|t|re|ve|m|ll|d|S|LL)",
            "\\PC{1,6}",
            "[a-zA-Z]{60,240}",
            "[éàüßøñ東京語🚀]{1,8}",
        ];
        prop::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The lean counter and tiktoken-rs agree on every text.
        #[test]
        fn counts_match_tiktoken(text in text_strategy()) {
            prop_assert_eq!(counter().count(&text), tiktoken(&text));
        }
    }
}
