//! Properties of the Red Stuff codec over random shard counts, blob sizes
//! and loss patterns: what decodes, what rebuilds, what is detected.

use std::collections::HashMap;
use std::sync::Mutex;

use proptest::prelude::*;
use redstuff::codec::{
    decode_blob, decode_segment, decode_segment_with, rebuild, row_span, sliver_hash, verified_row,
    verify_sliver, Axis, BlobEncoder, BlobId, BlobMetadata, DecodeError, EncodedSegment,
    EncodingConfig, Primary, RebuildError, RecoverySymbol, Secondary, SegmentHashes, Sliver,
    SymbolSource, Verification, DEFAULT_SEGMENT_SIZE,
};

/// A blob, its shard count and its segment size.
#[derive(Debug, Clone)]
struct Case {
    n: u16,
    segment_size: u64,
    data: Vec<u8>,
}

fn blob_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1usize),
        1usize..100,
        (0usize..150).prop_map(|k| 2 * k + 1),
        1000usize..20_000,
        20_000usize..300_000,
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        4u16..=64,
        prop_oneof![Just(DEFAULT_SEGMENT_SIZE), 1024u64..=65_536],
        blob_len(),
        any::<u64>(),
    )
        .prop_map(|(n, segment_size, len, seed)| Case {
            n,
            segment_size,
            data: pseudo_random(len, seed),
        })
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn encode(case: &Case) -> (BlobMetadata, Vec<EncodedSegment>) {
    let config = EncodingConfig::new(case.n).unwrap();
    BlobEncoder::new(config, case.segment_size)
        .unwrap()
        .encode(&case.data)
        .unwrap()
}

/// A deterministic choice of `count` distinct indices below `n`, from `seed`.
fn choose(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed | 1;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order.truncate(count);
    order
}

fn pick<A: Axis>(slivers: &[Sliver<A>], indices: &[usize]) -> Vec<Sliver<A>> {
    indices.iter().map(|&i| slivers[i].clone()).collect()
}

/// Recovery symbols for `target` from the given source slivers.
fn symbols_for<A: Axis>(sources: &[&Sliver<A>], target: u16) -> Vec<RecoverySymbol<A>> {
    sources
        .iter()
        .map(|s| SymbolSource::new(s).symbol(target).unwrap())
        .collect()
}

static SEEN_IDS: Mutex<Option<HashMap<BlobId, Vec<u8>>>> = Mutex::new(None);

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_p_primary_or_any_q_secondary_slivers_decode_the_exact_bytes(case in case(), seed in any::<u64>()) {
        let (metadata, segments) = encode(&case);
        let config = metadata.config();
        let (n, p, q) = (config.n(), config.p(), config.q());
        let by_primary = segments.iter().enumerate()
            .map(|(i, s)| pick(&s.primary, &choose(n, p, seed ^ i as u64)))
            .collect();
        prop_assert_eq!(decode_blob::<Primary>(&metadata, by_primary).unwrap(), case.data.clone());
        let by_secondary = segments.iter().enumerate()
            .map(|(i, s)| pick(&s.secondary, &choose(n, q, seed.rotate_left(7) ^ i as u64)))
            .collect();
        prop_assert_eq!(decode_blob::<Secondary>(&metadata, by_secondary).unwrap(), case.data.clone());
    }

    #[test]
    fn an_inconsistently_encoded_blob_never_yields_two_different_successful_reads(
        case in case(), seed in any::<u64>(), liar in any::<usize>(), bit in any::<usize>(), secondary in any::<bool>(),
    ) {
        // A writer replaces one sliver of segment 0 by other bytes and
        // commits to them: every sliver passes its own check, but they do
        // not form one codeword.
        let (metadata, mut segments) = encode(&case);
        let config = metadata.config();
        let (n, p, q) = (config.n(), config.p(), config.q());
        let liar = liar % n;
        let segment = &mut segments[0];
        let mut primary = segment.hashes.primary_hashes().to_vec();
        let mut secondary_hashes = segment.hashes.secondary_hashes().to_vec();
        if secondary {
            segment.secondary[liar].flip_bit(bit);
            secondary_hashes[liar] = sliver_hash(&segment.secondary[liar]);
        } else {
            segment.primary[liar].flip_bit(bit);
            primary[liar] = sliver_hash(&segment.primary[liar]);
        }
        let mut hashes: Vec<SegmentHashes> = metadata.segments().to_vec();
        hashes[0] = SegmentHashes::new(primary, secondary_hashes);
        let metadata = BlobMetadata::new(*metadata.layout(), hashes).unwrap();
        let segment = &segments[0];
        // Reads from many sets of either axis: whatever succeeds agrees.
        let mut reads = Vec::new();
        for attempt in 0..6u64 {
            let by_primary = pick(&segment.primary, &choose(n, p, seed ^ attempt));
            reads.push(decode_segment(&metadata, 0, by_primary));
            let by_secondary = pick(&segment.secondary, &choose(n, q, seed.rotate_left(9) ^ attempt));
            reads.push(decode_segment(&metadata, 0, by_secondary));
        }
        reads.push(decode_segment(&metadata, 0, segment.primary[..p].to_vec()));
        let successes: Vec<Vec<u8>> = reads.into_iter().filter_map(|r| r.ok()).map(|d| d.data.to_vec()).collect();
        for other in &successes {
            prop_assert_eq!(other, &successes[0]);
        }
        // A row read on its own (a range read) is, when it proves itself,
        // the same bytes as that part of every successful read.
        let layout = metadata.segment_layout(0).unwrap();
        for sliver in &segment.primary[..p] {
            if let Ok(row) = verified_row(&metadata, 0, sliver) {
                for other in &successes {
                    prop_assert_eq!(&row[..], &other[row_span(&layout, sliver.index())]);
                }
            }
        }
        // A strict read re-derives the whole encoding and refuses the blob
        // whenever the odd sliver is not a line of the codeword.
        let strict = decode_segment_with(&metadata, 0, segment.primary[..p].to_vec(), Verification::Strict);
        let honest = encode(&case).1.remove(0);
        let changed = if secondary {
            honest.secondary[liar].data() != segment.secondary[liar].data()
        } else {
            honest.primary[liar].data() != segment.primary[liar].data()
        };
        prop_assert_eq!(strict.is_err(), changed);
    }

    #[test]
    fn fewer_than_the_threshold_of_slivers_is_an_error_not_wrong_bytes(case in case(), seed in any::<u64>()) {
        let (metadata, segments) = encode(&case);
        let config = metadata.config();
        let few = pick(&segments[0].primary, &choose(config.n(), config.p() - 1, seed));
        let err = decode_segment(&metadata, 0, few).unwrap_err();
        let expected = DecodeError::NotEnoughSlivers { kind: "primary", valid: config.p() - 1, needed: config.p(), invalid: vec![] };
        prop_assert_eq!(err, expected);
    }

    #[test]
    fn every_loss_of_up_to_f_pairs_is_rebuilt_exactly(case in case(), seed in any::<u64>(), lost_count in 0usize..=21) {
        let (metadata, segments) = encode(&case);
        let config = metadata.config();
        let n = config.n();
        let lost = choose(n, lost_count.min(config.f()), seed);
        for segment in &segments {
            let alive: Vec<usize> = (0..n).filter(|i| !lost.contains(i)).collect();
            for &i in &lost {
                // Peers answer in a random order; only survivors answer.
                let order = choose(alive.len(), alive.len(), seed ^ i as u64);
                let primaries: Vec<&Sliver<Primary>> = order.iter().map(|&k| &segment.primary[alive[k]]).collect();
                let secondaries: Vec<&Sliver<Secondary>> = order.iter().map(|&k| &segment.secondary[alive[k]]).collect();
                let target = i as u16;
                let secondary = rebuild::<Secondary>(&metadata, segment.index, target, symbols_for(&primaries, target)).unwrap();
                prop_assert!(secondary.sliver == segment.secondary[i]);
                prop_assert!(secondary.invalid_sources.is_empty());
                let primary = rebuild::<Primary>(&metadata, segment.index, target, symbols_for(&secondaries, target)).unwrap();
                prop_assert!(primary.sliver == segment.primary[i]);
            }
        }
    }

    #[test]
    fn a_flipped_bit_in_a_sliver_is_detected_and_decoding_goes_on_without_it(case in case(), seed in any::<u64>(), bit in any::<usize>()) {
        let (metadata, segments) = encode(&case);
        let config = metadata.config();
        let segment = &segments[segments.len() - 1];
        let victim = choose(config.n(), 1, seed)[0];

        let mut bad = segment.primary[victim].clone();
        bad.flip_bit(bit);
        prop_assert!(verify_sliver(&metadata, &bad).is_err());
        prop_assert!(verify_sliver(&metadata, &segment.primary[victim]).is_ok());
        let mut bad_secondary = segment.secondary[victim].clone();
        bad_secondary.flip_bit(bit);
        prop_assert!(verify_sliver(&metadata, &bad_secondary).is_err());

        // The liar is offered first, among all slivers: it is found and skipped.
        let mut offered = vec![bad];
        offered.extend(segment.primary.iter().filter(|s| usize::from(s.index()) != victim).cloned());
        let decoded = decode_segment(&metadata, segment.index, offered).unwrap();
        let start = (segment.index as u64 * metadata.layout().segment_size()) as usize;
        prop_assert_eq!(&decoded.data.to_vec()[..], &case.data[start..start + decoded.data.len()]);
        // Only a liar whose sliver was needed is noticed; it is then named.
        prop_assert!(decoded.invalid.is_empty() || decoded.invalid == vec![victim as u16]);
        if victim < config.p() {
            prop_assert_eq!(decoded.invalid, vec![victim as u16]);
        }
    }

    #[test]
    fn a_flipped_bit_in_a_recovery_symbol_or_proof_is_detected_and_skipped(case in case(), seed in any::<u64>(), bit in any::<usize>(), in_proof in any::<bool>()) {
        let (metadata, segments) = encode(&case);
        let config = metadata.config();
        let segment = &segments[0];
        let picks = choose(config.n(), 2, seed);
        let (target, liar) = (picks[0] as u16, picks[1]);
        let sources: Vec<&Sliver<Primary>> = segment.primary.iter().collect();
        let mut symbols = symbols_for(&sources, target);
        prop_assert!(symbols.iter().all(|s| s.verify(&metadata).is_ok()));
        if in_proof { symbols[liar].flip_proof_bit(bit) } else { symbols[liar].flip_symbol_bit(bit) }
        prop_assert!(symbols[liar].verify(&metadata).is_err());
        // The bad symbol comes first; the rebuild skips it and still succeeds.
        symbols.swap(0, liar);
        let rebuilt = rebuild::<Secondary>(&metadata, segment.index, target, symbols).unwrap();
        prop_assert!(rebuilt.sliver == segment.secondary[usize::from(target)]);
        prop_assert_eq!(rebuilt.invalid_sources, vec![liar as u16]);
    }

    #[test]
    fn a_flipped_bit_in_serialized_metadata_is_detected(case in case(), bit in any::<usize>()) {
        let (metadata, _) = encode(&case);
        let mut bytes = metadata.to_bytes();
        prop_assert_eq!(BlobMetadata::from_bytes(&bytes).unwrap(), metadata.clone());
        prop_assert_eq!(bytes.len() as u64, metadata.layout().metadata_len());
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(BlobMetadata::from_bytes(&bytes).is_err());
    }

    #[test]
    fn two_different_blobs_never_share_a_blob_id(case in case()) {
        let (metadata, _) = encode(&case);
        let mut seen = SEEN_IDS.lock().unwrap();
        let seen = seen.get_or_insert_with(HashMap::new);
        // The id covers the parameters too: key the content by them.
        let mut key = case.data.clone();
        key.extend_from_slice(&case.n.to_le_bytes());
        key.extend_from_slice(&case.segment_size.to_le_bytes());
        if let Some(previous) = seen.insert(metadata.blob_id(), key.clone()) {
            prop_assert_eq!(previous, key, "two blobs share the id {}", metadata.blob_id());
        }
    }
}

#[test]
fn blob_ids_differ_for_blobs_that_differ_in_one_bit_length_or_parameters() {
    let config = EncodingConfig::new(7).unwrap();
    let encoder = BlobEncoder::new(config, DEFAULT_SEGMENT_SIZE).unwrap();
    let id = |data: &[u8]| encoder.encode(data).unwrap().0.blob_id();
    let base = pseudo_random(5000, 3);
    let mut ids = vec![id(&base), id(&base[..4999]), id(&[]), id(&[0])];
    for bit in [0, 7, 19_999, 39_999] {
        let mut other = base.clone();
        other[bit / 8] ^= 1 << (bit % 8);
        ids.push(id(&other));
    }
    let with = |n: u16, seg: u64| {
        BlobEncoder::new(EncodingConfig::new(n).unwrap(), seg)
            .unwrap()
            .encode(&base)
            .unwrap()
            .0
            .blob_id()
    };
    ids.push(with(10, DEFAULT_SEGMENT_SIZE));
    ids.push(with(7, 4096));
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

/// A writer that encodes inconsistently: one non-systematic primary sliver
/// is replaced by other bytes and its hash by theirs, so every sliver is
/// individually "valid" but they do not form one codeword.
fn inconsistent_blob() -> (BlobMetadata, EncodedSegment, usize) {
    let config = EncodingConfig::new(7).unwrap();
    let data = pseudo_random(10_000, 11);
    let (metadata, mut segments) = BlobEncoder::new(config, DEFAULT_SEGMENT_SIZE)
        .unwrap()
        .encode(&data)
        .unwrap();
    let mut segment = segments.remove(0);
    let liar = config.n() - 1;
    segment.primary[liar].flip_bit(12_345);
    let mut primary: Vec<_> = segment.hashes.primary_hashes().to_vec();
    primary[liar] = redstuff::codec::sliver_hash(&segment.primary[liar]);
    let hashes =
        redstuff::codec::SegmentHashes::new(primary, segment.hashes.secondary_hashes().to_vec());
    let metadata = BlobMetadata::new(*metadata.layout(), vec![hashes]).unwrap();
    (metadata, segment, liar)
}

#[test]
fn a_reader_never_returns_other_bytes_from_a_writer_that_encoded_inconsistently() {
    let (metadata, segment, liar) = inconsistent_blob();
    // Every sliver passes its own check...
    for sliver in &segment.primary {
        verify_sliver(&metadata, sliver).unwrap();
    }
    // ...so a read from the systematic ones returns the bytes they commit
    // to (the only bytes any read can return), a strict read refuses them,
    let systematic = segment.primary[..3].to_vec();
    let bytes = decode_segment(&metadata, 0, systematic.clone())
        .unwrap()
        .data;
    assert_eq!(bytes.to_vec(), pseudo_random(10_000, 11));
    assert_eq!(
        decode_segment_with(&metadata, 0, systematic, Verification::Strict).unwrap_err(),
        DecodeError::InconsistentEncoding
    );
    // and a read from a set that includes the odd sliver is refused.
    let with_liar = vec![
        segment.primary[0].clone(),
        segment.primary[1].clone(),
        segment.primary[liar].clone(),
    ];
    assert_eq!(
        decode_segment(&metadata, 0, with_liar).unwrap_err(),
        DecodeError::InconsistentEncoding
    );
}

#[test]
fn a_rebuild_refuses_a_sliver_from_an_inconsistent_encoding() {
    let (metadata, segment, liar) = inconsistent_blob();
    // The flipped bit sits in symbol 2 of the odd sliver: its symbol for
    // target 2 has a valid proof, so it is used; the rebuilt sliver then
    // fails its hash and nothing is returned.
    let target = 2u16;
    let sources = [
        &segment.primary[liar],
        &segment.primary[0],
        &segment.primary[1],
    ];
    let err =
        rebuild::<Secondary>(&metadata, 0, target, symbols_for(&sources, target)).unwrap_err();
    assert_eq!(err, RebuildError::InconsistentEncoding);
}

#[test]
fn too_few_valid_symbols_is_an_error_that_counts_them() {
    let config = EncodingConfig::new(10).unwrap();
    let data = pseudo_random(3000, 5);
    let (metadata, segments) = BlobEncoder::new(config, DEFAULT_SEGMENT_SIZE)
        .unwrap()
        .encode(&data)
        .unwrap();
    let segment = &segments[0];
    let sources: Vec<&Sliver<Primary>> = segment.primary[..config.p()].iter().collect();
    let mut symbols = symbols_for(&sources, 5);
    symbols[0].flip_symbol_bit(3);
    let err = rebuild::<Secondary>(&metadata, 0, 5, symbols).unwrap_err();
    assert_eq!(
        err,
        RebuildError::NotEnoughSymbols {
            valid: config.p() - 1,
            needed: config.p(),
            invalid: 1
        }
    );
    // A symbol for another target or segment is not used either.
    let wrong_target = symbols_for(&sources, 6);
    assert!(rebuild::<Secondary>(&metadata, 0, 5, wrong_target).is_err());
    assert!(matches!(
        rebuild::<Secondary>(&metadata, 1, 5, Vec::new()),
        Err(RebuildError::NoSuchSegment { .. })
    ));
    assert!(matches!(
        rebuild::<Secondary>(&metadata, 0, 10, Vec::new()),
        Err(RebuildError::NoSuchSliver { .. })
    ));
}

#[test]
fn slivers_of_another_segment_or_shape_are_refused_by_name() {
    let config = EncodingConfig::new(4).unwrap();
    let data = pseudo_random(5000, 9);
    let (metadata, segments) = BlobEncoder::new(config, 2048)
        .unwrap()
        .encode(&data)
        .unwrap();
    assert_eq!(segments.len(), 3);
    // Segment 1's slivers offered for segment 0: all rejected as invalid.
    let wrong = segments[1].primary.clone();
    let err = decode_segment(&metadata, 0, wrong).unwrap_err();
    assert_eq!(
        err,
        DecodeError::NotEnoughSlivers {
            kind: "primary",
            valid: 0,
            needed: 2,
            invalid: vec![0, 1, 2, 3]
        }
    );
    assert!(verify_sliver(&metadata, &segments[2].secondary[0]).is_ok());
    let other = EncodingConfig::new(7).unwrap();
    let (_, foreign) = BlobEncoder::new(other, 2048)
        .unwrap()
        .encode(&data)
        .unwrap();
    assert!(verify_sliver(&metadata, &foreign[0].primary[0]).is_err());
}
