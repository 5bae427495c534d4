//! MariaDB GTIDs as pure data: the GTID event body, and the replication state a resume by
//! GTID asks for (the last `domain-server-seq` of every domain, as `@@gtid_binlog_pos` and
//! `@slave_connect_state` write it). No I/O.

use std::fmt;

/// `FL_STANDALONE`: no BEGIN follows, the next statement is the whole transaction.
const FL_STANDALONE: u8 = 1;
/// `FL_GROUP_COMMIT_ID`: an 8-byte commit id follows the flags.
const FL_GROUP_COMMIT_ID: u8 = 2;
/// `FL_PREPARED_XA`: the group is the body of an `XA PREPARE`d transaction.
const FL_PREPARED_XA: u8 = 64;
/// `FL_COMPLETED_XA`: the group is an `XA COMMIT` or `XA ROLLBACK` of a prepared one.
const FL_COMPLETED_XA: u8 = 128;

/// One MariaDB GTID: `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// Server id of the server that first wrote the transaction.
    pub server: u32,
    /// Sequence number within the domain.
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A decoded MariaDB GTID event (type 162).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidEvent {
    /// The transaction's GTID.
    pub gtid: Gtid,
    /// No BEGIN follows.
    pub standalone: bool,
    /// The body of an XA PREPARE (`Some(xid)`), with the XID in `XA` statement form.
    pub prepared_xa: Option<String>,
    /// The XA COMMIT/ROLLBACK of a prepared XA transaction (`Some(xid)`).
    pub completed_xa: Option<String>,
}

/// Decodes a GTID event body; `server` is the event header's server id. None when the body
/// is too short to be one.
pub fn gtid_event(body: &[u8], server: u32) -> Option<GtidEvent> {
    let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    let flags = *body.get(12)?;
    let mut rest = &body[13..];
    if flags & FL_GROUP_COMMIT_ID != 0 {
        rest = rest.get(8..)?;
    }
    let xid = if flags & (FL_PREPARED_XA | FL_COMPLETED_XA) != 0 { xid(rest) } else { None };
    Some(GtidEvent {
        gtid: Gtid { domain, server, seq },
        standalone: flags & FL_STANDALONE != 0,
        prepared_xa: xid.clone().filter(|_| flags & FL_PREPARED_XA != 0),
        completed_xa: xid.filter(|_| flags & FL_COMPLETED_XA != 0),
    })
}

/// The XID after the flags: `formatID` u32 LE, `gtrid_length` u8, `bqual_length` u8, data;
/// written as the `XA` statements write it: `X'<gtrid hex>',X'<bqual hex>',<formatID>`.
fn xid(b: &[u8]) -> Option<String> {
    let format = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
    let (g, q) = (*b.get(4)? as usize, *b.get(5)? as usize);
    let data = b.get(6..6 + g + q)?;
    Some(xid_text(format as i64, &data[..g], &data[g..]))
}

/// An XID in the form MariaDB and MySQL print it in binlogged `XA` statements.
pub fn xid_text(format: i64, gtrid: &[u8], bqual: &[u8]) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    format!("X'{}',X'{}',{format}", hex(gtrid), hex(bqual))
}

/// Parses a list of GTIDs, `0-1-15,0-2-7` (`@@gtid_binlog_state` lists one per domain and
/// server); None when an entry is not a MariaDB GTID.
pub fn parse_list(s: &str) -> Option<Vec<Gtid>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let mut it = part.splitn(3, '-');
            Some(Gtid {
                domain: it.next()?.parse().ok()?,
                server: it.next()?.parse().ok()?,
                seq: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The GTID state of a MariaDB replication topology: the last GTID per domain, sorted by
/// domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState(Vec<Gtid>);

impl GtidState {
    /// Parses `0-1-15,1-2-7` (spaces and newlines allowed, as MariaDB prints long states).
    pub fn parse(s: &str) -> Option<GtidState> {
        let mut state = GtidState::default();
        for gtid in parse_list(s)? {
            state.record(gtid);
        }
        Some(state)
    }

    /// Records `gtid` as the latest of its domain.
    pub fn record(&mut self, gtid: Gtid) {
        match self.0.binary_search_by_key(&gtid.domain, |g| g.domain) {
            Ok(i) => self.0[i] = gtid,
            Err(i) => self.0.insert(i, gtid),
        }
    }

    /// True when `gtid` is at or before the state's GTID of its domain.
    pub fn covers(&self, gtid: &Gtid) -> bool {
        self.0.iter().any(|g| g.domain == gtid.domain && g.seq >= gtid.seq)
    }

    /// True when no domain is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keeps_the_last_gtid_of_each_domain_sorted() {
        let mut s = GtidState::parse("1-2-7, 0-1-15\n").unwrap();
        assert_eq!(s.to_string(), "0-1-15,1-2-7");
        s.record(Gtid { domain: 0, server: 3, seq: 16 });
        s.record(Gtid { domain: 5, server: 3, seq: 1 });
        assert_eq!(s.to_string(), "0-3-16,1-2-7,5-3-1");
        assert_eq!(GtidState::parse("").unwrap(), GtidState::default());
        assert_eq!(GtidState::parse("0-1"), None);
        assert_eq!(GtidState::parse("uuid:1-5"), None);
    }

    #[test]
    fn gtid_event_bodies() {
        // seq 15, domain 0, FL_STANDALONE | FL_GROUP_COMMIT_ID, commit id, padding
        let mut body = vec![15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
        body.extend([9u8; 8]);
        body.extend([0u8; 6]);
        let ev = gtid_event(&body, 1).unwrap();
        assert_eq!(ev.gtid.to_string(), "0-1-15");
        assert!(ev.standalone && ev.prepared_xa.is_none() && ev.completed_xa.is_none());
        // seq 7, domain 2, FL_PREPARED_XA | FL_TRANSACTIONAL, xid format 1, gtrid "ab", bqual ""
        let mut xa = vec![7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 64 | 4, 1, 0, 0, 0, 2, 0];
        xa.extend(b"ab");
        let ev = gtid_event(&xa, 9).unwrap();
        assert_eq!(ev.gtid.to_string(), "2-9-7");
        assert_eq!(ev.prepared_xa.as_deref(), Some("X'6162',X'',1"));
        assert!(!ev.standalone);
        xa[12] = 128 | 4;
        assert_eq!(gtid_event(&xa, 9).unwrap().completed_xa.as_deref(), Some("X'6162',X'',1"));
        assert_eq!(gtid_event(&xa[..10], 9), None);
    }
}
