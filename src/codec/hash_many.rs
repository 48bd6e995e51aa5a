//! BLAKE3 keyed hashes of many short inputs of one length at once.
//!
//! The commitments hash every symbol of a segment's expanded matrix, and at
//! n = 1000 a symbol is about 300 bytes. The `blake3` crate hashes such an
//! input one compression at a time; its SIMD runs across the 1 KiB chunks of
//! one long input, and the many-input entry point it uses for that is not
//! public. This module runs the BLAKE3 compression function across 8 (AVX2)
//! or 16 (AVX-512) independent inputs in the lanes of vector registers. The
//! output is exactly `blake3::keyed_hash` of each input (tests check it
//! against the crate); inputs longer than one chunk, machines without AVX2
//! and the few inputs left over after the last full group of lanes go
//! through the crate.

use crate::codec::merkle::Hash;

/// BLAKE3's initialisation vector (the SHA-256 one).
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];
const BLOCK_LEN: usize = 64;
const CHUNK_LEN: usize = 1024;
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const ROOT: u32 = 8;
const KEYED_HASH: u32 = 16;

/// The message word order of each of the seven rounds: round r reads the
/// block's words permuted r times by BLAKE3's fixed permutation.
const SCHEDULE: [[usize; 16]; 7] = schedule();

const fn schedule() -> [[usize; 16]; 7] {
    const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
    let mut rounds = [[0usize; 16]; 7];
    let mut i = 0;
    while i < 16 {
        rounds[0][i] = i;
        i += 1;
    }
    let mut r = 1;
    while r < 7 {
        let mut i = 0;
        while i < 16 {
            rounds[r][i] = rounds[r - 1][PERMUTATION[i]];
            i += 1;
        }
        r += 1;
    }
    rounds
}

/// Writes into `out[i]` the BLAKE3 keyed hash (`blake3::keyed_hash(key, ..)`)
/// of the `i`-th `len`-byte piece of `data`.
///
/// # Panics
///
/// When `data` is not `out.len()` pieces of `len` bytes.
pub fn keyed_hash_each(key: &[u8; 32], data: &[u8], len: usize, out: &mut [Hash]) {
    assert_eq!(
        data.len(),
        out.len() * len,
        "{} bytes are not {} pieces of {len} bytes",
        data.len(),
        out.len()
    );
    if len == 0 {
        out.fill(*blake3::keyed_hash(key, &[]).as_bytes());
        return;
    }
    let done = lanes::hash_groups(key, data, len, out);
    for (hash, piece) in out[done..]
        .iter_mut()
        .zip(data[done * len..].chunks_exact(len))
    {
        *hash = *blake3::keyed_hash(key, piece).as_bytes();
    }
}

/// The flags of block `b` of `blocks` in a keyed, single-chunk hash.
fn block_flags(b: usize, blocks: usize) -> u32 {
    let mut flags = KEYED_HASH;
    if b == 0 {
        flags |= CHUNK_START;
    }
    if b + 1 == blocks {
        flags |= CHUNK_END | ROOT;
    }
    flags
}

/// The key as the eight little-endian words of the first chaining value.
fn key_words(key: &[u8; 32]) -> [u32; 8] {
    let mut words = [0u32; 8];
    for (word, bytes) in words.iter_mut().zip(key.chunks_exact(4)) {
        *word = u32::from_le_bytes(bytes.try_into().expect("four bytes"));
    }
    words
}

/// Block `b` of each of the `L` equal-length pieces, as 64-byte slices:
/// straight from the pieces when the block is whole, else copied into
/// `padding` zero-filled. Returns the block's length.
fn block_rows<'a, const L: usize>(
    pieces: &[&'a [u8]; L],
    b: usize,
    padding: &'a mut [[u8; BLOCK_LEN]; L],
) -> ([&'a [u8]; L], u32) {
    let start = b * BLOCK_LEN;
    let block_len = (pieces[0].len() - start).min(BLOCK_LEN);
    if block_len == BLOCK_LEN {
        (
            core::array::from_fn(|l| &pieces[l][start..start + BLOCK_LEN]),
            BLOCK_LEN as u32,
        )
    } else {
        for (pad, piece) in padding.iter_mut().zip(pieces) {
            pad.fill(0);
            pad[..block_len].copy_from_slice(&piece[start..]);
        }
        (core::array::from_fn(|l| &padding[l][..]), block_len as u32)
    }
}

/// Writes the `L` chaining values `cv[w][l]` out as hashes.
fn scatter_hashes<const L: usize>(cv: &[[u32; L]; 8], out: &mut [Hash]) {
    for (l, hash) in out.iter_mut().enumerate().take(L) {
        for (w, bytes) in hash.chunks_exact_mut(4).enumerate() {
            bytes.copy_from_slice(&cv[w][l].to_le_bytes());
        }
    }
}

/// The lane-parallel hash, written once for every instruction set in terms
/// of the module's own `add`, `xor`, `splat`, `ror16/12/8/7`, `store` and
/// `load_block` (which loads one 64-byte row per lane and transposes them,
/// so vector `w` holds word `w` of every lane's block).
#[cfg(target_arch = "x86_64")]
macro_rules! hash_lanes {
    ($V:ty, $L:expr, $feature:literal) => {
        /// Compresses one block per lane into the lanes' chaining values.
        #[inline]
        #[target_feature(enable = $feature)]
        fn compress(h: &mut [$V; 8], m: &[$V; 16], block_len: u32, flags: u32) {
            let mut v: [$V; 16] = [
                h[0],
                h[1],
                h[2],
                h[3],
                h[4],
                h[5],
                h[6],
                h[7],
                splat(super::IV[0]),
                splat(super::IV[1]),
                splat(super::IV[2]),
                splat(super::IV[3]),
                splat(0),
                splat(0),
                splat(block_len),
                splat(flags),
            ];
            macro_rules! g {
                ($a:expr, $b:expr, $c:expr, $d:expr, $x:expr, $y:expr) => {
                    v[$a] = add(add(v[$a], v[$b]), $x);
                    v[$d] = ror16(xor(v[$d], v[$a]));
                    v[$c] = add(v[$c], v[$d]);
                    v[$b] = ror12(xor(v[$b], v[$c]));
                    v[$a] = add(add(v[$a], v[$b]), $y);
                    v[$d] = ror8(xor(v[$d], v[$a]));
                    v[$c] = add(v[$c], v[$d]);
                    v[$b] = ror7(xor(v[$b], v[$c]));
                };
            }
            macro_rules! round {
                ($r:expr) => {
                    let s = &super::SCHEDULE[$r];
                    g!(0, 4, 8, 12, m[s[0]], m[s[1]]);
                    g!(1, 5, 9, 13, m[s[2]], m[s[3]]);
                    g!(2, 6, 10, 14, m[s[4]], m[s[5]]);
                    g!(3, 7, 11, 15, m[s[6]], m[s[7]]);
                    g!(0, 5, 10, 15, m[s[8]], m[s[9]]);
                    g!(1, 6, 11, 12, m[s[10]], m[s[11]]);
                    g!(2, 7, 8, 13, m[s[12]], m[s[13]]);
                    g!(3, 4, 9, 14, m[s[14]], m[s[15]]);
                };
            }
            round!(0);
            round!(1);
            round!(2);
            round!(3);
            round!(4);
            round!(5);
            round!(6);
            for w in 0..8 {
                h[w] = xor(v[w], v[w + 8]);
            }
        }

        /// Hashes the `L` equal-length pieces (one chunk at most).
        #[inline]
        #[target_feature(enable = $feature)]
        fn hash_lanes(key: &[u32; 8], pieces: &[&[u8]; $L], out: &mut [super::Hash]) {
            let blocks = pieces[0].len().div_ceil(super::BLOCK_LEN).max(1);
            let mut h: [$V; 8] = [splat(0); 8];
            for w in 0..8 {
                h[w] = splat(key[w]);
            }
            let mut padding = [[0u8; super::BLOCK_LEN]; $L];
            for b in 0..blocks {
                let (rows, block_len) = super::block_rows(pieces, b, &mut padding);
                let m = load_block(&rows);
                compress(&mut h, &m, block_len, super::block_flags(b, blocks));
            }
            let mut cv = [[0u32; $L]; 8];
            for w in 0..8 {
                store(&mut cv[w], h[w]);
            }
            super::scatter_hashes(&cv, out);
        }

        /// Hashes every whole group of lanes; returns how many pieces that was.
        #[target_feature(enable = $feature)]
        pub(super) fn hash_groups(
            key: &[u8; 32],
            data: &[u8],
            len: usize,
            out: &mut [super::Hash],
        ) -> usize {
            let key = super::key_words(key);
            let groups = out.len() / $L;
            for (g, hashes) in out.chunks_exact_mut($L).enumerate() {
                let base = g * $L * len;
                let pieces: [&[u8]; $L] =
                    core::array::from_fn(|l| &data[base + l * len..base + (l + 1) * len]);
                hash_lanes(&key, &pieces, hashes);
            }
            groups * $L
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn xor(a: __m256i, b: __m256i) -> __m256i {
        _mm256_xor_si256(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat(x: u32) -> __m256i {
        _mm256_set1_epi32(x as i32)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn ror16(x: __m256i) -> __m256i {
        let mask = _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11,
            8, 9, 14, 15, 12, 13,
        );
        _mm256_shuffle_epi8(x, mask)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn ror12(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<12>(x), _mm256_slli_epi32::<20>(x))
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn ror8(x: __m256i) -> __m256i {
        let mask = _mm256_setr_epi8(
            1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9, 10,
            11, 8, 13, 14, 15, 12,
        );
        _mm256_shuffle_epi8(x, mask)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn ror7(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<7>(x), _mm256_slli_epi32::<25>(x))
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(words: &mut [u32; 8], x: __m256i) {
        // SAFETY: writes exactly the 32 bytes of `words`.
        unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), x) }
    }

    /// Loads 32 bytes at `offset` of each of 8 rows and transposes them:
    /// vector `w` holds word `w` (of those 8) of every row.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_transposed(rows: &[&[u8]; 8], offset: usize) -> [__m256i; 8] {
        let a: [__m256i; 8] = core::array::from_fn(|l| {
            let bytes = &rows[l][offset..offset + 32];
            // SAFETY: `bytes` is 32 bytes long; unaligned loads allowed.
            unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
        });
        // Rows (r, r+1) interleaved by words, then by pairs of words: in
        // each 128-bit half k, u[4j + e] holds word 4k + e of rows 4j..4j+3.
        let mut t = [_mm256_setzero_si256(); 8];
        for i in (0..8).step_by(2) {
            t[i] = _mm256_unpacklo_epi32(a[i], a[i + 1]);
            t[i + 1] = _mm256_unpackhi_epi32(a[i], a[i + 1]);
        }
        let mut u = [_mm256_setzero_si256(); 8];
        for j in [0, 4] {
            u[j] = _mm256_unpacklo_epi64(t[j], t[j + 2]);
            u[j + 1] = _mm256_unpackhi_epi64(t[j], t[j + 2]);
            u[j + 2] = _mm256_unpacklo_epi64(t[j + 1], t[j + 3]);
            u[j + 3] = _mm256_unpackhi_epi64(t[j + 1], t[j + 3]);
        }
        let mut m = [_mm256_setzero_si256(); 8];
        for e in 0..4 {
            m[e] = _mm256_permute2x128_si256::<0x20>(u[e], u[4 + e]);
            m[4 + e] = _mm256_permute2x128_si256::<0x31>(u[e], u[4 + e]);
        }
        m
    }

    /// Word `w` of every lane's 64-byte block in vector `w`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_block(rows: &[&[u8]; 8]) -> [__m256i; 16] {
        let low = load_transposed(rows, 0);
        let high = load_transposed(rows, 32);
        core::array::from_fn(|w| if w < 8 { low[w] } else { high[w - 8] })
    }

    hash_lanes!(__m256i, 8, "avx2");
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn xor(a: __m512i, b: __m512i) -> __m512i {
        _mm512_xor_si512(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn splat(x: u32) -> __m512i {
        _mm512_set1_epi32(x as i32)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ror16(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<16>(x)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ror12(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<12>(x)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ror8(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<8>(x)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ror7(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<7>(x)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(words: &mut [u32; 16], x: __m512i) {
        // SAFETY: writes exactly the 64 bytes of `words`.
        unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), x) }
    }

    /// Loads each of 16 lanes' 64-byte block and transposes them: vector
    /// `w` holds word `w` of every lane's block.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_block(rows: &[&[u8]; 16]) -> [__m512i; 16] {
        let a: [__m512i; 16] = core::array::from_fn(|l| {
            let bytes = &rows[l][..64];
            // SAFETY: `bytes` is 64 bytes long; unaligned loads allowed.
            unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
        });
        // Within each 128-bit quarter k, after two interleavings u[4j + e]
        // holds word 4k + e of rows 4j..4j+3.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in (0..16).step_by(2) {
            t[i] = _mm512_unpacklo_epi32(a[i], a[i + 1]);
            t[i + 1] = _mm512_unpackhi_epi32(a[i], a[i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for j in [0, 4, 8, 12] {
            u[j] = _mm512_unpacklo_epi64(t[j], t[j + 2]);
            u[j + 1] = _mm512_unpackhi_epi64(t[j], t[j + 2]);
            u[j + 2] = _mm512_unpacklo_epi64(t[j + 1], t[j + 3]);
            u[j + 3] = _mm512_unpackhi_epi64(t[j + 1], t[j + 3]);
        }
        // A 4x4 transpose of 128-bit quarters across u[e], u[4+e], u[8+e],
        // u[12+e] gives words e, 4+e, 8+e and 12+e of all 16 rows.
        let mut m = [_mm512_setzero_si512(); 16];
        for e in 0..4 {
            let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
            let ab_low = _mm512_shuffle_i32x4::<0x44>(a, b);
            let ab_high = _mm512_shuffle_i32x4::<0xEE>(a, b);
            let cd_low = _mm512_shuffle_i32x4::<0x44>(c, d);
            let cd_high = _mm512_shuffle_i32x4::<0xEE>(c, d);
            m[e] = _mm512_shuffle_i32x4::<0x88>(ab_low, cd_low);
            m[4 + e] = _mm512_shuffle_i32x4::<0xDD>(ab_low, cd_low);
            m[8 + e] = _mm512_shuffle_i32x4::<0x88>(ab_high, cd_high);
            m[12 + e] = _mm512_shuffle_i32x4::<0xDD>(ab_high, cd_high);
        }
        m
    }

    hash_lanes!(__m512i, 16, "avx512f");
}

/// Picks the widest lanes this CPU has.
mod lanes {
    use super::{Hash, CHUNK_LEN};

    /// Hashes as many whole groups of lanes as the CPU allows; returns how
    /// many pieces that was (0 without SIMD, for empty or multi-chunk pieces).
    pub(super) fn hash_groups(key: &[u8; 32], data: &[u8], len: usize, out: &mut [Hash]) -> usize {
        if len > CHUNK_LEN || forced_scalar() {
            return 0;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present.
                return unsafe { super::avx512::hash_groups(key, data, len, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present.
                return unsafe { super::avx2::hash_groups(key, data, len, out) };
            }
        }
        let _ = (key, data, out);
        0
    }

    /// `REDSTUFF_HASH_LANES=1` hashes one input at a time (for comparing).
    fn forced_scalar() -> bool {
        static SCALAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SCALAR.get_or_init(|| std::env::var("REDSTUFF_HASH_LANES").is_ok_and(|v| v == "1"))
    }
}

/// Hashes with the 8 AVX2 lanes even where AVX-512 is present: for tests.
#[cfg(all(test, target_arch = "x86_64"))]
fn keyed_hash_each_avx2(key: &[u8; 32], data: &[u8], len: usize, out: &mut [Hash]) -> usize {
    if !std::arch::is_x86_feature_detected!("avx2") || len == 0 || len > CHUNK_LEN {
        return 0;
    }
    // SAFETY: AVX2 is present.
    unsafe { avx2::hash_groups(key, data, len, out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(count: usize, len: usize, seed: u8) -> Vec<u8> {
        (0..count * len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    fn expected(key: &[u8; 32], data: &[u8], len: usize, count: usize) -> Vec<Hash> {
        (0..count)
            .map(|i| *blake3::keyed_hash(key, &data[i * len..(i + 1) * len]).as_bytes())
            .collect()
    }

    #[test]
    fn the_round_schedule_is_blake3s() {
        assert_eq!(
            SCHEDULE[1],
            [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
        );
        assert_eq!(
            SCHEDULE[6],
            [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13]
        );
    }

    #[test]
    fn every_hash_equals_the_blake3_crates_keyed_hash_for_every_length_up_to_two_chunks() {
        let key = *b"a key of exactly thirty-two byte";
        for len in (0..=70).chain([127, 128, 129, 302, 640, 1000, 1023, 1024, 1025, 2048]) {
            for count in [0, 1, 7, 8, 15, 16, 17, 33, 40] {
                let data = pieces(count, len, len as u8);
                let mut out = vec![[0u8; 32]; count];
                keyed_hash_each(&key, &data, len, &mut out);
                assert_eq!(
                    out,
                    expected(&key, &data, len, count),
                    "len {len}, count {count}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_eight_lane_path_equals_the_blake3_crate_too() {
        let key = [9u8; 32];
        for len in [1, 63, 64, 65, 302, 1024] {
            let data = pieces(24, len, 3);
            let mut out = vec![[0u8; 32]; 24];
            let done = keyed_hash_each_avx2(&key, &data, len, &mut out);
            if done == 0 {
                return; // no AVX2 on this machine: the crate hashes everything
            }
            assert_eq!(done, 24);
            assert_eq!(out, expected(&key, &data, len, 24), "len {len}");
        }
    }

    #[test]
    fn a_changed_byte_changes_only_its_own_hash() {
        let key = [1u8; 32];
        let len = 302;
        let mut data = pieces(32, len, 0);
        let mut before = vec![[0u8; 32]; 32];
        keyed_hash_each(&key, &data, len, &mut before);
        data[5 * len + 301] ^= 0x80;
        let mut after = vec![[0u8; 32]; 32];
        keyed_hash_each(&key, &data, len, &mut after);
        for i in 0..32 {
            assert_eq!(before[i] == after[i], i != 5, "piece {i}");
        }
    }
}
