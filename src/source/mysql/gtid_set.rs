//! MySQL GTID sets as pure data: `@@gtid_executed` text (`uuid:1-5:7,uuid2:tag:1-3`, MySQL
//! 8.4 tags included), adding one transaction's GTID, and the [`Sid`]s a
//! COM_BINLOG_DUMP_GTID request carries. No I/O.

use mysql_common::packets::{GnoInterval, Sid};
use std::fmt;
use std::str::FromStr;

/// The transactions of one source (uuid) and tag: sorted, disjoint `[start, end)` ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    uuid: String,
    tag: Option<String>,
    ranges: Vec<(u64, u64)>,
}

/// A MySQL GTID set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet(Vec<Member>);

impl GtidSet {
    /// Parses MySQL's text form; None when it is not one (a MariaDB state, say).
    pub fn parse(text: &str) -> Option<GtidSet> {
        let mut set = GtidSet::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut tokens = part.split(':');
            let uuid = tokens.next()?.trim().to_ascii_lowercase();
            if uuid.len() != 36
                || uuid.split('-').count() != 5
                || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            {
                return None;
            }
            let mut tag: Option<String> = None;
            let mut any = false;
            for t in tokens {
                let t = t.trim();
                if t.starts_with(|c: char| c.is_ascii_digit()) {
                    let (a, b) = t.split_once('-').unwrap_or((t, t));
                    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                    if a == 0 || b < a {
                        return None;
                    }
                    set.fill(&uuid, tag.as_deref(), a, b + 1);
                    any = true;
                } else if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    tag = Some(t.to_ascii_lowercase());
                } else {
                    return None;
                }
            }
            if !any {
                return None;
            }
        }
        Some(set)
    }

    /// Adds transaction `uuid[:tag]:gno`.
    pub fn add(&mut self, uuid: &str, tag: Option<&str>, gno: u64) {
        self.fill(uuid, tag, gno, gno + 1);
    }

    /// Adds the range `[start, end)` of `uuid[:tag]`, merging with neighbours.
    fn fill(&mut self, uuid: &str, tag: Option<&str>, start: u64, end: u64) {
        let i = match self.0.iter().position(|m| m.uuid == uuid && m.tag.as_deref() == tag) {
            Some(i) => i,
            None => {
                self.0.push(Member { uuid: uuid.to_owned(), tag: tag.map(String::from), ranges: vec![] });
                self.0.sort_by(|a, b| (&a.uuid, &a.tag).cmp(&(&b.uuid, &b.tag)));
                self.0.iter().position(|m| m.uuid == uuid && m.tag.as_deref() == tag).unwrap_or(0)
            }
        };
        let ranges = &mut self.0[i].ranges;
        // The common case: the next transaction of the last range.
        if let Some(last) = ranges.last_mut()
            && last.0 <= start
            && start <= last.1
        {
            last.1 = last.1.max(end);
            return;
        }
        ranges.push((start, end));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(s, e) in ranges.iter() {
            match merged.last_mut() {
                Some(m) if s <= m.1 => m.1 = m.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ranges = merged;
    }

    /// True when transaction `uuid[:tag]:gno` is in the set.
    pub fn contains(&self, uuid: &str, tag: Option<&str>, gno: u64) -> bool {
        self.0.iter().any(|m| {
            m.uuid == uuid && m.tag.as_deref() == tag && m.ranges.iter().any(|&(s, e)| s <= gno && gno < e)
        })
    }

    /// The set as COM_BINLOG_DUMP_GTID sids (tagged ones in the tagged wire format).
    pub fn sids(&self) -> Vec<Sid<'static>> {
        self.0
            .iter()
            .filter_map(|m| {
                let sid = Sid::from_str(&Member::text(m)).ok()?;
                Some(sid.with_intervals(m.ranges.iter().map(|&(s, e)| GnoInterval::new(s, e)).collect()))
            })
            .collect()
    }

    /// True when no transaction is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Member {
    fn text(&self) -> String {
        let mut out = self.uuid.clone();
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        for &(s, e) in &self.ranges {
            match e - s {
                1 => out.push_str(&format!(":{s}")),
                _ => out.push_str(&format!(":{s}-{}", e - 1)),
            }
        }
        out
    }
}

impl fmt::Display for GtidSet {
    /// One `uuid[:tag]:ranges` entry per source and tag, comma-separated (MySQL accepts it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&m.text())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::proto::MySerialize;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "bbbbbbbb-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn mysql_text_round_trips_and_grows_by_one_transaction() {
        let text = format!("{B}:1-3,\n{}:1-5:7:tag_1:1-2", A.to_uppercase());
        let mut set = GtidSet::parse(&text).unwrap();
        assert_eq!(set.to_string(), format!("{A}:1-5:7,{A}:tag_1:1-2,{B}:1-3"));
        set.add(A, None, 6);
        set.add(A, Some("tag_1"), 3);
        set.add(B, Some("x"), 1);
        assert_eq!(set.to_string(), format!("{A}:1-7,{A}:tag_1:1-3,{B}:1-3,{B}:x:1"));
        assert_eq!(GtidSet::parse("0-1-15"), None, "a MariaDB state");
        assert_eq!(GtidSet::parse(&format!("{A}:0")), None);
        assert_eq!(GtidSet::parse(&format!("{A}:tag")), None, "a tag without transactions");
        assert!(GtidSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn sids_carry_every_range_and_tags_switch_the_wire_format() {
        let set = GtidSet::parse(&format!("{A}:1-5:7")).unwrap();
        let sids = set.sids();
        assert_eq!(sids.len(), 1);
        assert_eq!(sids[0].to_string(), format!("{A}:1-5:7"));
        let mut plain = vec![];
        sids[0].serialize(&mut plain);
        // uuid, number of intervals, then [start, end) pairs: 16 + 8 + 2 * 16 bytes
        assert_eq!(plain.len(), 16 + 8 + 32);
        assert_eq!(&plain[16..24], &2u64.to_le_bytes());
        assert_eq!(&plain[24..40], &[1u64.to_le_bytes(), 6u64.to_le_bytes()].concat()[..]);
        let tagged = GtidSet::parse(&format!("{A}:tag_1:1-2")).unwrap().sids();
        assert_eq!(tagged[0].tag().map(|t| t.to_string()).as_deref(), Some("tag_1"));
        // COM_BINLOG_DUMP_GTID: the sid count's top byte says which format follows (MySQL
        // 8.4 reads tags only in format 1).
        let request = |sids: Vec<Sid<'static>>| {
            let mut b = vec![];
            mysql_common::packets::ComBinlogDumpGtid::new(7).with_sids(sids).serialize(&mut b);
            b
        };
        let (plain, tagged) = (request(sids), request(tagged));
        // command 0x1e, flags 2, server id 4, empty file name (length 4), pos 8, data size 4
        let at = 1 + 2 + 4 + 4 + 8 + 4;
        assert_eq!(plain[0], 0x1e);
        assert_eq!(u64::from_le_bytes(plain[at..at + 8].try_into().unwrap()), 1);
        assert_eq!(tagged[at + 7], 0x01, "tagged format");
        assert!(tagged.windows(5).any(|w| w == b"tag_1"));
    }
}
