//! Reed-Solomon over symbols, in cache-sized byte stripes.
//!
//! reed-solomon-simd maps shard bytes to GF(2^16) elements in 64-byte
//! chunks, so cutting every symbol at the same multiples of 64 bytes and
//! coding each stripe on its own gives exactly the bytes of coding whole
//! symbols (a test below holds us to that), while the working set of one
//! call stays in cache: the crate is 5 to 20 times faster on KiB shards
//! than on MiB shards.
//!
//! The parameters reaching this module come from a validated
//! [`EncodingConfig`](crate::codec::EncodingConfig), so the library cannot
//! refuse them; a refusal is a bug and panics with its reason.

use std::cell::RefCell;
use std::ops::Range;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Bytes of all shards of one Reed-Solomon call that fit the caches well.
const STRIPE_WORKING_SET: usize = 1 << 20;

thread_local! {
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
}

/// The byte ranges in which symbols of `symbol_size` bytes are coded when a
/// call involves `shards` shards in all. All but the last are multiples of 64.
pub fn stripes(symbol_size: usize, shards: usize) -> impl Iterator<Item = Range<usize>> {
    let width = ((STRIPE_WORKING_SET / shards.max(1)) & !63).max(64);
    // A short tail stripe costs a whole call; fold it into one stripe when small.
    let width = if symbol_size <= width + width / 2 {
        symbol_size.max(1)
    } else {
        width
    };
    (0..symbol_size)
        .step_by(width)
        .map(move |start| start..(start + width).min(symbol_size))
}

/// Computes the `recovery_count` recovery symbols of the systematic code
/// with `originals.len()` source symbols, writing them one after the other
/// into `out` (`recovery_count * symbol_size` bytes).
pub fn encode_recovery(originals: &[&[u8]], recovery_count: usize, out: &mut [u8]) {
    let s = originals[0].len();
    assert_eq!(out.len(), recovery_count * s, "recovery buffer size");
    let mut outs: Vec<&mut [u8]> = out.chunks_exact_mut(s).collect();
    encode_recovery_into(originals, &mut outs);
}

/// Computes the recovery symbols of the systematic code with
/// `originals.len()` source symbols and `outs.len()` recovery symbols,
/// writing recovery symbol t into `outs[t]` (each of the symbol size).
pub fn encode_recovery_into(originals: &[&[u8]], outs: &mut [&mut [u8]]) {
    let k = originals.len();
    let recovery_count = outs.len();
    let s = originals[0].len();
    debug_assert!(originals.iter().all(|o| o.len() == s));
    assert!(outs.iter().all(|o| o.len() == s), "recovery symbol size");
    ENCODER.with_borrow_mut(|slot| {
        for stripe in stripes(s, k + recovery_count) {
            let width = stripe.len();
            let encoder = match slot {
                Some(encoder) => {
                    encoder
                        .reset(k, recovery_count, width)
                        .expect("validated Reed-Solomon parameters");
                    encoder
                }
                None => slot.insert(
                    ReedSolomonEncoder::new(k, recovery_count, width)
                        .expect("validated Reed-Solomon parameters"),
                ),
            };
            for original in originals {
                encoder
                    .add_original_shard(&original[stripe.clone()])
                    .expect("shard of the declared size");
            }
            let result = encoder.encode().expect("all original shards added");
            for (out, recovery) in outs.iter_mut().zip(result.recovery_iter()) {
                out[stripe.clone()].copy_from_slice(recovery);
            }
        }
    });
}

/// Rebuilds all `original_count` source symbols of a systematic code with
/// `recovery_count` recovery symbols from exactly `original_count` present
/// codeword symbols, given as (position, bytes) with position <
/// `original_count + recovery_count`. Writes the sources one after the other
/// into `out` (`original_count * symbol_size` bytes).
pub fn reconstruct_originals(
    original_count: usize,
    recovery_count: usize,
    present: &[(usize, &[u8])],
    out: &mut [u8],
) {
    let k = original_count;
    assert_eq!(present.len(), k, "exactly k present symbols");
    let s = present[0].1.len();
    assert_eq!(out.len(), k * s, "output buffer size");
    let mut missing = false;
    for (position, symbol) in present {
        if *position < k {
            out[position * s..(position + 1) * s].copy_from_slice(symbol);
        } else {
            missing = true;
        }
    }
    if !missing {
        return;
    }
    DECODER.with_borrow_mut(|slot| {
        // Each decode call solves for the erasure locator first: wider stripes
        // than encoding's amortise it (measured best at 4x).
        for stripe in stripes(s, (k + recovery_count).div_ceil(4)) {
            let width = stripe.len();
            let decoder = match slot {
                Some(decoder) => {
                    decoder
                        .reset(k, recovery_count, width)
                        .expect("validated Reed-Solomon parameters");
                    decoder
                }
                None => slot.insert(
                    ReedSolomonDecoder::new(k, recovery_count, width)
                        .expect("validated Reed-Solomon parameters"),
                ),
            };
            for (position, symbol) in present {
                let part = &symbol[stripe.clone()];
                if *position < k {
                    decoder.add_original_shard(*position, part)
                } else {
                    decoder.add_recovery_shard(*position - k, part)
                }
                .expect("distinct positions inside the code");
            }
            let result = decoder.decode().expect("enough shards for the code");
            for (index, restored) in result.restored_original_iter() {
                out[index * s + stripe.start..index * s + stripe.end].copy_from_slice(restored);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(count: usize, size: usize, seed: u8) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                (0..size)
                    .map(|j| (i * 131 + j * 7 + seed as usize) as u8)
                    .collect()
            })
            .collect()
    }

    fn whole_symbol_encode(originals: &[Vec<u8>], recovery: usize) -> Vec<Vec<u8>> {
        let s = originals[0].len();
        let mut encoder = ReedSolomonEncoder::new(originals.len(), recovery, s).unwrap();
        for o in originals {
            encoder.add_original_shard(o).unwrap();
        }
        let result = encoder.encode().unwrap();
        result.recovery_iter().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn stripes_cover_the_symbol_in_multiples_of_64() {
        for (size, shards) in [
            (2, 7),
            (64, 7),
            (100, 7),
            (4_000_000, 7),
            (302, 1000),
            (29_462, 100),
        ] {
            let all: Vec<_> = stripes(size, shards).collect();
            assert_eq!(all.first().unwrap().start, 0);
            assert_eq!(all.last().unwrap().end, size);
            for pair in all.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[0].len() % 64, 0);
            }
        }
    }

    #[test]
    fn striped_coding_equals_whole_symbol_coding() {
        // Sizes around the 64-byte chunk and the stripe width, odd tails included.
        for (k, m, size) in [
            (3, 4, 2),
            (3, 4, 66),
            (3, 4, 130_000),
            (5, 2, 262_146),
            (34, 66, 40_002),
        ] {
            let originals = symbols(k, size, 1);
            let refs: Vec<&[u8]> = originals.iter().map(Vec::as_slice).collect();
            let mut out = vec![0u8; m * size];
            encode_recovery(&refs, m, &mut out);
            let expected = whole_symbol_encode(&originals, m);
            for (t, want) in expected.iter().enumerate() {
                assert!(
                    out[t * size..(t + 1) * size] == want[..],
                    "k={k} m={m} size={size} t={t}"
                );
            }
        }
    }

    #[test]
    fn any_k_of_the_codeword_rebuild_the_originals() {
        let (k, m, size) = (3, 4, 70_000);
        let originals = symbols(k, size, 9);
        let refs: Vec<&[u8]> = originals.iter().map(Vec::as_slice).collect();
        let mut recovery = vec![0u8; m * size];
        encode_recovery(&refs, m, &mut recovery);
        let codeword: Vec<&[u8]> = refs.iter().copied().chain(recovery.chunks(size)).collect();
        let want: Vec<u8> = originals.concat();
        for choice in [[0, 1, 2], [4, 5, 6], [0, 3, 6], [2, 5, 1]] {
            let present: Vec<(usize, &[u8])> = choice.iter().map(|&i| (i, codeword[i])).collect();
            let mut out = vec![0u8; k * size];
            reconstruct_originals(k, m, &present, &mut out);
            assert!(out == want, "choice {choice:?}");
        }
    }
}
