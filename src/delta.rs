//! Delta transfer, rsync style, as pure streaming code: block signatures of the receiver's
//! old file, a rolling search of the sender's new file for those blocks at any offset, and
//! the rules a receiver uses to check the resulting instructions. No I/O: callers feed bytes
//! in and take instructions out, so memory stays bounded by the block size and a chunk.
//!
//! - [`SignatureBuilder`]: per block of the old file an adler32 (weak, rolling) and a
//!   truncated BLAKE3 (strong) checksum; the block size comes from the file size
//!   ([`block_size_for`]).
//! - [`DeltaEncoder`]: slides an adler32 window over the new file; a window whose weak sum is
//!   known is confirmed by the strong hash and becomes "copy block i" (runs are merged);
//!   everything else becomes literal bytes. It tries at most [`MAX_CANDIDATES`] blocks per
//!   offset and stops searching once its hashing work exceeds a budget proportional to the
//!   file, so crafted or degenerate input (all zeros, weak-sum collisions) can never make it
//!   quadratic; it then sends the rest as literal data.
//! - A bad match can only cost a retry: the receiver checks the whole-file hash before it
//!   commits anything.

use std::collections::HashMap;

use adler32::RollingAdler32;

use crate::model::Version;

/// Smallest and largest block sizes used or accepted from a peer.
pub const MIN_BLOCK: u32 = 1024;
pub const MAX_BLOCK: u32 = 1 << 20;
/// Most blocks in one signature: bounds its size (12 bytes a block) and the index built
/// from it. Files that would need more are sent whole.
pub const MAX_BLOCKS: usize = 1 << 16;
/// Bytes of the truncated strong hash per block. A false match costs a retry (the
/// whole-file hash catches it), so 64 bits are plenty.
pub const STRONG_LEN: usize = 8;
/// Files (old or new) smaller than this are sent whole: a signature round trip costs more
/// than the bytes it could save.
pub const DELTA_MIN_SIZE: u64 = 64 * 1024;
/// Blocks tried per offset whose weak sum matches.
pub const MAX_CANDIDATES: usize = 16;
/// Literal data is handed out in pieces of at most this many bytes.
pub const LITERAL_CHUNK: usize = 256 * 1024;

/// The adler32 modulus; the rolling update needs sizes reduced by it.
const ADLER_MOD: usize = 65_521;

/// Whether a file of `new_size` replacing version `base` goes as a delta.
/// Sender and receiver evaluate this on the same plan data, so they agree without asking.
pub fn wanted(new_size: u64, base: Option<Version>) -> bool {
    new_size >= DELTA_MIN_SIZE && base.is_some_and(|b| b.size >= DELTA_MIN_SIZE)
}

/// Block size for an old file of `len` bytes: near `sqrt(12 × len)`, which balances the
/// signature's size against the literal bytes a change drags along, as a power of two in
/// `MIN_BLOCK..=MAX_BLOCK`, and large enough to stay within `MAX_BLOCKS`.
pub fn block_size_for(len: u64) -> u32 {
    let ideal = ((len as f64) * 12.0).sqrt() as u64;
    let mut b = ideal
        .next_power_of_two()
        .clamp(u64::from(MIN_BLOCK), u64::from(MAX_BLOCK));
    while len.div_ceil(b) > MAX_BLOCKS as u64 && b < u64::from(MAX_BLOCK) {
        b *= 2;
    }
    b as u32
}

/// Checksums of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSig {
    pub weak: u32,
    pub strong: [u8; STRONG_LEN],
}

/// The signature of an old file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub block_size: u32,
    pub file_size: u64,
    pub blocks: Vec<BlockSig>,
}

impl Signature {
    /// "No usable old file": the sender then sends the whole file.
    pub fn empty() -> Signature {
        Signature {
            block_size: MIN_BLOCK,
            file_size: 0,
            blocks: Vec::new(),
        }
    }

    /// Checks a signature that came from a peer.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(MIN_BLOCK..=MAX_BLOCK).contains(&self.block_size) {
            return Err("signature block size out of range");
        }
        if self.blocks.len() > MAX_BLOCKS {
            return Err("signature with too many blocks");
        }
        if self.file_size.div_ceil(u64::from(self.block_size)) != self.blocks.len() as u64 {
            return Err("signature block count does not match its file size");
        }
        Ok(())
    }

    /// Length of block `i` (the last one may be short). `i` must be in range.
    pub fn block_len(&self, i: u32) -> u32 {
        let start = u64::from(i) * u64::from(self.block_size);
        (self.file_size - start).min(u64::from(self.block_size)) as u32
    }

    /// Byte offset of block `i` in the old file.
    pub fn block_offset(&self, i: u32) -> u64 {
        u64::from(i) * u64::from(self.block_size)
    }

    /// Checks a copy instruction against this signature and returns the bytes it produces.
    pub fn check_copy(&self, first: u32, count: u32) -> Result<u64, &'static str> {
        let end = u64::from(first) + u64::from(count);
        if count == 0 || end > self.blocks.len() as u64 {
            return Err("copy of blocks outside the old file");
        }
        let start = self.block_offset(first);
        Ok((self.file_size.min(end * u64::from(self.block_size))) - start)
    }
}

/// Weak checksum of a block.
pub fn weak_hash(data: &[u8]) -> u32 {
    RollingAdler32::from_buffer(data).hash()
}

/// Strong checksum of a block.
pub fn strong_hash(data: &[u8]) -> [u8; STRONG_LEN] {
    let h = blake3::hash(data);
    let mut out = [0u8; STRONG_LEN];
    out.copy_from_slice(&h.as_bytes()[..STRONG_LEN]);
    out
}

/// Builds a signature from the old file's bytes, fed in any pieces.
pub struct SignatureBuilder {
    block_size: usize,
    buf: Vec<u8>,
    sig: Signature,
}

impl SignatureBuilder {
    pub fn new(block_size: u32) -> SignatureBuilder {
        SignatureBuilder {
            block_size: block_size as usize,
            buf: Vec::with_capacity(block_size as usize),
            sig: Signature {
                block_size,
                file_size: 0,
                blocks: Vec::new(),
            },
        }
    }

    /// Feeds bytes. Returns false once the file is too large for a signature (more than
    /// `MAX_BLOCKS` blocks); the caller then gives up on the delta.
    pub fn update(&mut self, mut data: &[u8]) -> bool {
        self.sig.file_size += data.len() as u64;
        while !data.is_empty() {
            let take = (self.block_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.block_size {
                self.push_block();
            }
        }
        self.sig.blocks.len() <= MAX_BLOCKS
    }

    fn push_block(&mut self) {
        self.sig.blocks.push(BlockSig {
            weak: weak_hash(&self.buf),
            strong: strong_hash(&self.buf),
        });
        self.buf.clear();
    }

    pub fn finish(mut self) -> Signature {
        if !self.buf.is_empty() {
            self.push_block();
        }
        self.sig
    }
}

/// One instruction of a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaOp {
    /// Copy blocks `first..first+count` of the old file.
    Copy { first: u32, count: u32 },
    /// These bytes, as they are.
    Literal(Vec<u8>),
}

/// Streams a new file against a signature and produces [`DeltaOp`]s.
pub struct DeltaEncoder {
    sig: Signature,
    block: usize,
    /// Weak sum → blocks with it (at most `MAX_CANDIDATES` each).
    index: HashMap<u32, Vec<u32>>,
    /// A bit per weak sum bucket: most offsets are rejected without touching the map.
    filter: Vec<u64>,
    /// Bytes not yet turned into instructions: `buf[lit..pos]` is pending literal data,
    /// `buf[pos..]` the window and what follows it.
    buf: Vec<u8>,
    lit: usize,
    pos: usize,
    /// Adler32 state (a, b) of the window at `pos`, while sliding.
    rolling: Option<(u32, u32)>,
    /// Per outgoing byte value x: `(-n·x - 1) mod 65521` for this block size n, the part of
    /// the rolling update that does not depend on the window.
    drop: [u32; 256],
    pending: Option<(u32, u32)>,
    /// Bytes hashed with the strong hash so far, and the most allowed.
    work: u64,
    budget: u64,
    searching: bool,
}

const FILTER_BITS: usize = 1 << 20;

impl DeltaEncoder {
    /// `new_len` is the size of the new file, used to size the work budget.
    pub fn new(sig: Signature, new_len: u64) -> DeltaEncoder {
        let mut index: HashMap<u32, Vec<u32>> = HashMap::with_capacity(sig.blocks.len());
        let mut filter = vec![0u64; FILTER_BITS / 64];
        let full = sig.block_size;
        for (i, b) in sig.blocks.iter().enumerate() {
            // Only full-size blocks are searched for while sliding; a short last block is
            // tried once, at the very end.
            if sig.block_len(i as u32) != full {
                continue;
            }
            let e = index.entry(b.weak).or_default();
            if e.len() < MAX_CANDIDATES {
                e.push(i as u32);
            }
            let bit = filter_bit(b.weak);
            filter[bit / 64] |= 1 << (bit % 64);
        }
        let searching = !sig.blocks.is_empty();
        let m = ADLER_MOD as u64;
        let nmod = u64::from(sig.block_size) % m;
        let mut drop = [0u32; 256];
        for (x, d) in drop.iter_mut().enumerate() {
            *d = ((m * 256 - 1 - nmod * x as u64) % m) as u32;
        }
        DeltaEncoder {
            drop,
            block: sig.block_size as usize,
            sig,
            index,
            filter,
            buf: Vec::new(),
            lit: 0,
            pos: 0,
            rolling: None,
            pending: None,
            work: 0,
            // Twice the file plus a constant: an honest search hashes each matched block
            // once, so only a degenerate one ever reaches this.
            budget: 2 * new_len + 16 * u64::from(MAX_BLOCK),
            searching,
        }
    }

    /// True while the encoder still looks for matches (the work budget is not spent).
    pub fn searching(&self) -> bool {
        self.searching
    }

    /// Strong-hash bytes spent so far.
    pub fn work(&self) -> u64 {
        self.work
    }

    /// Feeds the next bytes of the new file.
    pub fn update(&mut self, data: &[u8], out: &mut Vec<DeltaOp>) {
        self.buf.extend_from_slice(data);
        self.scan(out);
        self.compact();
    }

    fn scan(&mut self, out: &mut Vec<DeltaOp>) {
        let b = self.block;
        let m = ADLER_MOD as u32;
        while self.searching && self.buf.len() - self.pos >= b {
            let (mut a, mut s) = match self.rolling {
                Some(state) => state,
                None => {
                    let h = weak_hash(&self.buf[self.pos..self.pos + b]);
                    (h & 0xFFFF, h >> 16)
                }
            };
            if may_match(&self.filter, s << 16 | a) {
                if let Some(i) = self.find(s << 16 | a) {
                    self.flush_literal(self.pos, out);
                    self.push_copy(i, out);
                    self.pos += b;
                    self.lit = self.pos;
                    self.rolling = None;
                    continue;
                }
            }
            // Slide one byte at a time until a window may match, the buffer ends, or a
            // literal chunk is full. This loop is where a sender spends its time on changed
            // data, so it is kept to a few additions and one modulo per byte.
            let limit = (self.buf.len() - b).min(self.lit + LITERAL_CHUNK);
            let mut pos = self.pos;
            let mut hit = false;
            let window = &self.buf[..limit + b];
            let drop = &self.drop;
            while pos < limit {
                let out_byte = window[pos];
                let in_byte = u32::from(window[pos + b]);
                a = a + m - u32::from(out_byte) + in_byte;
                if a >= m {
                    a -= m;
                }
                if a >= m {
                    a -= m;
                }
                // b' = b - n·out + a' - 1 (mod m), with the part that depends only on the
                // outgoing byte looked up: no division on the per-byte path.
                s += a + drop[usize::from(out_byte)];
                if s >= m {
                    s -= m;
                }
                if s >= m {
                    s -= m;
                }
                pos += 1;
                if may_match(&self.filter, s << 16 | a) {
                    hit = true;
                    break;
                }
            }
            self.pos = pos;
            self.rolling = Some((a, s));
            if !hit {
                if self.pos - self.lit >= LITERAL_CHUNK {
                    self.flush_literal(self.pos, out);
                } else {
                    // The window reaches the end of what we have: wait for more bytes.
                    break;
                }
            }
        }
        if !self.searching {
            // No more matching: everything buffered is literal.
            self.pos = self.buf.len();
            self.flush_literal(self.pos, out);
            self.rolling = None;
        }
    }

    fn find(&mut self, weak: u32) -> Option<u32> {
        let candidates = self.index.get(&weak)?;
        let window = &self.buf[self.pos..self.pos + self.block];
        self.work += window.len() as u64;
        if self.work > self.budget {
            self.searching = false;
            return None;
        }
        let strong = strong_hash(window);
        // Prefer the block right after the last copy: runs stay merged.
        let next = self.pending.map(|(f, c)| f + c);
        if let Some(n) = next {
            if candidates.contains(&n) && self.sig.blocks[n as usize].strong == strong {
                return Some(n);
            }
        }
        candidates
            .iter()
            .copied()
            .find(|&i| self.sig.blocks[i as usize].strong == strong)
    }

    fn push_copy(&mut self, i: u32, out: &mut Vec<DeltaOp>) {
        match &mut self.pending {
            Some((first, count)) if *first + *count == i => *count += 1,
            _ => {
                if let Some((first, count)) = self.pending.take() {
                    out.push(DeltaOp::Copy { first, count });
                }
                self.pending = Some((i, 1));
            }
        }
    }

    /// Emits `buf[lit..end]` as literal pieces (after any pending copy, to keep order).
    fn flush_literal(&mut self, end: usize, out: &mut Vec<DeltaOp>) {
        if self.lit >= end {
            return;
        }
        if let Some((first, count)) = self.pending.take() {
            out.push(DeltaOp::Copy { first, count });
        }
        for piece in self.buf[self.lit..end].chunks(LITERAL_CHUNK) {
            out.push(DeltaOp::Literal(piece.to_vec()));
        }
        self.lit = end;
    }

    /// Drops bytes already turned into instructions, so the buffer stays around one block
    /// plus one input chunk.
    fn compact(&mut self) {
        if self.lit > 0 && self.lit >= self.buf.len() / 2 {
            self.buf.drain(..self.lit);
            self.pos -= self.lit;
            self.lit = 0;
        }
    }

    /// Ends the stream: the tail may match a short last block; the rest is literal.
    pub fn finish(mut self, out: &mut Vec<DeltaOp>) {
        // The old file's short last block can only match the very end of the new one.
        if let Some(last) = self.sig.blocks.len().checked_sub(1) {
            let last = last as u32;
            let len = self.sig.block_len(last) as usize;
            let tail_len = self.buf.len() - self.pos;
            if self.searching && len < self.block && tail_len >= len {
                let start = self.buf.len() - len;
                let tail = &self.buf[start..];
                let b = &self.sig.blocks[last as usize];
                if weak_hash(tail) == b.weak && strong_hash(tail) == b.strong {
                    self.flush_literal(start, out);
                    self.push_copy(last, out);
                    self.pos = self.buf.len();
                    self.lit = self.pos;
                }
            }
        }
        let end = self.buf.len();
        self.flush_literal(end, out);
        if let Some((first, count)) = self.pending.take() {
            out.push(DeltaOp::Copy { first, count });
        }
    }
}

/// The cheap first test of a window: is its weak sum possibly one of the blocks?
#[inline]
fn may_match(filter: &[u64], weak: u32) -> bool {
    let bit = filter_bit(weak);
    filter[bit / 64] & (1 << (bit % 64)) != 0
}

fn filter_bit(weak: u32) -> usize {
    // Mix both halves: adler32's low half (the plain sum) is poorly spread on its own.
    let x = weak.wrapping_mul(0x9E37_79B1);
    (x >> 12) as usize % FILTER_BITS
}

/// Applies `ops` to `old` (the bytes the signature was made of) in memory: the reference
/// patch, used by tests and small callers. The streaming receiver does the same with file
/// reads and checks each copy with [`Signature::check_copy`].
pub fn apply(old: &[u8], sig: &Signature, ops: &[DeltaOp]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            DeltaOp::Copy { first, count } => {
                let len = sig.check_copy(*first, *count)?;
                let start = sig.block_offset(*first) as usize;
                let end = start + len as usize;
                out.extend_from_slice(
                    old.get(start..end)
                        .ok_or("old file shorter than its signature")?,
                );
            }
            DeltaOp::Literal(bytes) => out.extend_from_slice(bytes),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (xorshift64*), so failures name their case.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            if n == 0 {
                0
            } else {
                self.next() % n
            }
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn signature(old: &[u8], block: u32) -> Signature {
        let mut b = SignatureBuilder::new(block);
        for piece in old.chunks(7919) {
            assert!(b.update(piece));
        }
        b.finish()
    }

    /// Runs the whole pipeline with the new file fed in `piece`-byte pieces.
    fn delta(sig: &Signature, new: &[u8], piece: usize) -> (Vec<DeltaOp>, u64) {
        let mut enc = DeltaEncoder::new(sig.clone(), new.len() as u64);
        let mut ops = Vec::new();
        for p in new.chunks(piece.max(1)) {
            enc.update(p, &mut ops);
        }
        let work = enc.work();
        enc.finish(&mut ops);
        (ops, work)
    }

    fn literal_bytes(ops: &[DeltaOp]) -> usize {
        ops.iter()
            .map(|o| match o {
                DeltaOp::Literal(b) => b.len(),
                DeltaOp::Copy { .. } => 0,
            })
            .sum()
    }

    fn round_trip(old: &[u8], new: &[u8], block: u32, piece: usize) -> Vec<DeltaOp> {
        let sig = signature(old, block);
        sig.validate().unwrap();
        let (ops, _) = delta(&sig, new, piece);
        let rebuilt = apply(old, &sig, &ops).unwrap();
        assert_eq!(rebuilt.len(), new.len());
        assert!(rebuilt == new, "rebuilt file differs");
        ops
    }

    fn edit(rng: &mut Rng, old: &[u8], block: usize) -> Vec<u8> {
        let mut v = old.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(v.len() as u64 + 1) as usize;
            match rng.below(6) {
                0 => {
                    // Overwrite.
                    let n = (rng.below(3 * block as u64) as usize).min(v.len() - at);
                    let fresh = rng.bytes(n);
                    v[at..at + n].copy_from_slice(&fresh);
                }
                1 => {
                    // Insert.
                    let n = rng.below(2 * block as u64 + 1) as usize;
                    let fresh = rng.bytes(n);
                    v.splice(at..at, fresh);
                }
                2 => {
                    // Delete.
                    let n = (rng.below(3 * block as u64) as usize).min(v.len() - at);
                    v.drain(at..at + n);
                }
                3 => {
                    // Append.
                    let n = rng.below(2 * block as u64) as usize;
                    v.extend(rng.bytes(n));
                }
                4 => v.truncate(at),
                _ => {
                    // Shuffle whole blocks.
                    let blocks = v.len() / block;
                    if blocks >= 2 {
                        let a = rng.below(blocks as u64) as usize * block;
                        let b = rng.below(blocks as u64) as usize * block;
                        if a != b {
                            let (lo, hi) = (a.min(b), a.max(b));
                            let (x, y) = v.split_at_mut(hi);
                            x[lo..lo + block].swap_with_slice(&mut y[..block]);
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn random_edits_round_trip() {
        let mut rng = Rng(0x000D_E17A);
        for case in 0..3000u64 {
            let block = [1024u32, 2048, 4096][rng.below(3) as usize];
            // Mostly small files (fast), some up to several MiB.
            let len = if case % 200 == 0 {
                (1 << 20) + rng.below(4 << 20) as usize
            } else {
                rng.below(64 * 1024) as usize
            };
            let old = rng.bytes(len);
            let new = edit(&mut rng, &old, block as usize);
            let piece =
                [1usize, 977, 65536, usize::MAX][rng.below(4) as usize].min(new.len().max(1));
            round_trip(&old, &new, block, piece);
        }
    }

    #[test]
    fn edge_cases_round_trip() {
        let mut rng = Rng(7);
        let b = 1024;
        let a = rng.bytes(10 * b);
        for (old, new) in [
            (vec![], vec![]),
            (vec![], a.clone()),
            (a.clone(), vec![]),
            (a[..100].to_vec(), a[..100].to_vec()),
            (a[..100].to_vec(), a[..200].to_vec()),
            (a[..b].to_vec(), a[..b].to_vec()),
            (a[..b + 1].to_vec(), a[..b + 1].to_vec()),
            (a.clone(), a.clone()),
            (a[..5 * b + 17].to_vec(), a[..5 * b + 17].to_vec()),
            (a.clone(), [&a[..], &a[..]].concat()),
        ] {
            round_trip(&old, &new, b as u32, 333);
        }
    }

    #[test]
    fn an_unchanged_file_is_all_copies_in_one_run() {
        let mut rng = Rng(1);
        let old = rng.bytes(100 * 1024 + 5);
        let ops = round_trip(&old, &old, 4096, 65536);
        assert_eq!(
            ops,
            vec![DeltaOp::Copy {
                first: 0,
                count: 26
            }]
        );
    }

    #[test]
    fn an_insertion_near_the_start_does_not_resend_the_rest() {
        let mut rng = Rng(2);
        let old = rng.bytes(1 << 20);
        let mut new = old.clone();
        new.splice(4096..4096, rng.bytes(100));
        let ops = round_trip(&old, &new, 4096, 65536);
        assert!(
            literal_bytes(&ops) <= 4096 + 100,
            "{} literal bytes",
            literal_bytes(&ops)
        );
    }

    #[test]
    fn an_overwrite_costs_its_blocks_only() {
        let mut rng = Rng(3);
        let old = rng.bytes(4 << 20);
        let mut new = old.clone();
        let at = (2 << 20) + 1234;
        let fresh = rng.bytes(100_000);
        new[at..at + 100_000].copy_from_slice(&fresh);
        let ops = round_trip(&old, &new, 4096, 1 << 16);
        // The changed bytes plus at most one partial block on each side.
        assert!(literal_bytes(&ops) <= 100_000 + 2 * 4096);
    }

    #[test]
    fn degenerate_inputs_stay_within_the_work_budget() {
        let b = 1024usize;
        // All zeros: every block has the same checksums.
        let zeros = vec![0u8; 2 << 20];
        let sig = signature(&zeros, b as u32);
        let mut shifted = vec![1u8];
        shifted.extend_from_slice(&zeros);
        let (ops, work) = delta(&sig, &shifted, 65536);
        assert_eq!(apply(&zeros, &sig, &ops).unwrap(), shifted);
        assert!(work <= 2 * shifted.len() as u64 + 16 * u64::from(MAX_BLOCK));

        // Repeated blocks of a short pattern.
        let pattern: Vec<u8> = (0..b).map(|i| (i % 7) as u8).collect();
        let rep: Vec<u8> = pattern.iter().cycle().take(1 << 20).copied().collect();
        round_trip(&rep, &rep[3..], b as u32, 4096);

        // Weak-sum collisions, forged: every block of a peer's signature claims the weak sum
        // of the new file's windows, so every offset is a candidate and fails its strong
        // check.
        let mut rng = Rng(9);
        let old = rng.bytes(1 << 20);
        let mut sig = signature(&old, b as u32);
        let forged = weak_hash(&[0u8; 1024]);
        for blk in &mut sig.blocks {
            blk.weak = forged;
        }
        let new = vec![0u8; 4 << 20];
        let (ops, work) = delta(&sig, &new, 65536);
        assert_eq!(apply(&old, &sig, &ops).unwrap(), new);
        let budget = 2 * new.len() as u64 + 16 * u64::from(MAX_BLOCK);
        assert!(
            work <= budget + b as u64,
            "work {work} over budget {budget}"
        );
    }

    #[test]
    fn rolling_checksum_matches_a_fresh_one_for_big_windows() {
        // adler32's `remove` needs the window size reduced modulo 65521: windows of 64 KiB
        // and 1 MiB are larger than that.
        let mut rng = Rng(5);
        for w in [1024usize, 65_536, 1 << 20] {
            let data = rng.bytes(w + 300);
            let mut r = RollingAdler32::from_buffer(&data[..w]);
            for i in 0..300 {
                r.remove(w % ADLER_MOD, data[i]);
                r.update(data[i + w]);
                assert_eq!(
                    r.hash(),
                    weak_hash(&data[i + 1..i + 1 + w]),
                    "window {w}, step {i}"
                );
            }
        }
    }

    #[test]
    fn signatures_and_copies_from_peers_are_checked() {
        let ok = Signature {
            block_size: 1024,
            file_size: 2049,
            blocks: vec![
                BlockSig {
                    weak: 0,
                    strong: [0; 8]
                };
                3
            ],
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.block_len(2), 1);
        assert_eq!(ok.check_copy(1, 2), Ok(1025));
        assert!(ok.check_copy(2, 2).is_err());
        assert!(ok.check_copy(0, 0).is_err());
        assert!(ok.check_copy(u32::MAX, 2).is_err());
        let zero = Signature {
            block_size: 0,
            ..ok.clone()
        };
        assert!(zero.validate().is_err());
        let wrong_count = Signature {
            file_size: 5000,
            ..ok.clone()
        };
        assert!(wrong_count.validate().is_err());
        assert_eq!(Signature::empty().validate(), Ok(()));
    }

    #[test]
    fn block_sizes_scale_with_the_file() {
        assert_eq!(block_size_for(0), MIN_BLOCK);
        assert_eq!(block_size_for(64 << 20), 32 * 1024);
        assert_eq!(block_size_for(256 << 20), 64 * 1024);
        assert_eq!(block_size_for(1 << 30), 128 * 1024);
        for len in [1u64, 1 << 20, 1 << 36, 1 << 40] {
            let b = block_size_for(len);
            assert!((MIN_BLOCK..=MAX_BLOCK).contains(&b));
            assert!(len.div_ceil(u64::from(b)) <= MAX_BLOCKS as u64 || b == MAX_BLOCK);
        }
    }
}
