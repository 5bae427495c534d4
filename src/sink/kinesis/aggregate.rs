//! KPL aggregation (`aggregation=true`): records bound for one shard packed into one Kinesis
//! record in the Kinesis Producer Library's format, which the KCL, Lambda and the
//! `aws-kinesis-agg` modules de-aggregate: the magic bytes `F3 89 9A C2`, a protobuf
//! `AggregatedRecord`, and the MD5 of the protobuf bytes.
//!
//! There is no crate for the format; the messages are three prost structs, the rest is the
//! shard map that tells which records share a shard.

use md5::Digest;
use std::collections::HashMap;

/// The first bytes of an aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Fixed bytes around the protobuf: magic and MD5.
const FRAME: usize = MAGIC.len() + 16;
/// Most protobuf bytes one record adds besides its data, partition key and hash key:
/// field tags, length varints and table indices (each varint at most 5 bytes here).
const PER_RECORD: usize = 32;

#[derive(Clone, PartialEq, prost::Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<Record>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
}

/// An upper bound of the bytes one record adds to an aggregate.
pub fn record_bound(key: &str, hash: Option<&str>, data: usize) -> usize {
    PER_RECORD + key.len() + hash.map_or(0, str::len) + data
}

/// An upper bound of an aggregate's size from its records' [`record_bound`]s.
pub fn frame_bound(records: usize) -> usize {
    FRAME + records
}

/// One aggregated record of `records` (partition key, explicit hash key, data), in order.
pub fn encode<'a>(records: impl IntoIterator<Item = (&'a str, Option<&'a str>, &'a [u8])>) -> Vec<u8> {
    let mut agg = AggregatedRecord::default();
    let (mut keys, mut hashes) = (HashMap::new(), HashMap::new());
    for (key, hash, data) in records {
        let partition_key_index = *keys.entry(key).or_insert_with(|| {
            agg.partition_key_table.push(key.to_owned());
            agg.partition_key_table.len() as u64 - 1
        });
        let explicit_hash_key_index = hash.map(|h| {
            *hashes.entry(h).or_insert_with(|| {
                agg.explicit_hash_key_table.push(h.to_owned());
                agg.explicit_hash_key_table.len() as u64 - 1
            })
        });
        agg.records.push(Record { partition_key_index, explicit_hash_key_index, data: data.to_vec() });
    }
    let body = prost::Message::encode_to_vec(&agg);
    let mut out = Vec::with_capacity(FRAME + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&md5::Md5::digest(&body));
    out
}

/// The 128-bit hash Kinesis places a record by: its explicit hash key, or the MD5 of its
/// partition key.
pub fn placement(key: &str, explicit: Option<&str>) -> u128 {
    match explicit.and_then(|h| h.parse().ok()) {
        Some(h) => h,
        None => u128::from_be_bytes(md5::Md5::digest(key.as_bytes()).into()),
    }
}

/// The open shards of a stream by hash-key range.
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    /// (starting hash key, ending hash key, shard id), sorted by start.
    ranges: Vec<(u128, u128, String)>,
}

impl ShardMap {
    /// A map of `(start, end, shard id)` ranges (the open shards of ListShards).
    pub fn new(mut ranges: Vec<(u128, u128, String)>) -> ShardMap {
        ranges.sort();
        ShardMap { ranges }
    }

    /// The index of the shard holding `hash`; 0 when the map has a gap there.
    pub fn shard(&self, hash: u128) -> usize {
        let i = self.ranges.partition_point(|r| r.0 <= hash);
        match i.checked_sub(1) {
            Some(i) if hash <= self.ranges[i].1 => i,
            _ => 0,
        }
    }

    /// Shard `i`'s id and starting hash key (an aggregate's explicit hash key, which places it
    /// on that shard whatever its outer partition key).
    pub fn get(&self, i: usize) -> Option<(&str, u128)> {
        self.ranges.get(i).map(|r| (r.2.as_str(), r.0))
    }

    /// How many open shards.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregate_has_magic_protobuf_and_md5_and_stays_within_its_bound() {
        let recs = [("a", None, &b"one"[..]), ("b", Some("7"), &b"two"[..]), ("a", None, &b"three"[..])];
        let out = encode(recs);
        assert_eq!(out[..4], MAGIC);
        let body = &out[4..out.len() - 16];
        assert_eq!(out[out.len() - 16..], md5::Md5::digest(body)[..]);
        let agg: AggregatedRecord = prost::Message::decode(body).unwrap();
        assert_eq!(agg.partition_key_table, ["a", "b"]);
        assert_eq!(agg.explicit_hash_key_table, ["7"]);
        assert_eq!(agg.records[2].partition_key_index, 0);
        assert_eq!(agg.records[1].explicit_hash_key_index, Some(0));
        assert_eq!(agg.records[2].data, b"three");
        let bound: usize = recs.iter().map(|(k, h, d)| record_bound(k, *h, d.len())).sum();
        assert!(out.len() <= frame_bound(bound), "{} > {}", out.len(), frame_bound(bound));
    }

    #[test]
    fn shards_are_found_by_range_and_placement_is_md5_or_the_explicit_key() {
        let half = u128::MAX / 2;
        let m = ShardMap::new(vec![(half + 1, u128::MAX, "s1".into()), (0, half, "s0".into())]);
        assert_eq!((m.shard(0), m.shard(half), m.shard(half + 1), m.shard(u128::MAX)), (0, 0, 1, 1));
        assert_eq!(m.get(1), Some(("s1", half + 1)));
        assert_eq!(placement("k", Some("12")), 12);
        // MD5("k") = 8ce4b16b22b58894aa86c421e8759df3
        assert_eq!(placement("k", None), 0x8ce4b16b22b58894aa86c421e8759df3);
    }
}
