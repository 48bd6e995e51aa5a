//! The binary format: round trips, and strict, panic-free parsing of
//! truncated, oversized, garbled and random input.

use proptest::prelude::*;
use redstuff::codec::format::{HEADER_LEN, MAGIC};
use redstuff::codec::{
    verify_sliver, BlobEncoder, BlobMetadata, EncodedSegment, EncodingConfig, FormatError, Primary,
    PrimarySliver, RecoverySymbol, Secondary, SecondarySliver, SymbolSource,
};

fn sample() -> (BlobMetadata, Vec<EncodedSegment>) {
    let config = EncodingConfig::new(7).unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    BlobEncoder::new(config, 2048)
        .unwrap()
        .encode(&data)
        .unwrap()
}

/// Every serialized object of the sample blob, with a name.
fn objects() -> Vec<(&'static str, Vec<u8>)> {
    let (metadata, segments) = sample();
    let segment = &segments[1];
    vec![
        ("metadata", metadata.to_bytes()),
        ("primary sliver", segment.primary[3].to_bytes()),
        ("secondary sliver", segment.secondary[5].to_bytes()),
        (
            "primary symbol",
            SymbolSource::new(&segment.primary[2])
                .symbol(6)
                .unwrap()
                .to_bytes(),
        ),
        (
            "secondary symbol",
            SymbolSource::new(&segment.secondary[4])
                .symbol(1)
                .unwrap()
                .to_bytes(),
        ),
    ]
}

/// Parses `bytes` as the named object; Ok(()) when it parses.
fn parse(name: &str, bytes: &[u8]) -> Result<(), FormatError> {
    match name {
        "metadata" => BlobMetadata::from_bytes(bytes).map(drop),
        "primary sliver" => {
            let shared = PrimarySliver::from_shared(bytes::Bytes::copy_from_slice(bytes));
            let copied = PrimarySliver::from_bytes(bytes);
            assert_eq!(shared, copied, "both parsers agree");
            copied.map(drop)
        }
        "secondary sliver" => {
            let shared = SecondarySliver::from_shared(bytes::Bytes::copy_from_slice(bytes));
            let copied = SecondarySliver::from_bytes(bytes);
            assert_eq!(shared, copied, "both parsers agree");
            copied.map(drop)
        }
        "primary symbol" => RecoverySymbol::<Primary>::from_bytes(bytes).map(drop),
        "secondary symbol" => RecoverySymbol::<Secondary>::from_bytes(bytes).map(drop),
        other => panic!("unknown object {other}"),
    }
}

#[test]
fn every_object_round_trips() {
    let (metadata, segments) = sample();
    assert_eq!(
        BlobMetadata::from_bytes(&metadata.to_bytes()).unwrap(),
        metadata
    );
    for segment in &segments {
        for sliver in &segment.primary {
            assert_eq!(
                &PrimarySliver::from_bytes(&sliver.to_bytes()).unwrap(),
                sliver
            );
        }
        for sliver in &segment.secondary {
            assert_eq!(
                &SecondarySliver::from_bytes(&sliver.to_bytes()).unwrap(),
                sliver
            );
        }
        let source = SymbolSource::new(&segment.secondary[0]);
        for target in 0..7 {
            let symbol = source.symbol(target).unwrap();
            let back = RecoverySymbol::<Secondary>::from_bytes(&symbol.to_bytes()).unwrap();
            assert_eq!(back, symbol);
            back.verify(&metadata).unwrap();
        }
    }
}

#[test]
fn a_sliver_parsed_from_shared_bytes_keeps_its_data_in_them() {
    let (_, segments) = sample();
    let sliver = &segments[0].primary[2];
    let bytes = bytes::Bytes::from(sliver.to_bytes());
    let range = bytes.as_ptr_range();
    let parsed = PrimarySliver::from_shared(bytes.clone()).unwrap();
    assert_eq!(&parsed, sliver);
    assert!(
        range.contains(&parsed.data().as_ptr()),
        "the data is a slice of the bytes it was parsed from, not a copy"
    );
}

#[test]
fn every_truncation_is_an_error() {
    for (name, bytes) in objects() {
        for len in 0..bytes.len() {
            let err = parse(name, &bytes[..len]).expect_err(name);
            assert!(
                matches!(err, FormatError::Truncated { .. }),
                "{name} cut at {len}: {err}"
            );
        }
        parse(name, &bytes).unwrap();
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for (name, mut bytes) in objects() {
        bytes.push(0);
        let err = parse(name, &bytes).unwrap_err();
        assert!(
            matches!(err, FormatError::TrailingBytes { extra: 1, .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_header_that_is_not_ours_is_named() {
    for (name, bytes) in objects() {
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(parse(name, &magic).unwrap_err(), FormatError::BadMagic);
        let mut version = bytes.clone();
        version[4] = 2;
        assert_eq!(
            parse(name, &version).unwrap_err(),
            FormatError::UnsupportedVersion(2)
        );
    }
    // Each object parsed as every other kind is a wrong-type error.
    let all = objects();
    for (name, _) in &all {
        for (other, bytes) in &all {
            if name != other {
                let err = parse(name, bytes).unwrap_err();
                assert!(
                    matches!(err, FormatError::WrongType { .. }),
                    "{other} as {name}: {err}"
                );
            }
        }
    }
}

#[test]
fn out_of_range_fields_are_refused_with_their_name() {
    let (_, segments) = sample();
    let sliver = segments[0].primary[0].to_bytes();
    let field = |bytes: &[u8]| match PrimarySliver::from_bytes(bytes).unwrap_err() {
        FormatError::InvalidField { field, .. } => field,
        other => panic!("expected an invalid field, got {other}"),
    };
    let mut n = sliver.clone();
    n[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(field(&n), "shard count");
    let mut index = sliver.clone();
    index[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(field(&index), "sliver index");
    let mut odd = sliver.clone();
    odd[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&51u32.to_le_bytes());
    assert_eq!(field(&odd), "symbol size");
    let mut huge = sliver.clone();
    huge[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(field(&huge), "symbol size");
}

#[test]
fn huge_declared_lengths_fail_fast_without_allocating() {
    // Metadata claiming 2^32 - 1 segments of 1000 shards in 100 bytes.
    let mut bytes = Vec::from(MAGIC);
    bytes.extend_from_slice(&[1, 1, 1]);
    bytes.extend_from_slice(&1000u16.to_le_bytes());
    bytes.extend_from_slice(&1024u64.to_le_bytes());
    bytes.extend_from_slice(&(1024 * (u32::MAX as u64)).to_le_bytes());
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 60]);
    let err = BlobMetadata::from_bytes(&bytes).unwrap_err();
    assert!(
        matches!(err, FormatError::Truncated { needed, .. } if needed > 1 << 40),
        "{err}"
    );
    // A segment count that disagrees with the length is named.
    let mut count = bytes.clone();
    count[HEADER_LEN + 19..HEADER_LEN + 23].copy_from_slice(&5u32.to_le_bytes());
    assert!(matches!(
        BlobMetadata::from_bytes(&count).unwrap_err(),
        FormatError::InvalidField {
            field: "segment count",
            ..
        }
    ));
}

#[test]
fn a_proof_of_the_wrong_length_is_refused() {
    let (_, segments) = sample();
    let symbol = SymbolSource::new(&segments[0].primary[0])
        .symbol(4)
        .unwrap();
    let mut bytes = symbol.to_bytes();
    let depth_at = bytes.len() - 3 * 32 - 1;
    assert_eq!(bytes[depth_at], 3);
    bytes[depth_at] = 2;
    bytes.truncate(bytes.len() - 32);
    assert!(matches!(
        RecoverySymbol::<Primary>::from_bytes(&bytes).unwrap_err(),
        FormatError::InvalidField {
            field: "proof length",
            ..
        }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), with_header in any::<bool>(), kind in 1u8..=5) {
        let mut input = bytes;
        if with_header {
            let mut header = Vec::from(MAGIC);
            header.extend_from_slice(&[1, kind]);
            header.extend(input);
            input = header;
        }
        for (name, _) in objects().iter().take(5) {
            let _ = parse(name, &input);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_garbled_sliver_either_fails_to_parse_or_fails_verification(position in any::<usize>(), value in any::<u8>()) {
        let (metadata, segments) = sample();
        let original = &segments[1].secondary[5];
        let mut bytes = original.to_bytes();
        let position = position % bytes.len();
        prop_assume!(bytes[position] != value);
        bytes[position] = value;
        if let Ok(sliver) = SecondarySliver::from_bytes(&bytes) {
            prop_assert!(verify_sliver(&metadata, &sliver).is_err());
        }
    }
}

#[test]
fn the_first_bytes_of_metadata_tell_its_whole_length() {
    use redstuff::codec::format::{metadata_len_from_prefix, METADATA_PREFIX_LEN};
    let (metadata, _) = sample();
    let bytes = metadata.to_bytes();
    assert_eq!(
        metadata_len_from_prefix(&bytes[..METADATA_PREFIX_LEN]).unwrap(),
        bytes.len() as u64
    );
    assert!(metadata_len_from_prefix(&bytes[..METADATA_PREFIX_LEN - 1]).is_err());
    let mut wrong_count = bytes[..METADATA_PREFIX_LEN].to_vec();
    wrong_count[METADATA_PREFIX_LEN - 4] ^= 1;
    assert!(metadata_len_from_prefix(&wrong_count).is_err());
    assert!(metadata_len_from_prefix(&[0u8; METADATA_PREFIX_LEN]).is_err());
}

#[test]
fn the_first_bytes_of_a_primary_sliver_tell_the_whole_pairs_length() {
    use redstuff::codec::format::{pair_lengths_from_prefix, SLIVER_OVERHEAD};
    let (_, segments) = sample();
    for segment in &segments {
        let primary = segment.primary[2].to_bytes();
        let secondary = segment.secondary[2].to_bytes();
        let lengths = pair_lengths_from_prefix(&primary[..SLIVER_OVERHEAD]).unwrap();
        assert_eq!(lengths.primary, primary.len());
        assert_eq!(lengths.total, primary.len() + secondary.len());
    }
    let primary = segments[0].primary[0].to_bytes();
    assert!(pair_lengths_from_prefix(&primary[..SLIVER_OVERHEAD - 1]).is_err());
    let secondary = segments[0].secondary[0].to_bytes();
    assert!(
        pair_lengths_from_prefix(&secondary[..SLIVER_OVERHEAD]).is_err(),
        "a pair starts with its primary"
    );
    let mut huge = primary[..SLIVER_OVERHEAD].to_vec();
    huge[SLIVER_OVERHEAD - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        pair_lengths_from_prefix(&huge).is_err(),
        "a symbol size no segment has is refused before anything is read"
    );
}
