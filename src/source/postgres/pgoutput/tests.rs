//! Tests of the pgoutput decoder, on messages built by a small encoder.

use super::*;

/// Builds a pgoutput message, field by field.
struct Enc(Vec<u8>);

impl Enc {
    fn new(ty: u8) -> Enc {
        Enc(vec![ty])
    }

    fn u8(mut self, v: u8) -> Enc {
        self.0.push(v);
        self
    }

    fn u16(mut self, v: u16) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u32(mut self, v: u32) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn i32(mut self, v: i32) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn i64(mut self, v: i64) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn bytes(mut self, b: &[u8]) -> Enc {
        self.0.extend_from_slice(b);
        self
    }

    fn str(self, s: &str) -> Enc {
        self.bytes(s.as_bytes()).u8(0)
    }

    fn xid(self, xid: Option<u32>) -> Enc {
        match xid {
            Some(x) => self.u32(x),
            None => self,
        }
    }

    fn tuple(self, cols: &[Datum<'_>]) -> Enc {
        let mut e = self.u16(cols.len() as u16);
        for d in cols {
            e = match d {
                Datum::Null => e.u8(b'n'),
                Datum::Unchanged => e.u8(b'u'),
                Datum::Text(t) => e.u8(b't').u32(t.len() as u32).bytes(t),
                Datum::Binary(b) => e.u8(b'b').u32(b.len() as u32).bytes(b),
            };
        }
        e
    }

    fn done(self) -> Vec<u8> {
        self.0
    }
}

const ROW: [Datum<'static>; 4] =
    [Datum::Text(b"42"), Datum::Null, Datum::Unchanged, Datum::Binary(&[0, 1, 255])];

fn relation_msg(xid: Option<u32>) -> Vec<u8> {
    Enc::new(b'R')
        .xid(xid)
        .u32(16384)
        .str("public")
        .str("users")
        .u8(b'd')
        .u16(2)
        .u8(1)
        .str("id")
        .u32(23)
        .i32(-1)
        .u8(0)
        .str("name")
        .u32(1043)
        .i32(68)
        .done()
}

fn insert_msg(xid: Option<u32>) -> Vec<u8> {
    Enc::new(b'I').xid(xid).u32(16384).u8(b'N').tuple(&ROW).done()
}

fn update_msg(xid: Option<u32>, old: Option<u8>) -> Vec<u8> {
    let e = Enc::new(b'U').xid(xid).u32(7);
    let e = match old {
        Some(m) => e.u8(m).tuple(&[Datum::Text(b"1"), Datum::Null]),
        None => e,
    };
    e.u8(b'N').tuple(&[Datum::Text(b"2"), Datum::Unchanged]).done()
}

fn delete_msg(xid: Option<u32>, marker: u8) -> Vec<u8> {
    Enc::new(b'D').xid(xid).u32(7).u8(marker).tuple(&[Datum::Text(b"1"), Datum::Null]).done()
}

fn truncate_msg(xid: Option<u32>) -> Vec<u8> {
    Enc::new(b'T').xid(xid).u32(2).u8(3).u32(100).u32(200).done()
}

fn message_msg(xid: Option<u32>) -> Vec<u8> {
    Enc::new(b'M').xid(xid).u8(1).u64(0x1234).str("pfx").u32(3).bytes(b"abc").done()
}

fn type_msg(xid: Option<u32>) -> Vec<u8> {
    Enc::new(b'Y').xid(xid).u32(50000).str("public").str("mood").done()
}

/// One valid encoding of every message type, with the flags to parse it.
fn samples() -> Vec<(Vec<u8>, bool, bool)> {
    let mut v = vec![
        (Enc::new(b'B').u64(0x10).i64(700).u32(9).done(), false, false),
        (Enc::new(b'C').u8(0).u64(0x10).u64(0x20).i64(700).done(), false, false),
        (Enc::new(b'O').u64(0x30).str("origin1").done(), false, false),
        (Enc::new(b'S').u32(9).u8(1).done(), false, false),
        (Enc::new(b'E').done(), true, false),
        (Enc::new(b'c').u32(9).u8(0).u64(0x10).u64(0x20).i64(5).done(), false, false),
        (Enc::new(b'A').u32(9).u32(10).done(), false, false),
        (Enc::new(b'A').u32(9).u32(10).u64(0x40).i64(6).done(), false, true),
    ];
    for (xid, in_stream) in [(None, false), (Some(77), true)] {
        v.push((relation_msg(xid), in_stream, false));
        v.push((type_msg(xid), in_stream, false));
        v.push((insert_msg(xid), in_stream, false));
        v.push((update_msg(xid, None), in_stream, false));
        v.push((update_msg(xid, Some(b'K')), in_stream, false));
        v.push((update_msg(xid, Some(b'O')), in_stream, false));
        v.push((delete_msg(xid, b'K'), in_stream, false));
        v.push((delete_msg(xid, b'O'), in_stream, false));
        v.push((truncate_msg(xid), in_stream, false));
        v.push((message_msg(xid), in_stream, false));
    }
    v
}

#[test]
fn begin_commit_origin() {
    let b = Enc::new(b'B').u64(0x10).i64(-5).u32(9).done();
    assert_eq!(parse(&b, false, false).unwrap(), Message::Begin { final_lsn: 0x10, commit_ts: -5, xid: 9 });
    let c = Enc::new(b'C').u8(0).u64(0x10).u64(0x20).i64(700).done();
    assert_eq!(
        parse(&c, false, false).unwrap(),
        Message::Commit { flags: 0, commit_lsn: 0x10, end_lsn: 0x20, commit_ts: 700 }
    );
    let o = Enc::new(b'O').u64(u64::MAX).str("origin1").done();
    assert_eq!(parse(&o, false, false).unwrap(), Message::Origin { lsn: u64::MAX, name: "origin1" });
}

#[test]
fn relation_columns_and_stream_xid() {
    let want = |xid| {
        Message::Relation(Relation {
            xid,
            oid: 16384,
            namespace: "public".into(),
            name: "users".into(),
            replica_identity: b'd',
            columns: vec![
                RelColumn { key: true, name: "id".into(), type_oid: 23, typmod: -1 },
                RelColumn { key: false, name: "name".into(), type_oid: 1043, typmod: 68 },
            ],
        })
    };
    assert_eq!(parse(&relation_msg(None), false, false).unwrap(), want(None));
    assert_eq!(parse(&relation_msg(Some(77)), true, false).unwrap(), want(Some(77)));
}

#[test]
fn type_message() {
    let want = |xid| Message::Type { xid, oid: 50000, namespace: "public".into(), name: "mood".into() };
    assert_eq!(parse(&type_msg(None), false, false).unwrap(), want(None));
    assert_eq!(parse(&type_msg(Some(3)), true, false).unwrap(), want(Some(3)));
}

#[test]
fn insert_with_every_datum_kind() {
    assert_eq!(
        parse(&insert_msg(None), false, false).unwrap(),
        Message::Insert { xid: None, rel: 16384, new: Tuple { columns: ROW.to_vec() } }
    );
    assert_eq!(
        parse(&insert_msg(Some(5)), true, false).unwrap(),
        Message::Insert { xid: Some(5), rel: 16384, new: Tuple { columns: ROW.to_vec() } }
    );
}

#[test]
fn insert_borrows_column_bytes() {
    let buf = insert_msg(None);
    let Message::Insert { new, .. } = parse(&buf, false, false).unwrap() else { panic!("not an insert") };
    let Datum::Text(t) = new.columns[0] else { panic!("not text") };
    assert!(buf.as_ptr_range().contains(&t.as_ptr()), "the value was copied");
}

#[test]
fn update_with_key_full_or_no_old_tuple() {
    let old = Tuple { columns: vec![Datum::Text(b"1"), Datum::Null] };
    let new = Tuple { columns: vec![Datum::Text(b"2"), Datum::Unchanged] };
    assert_eq!(
        parse(&update_msg(None, None), false, false).unwrap(),
        Message::Update { xid: None, rel: 7, old: None, new: new.clone() }
    );
    assert_eq!(
        parse(&update_msg(None, Some(b'K')), false, false).unwrap(),
        Message::Update { xid: None, rel: 7, old: Some(Old::Key(old.clone())), new: new.clone() }
    );
    let buf = update_msg(Some(8), Some(b'O'));
    let got = parse(&buf, true, false).unwrap();
    assert_eq!(got, Message::Update { xid: Some(8), rel: 7, old: Some(Old::Full(old.clone())), new });
    let Message::Update { old: Some(o), .. } = got else { panic!("no old tuple") };
    assert_eq!(o.tuple(), &old);
}

#[test]
fn delete_key_or_full() {
    let old = Tuple { columns: vec![Datum::Text(b"1"), Datum::Null] };
    assert_eq!(
        parse(&delete_msg(None, b'K'), false, false).unwrap(),
        Message::Delete { xid: None, rel: 7, old: Old::Key(old.clone()) }
    );
    assert_eq!(
        parse(&delete_msg(Some(4), b'O'), true, false).unwrap(),
        Message::Delete { xid: Some(4), rel: 7, old: Old::Full(old) }
    );
    assert_eq!(
        parse(&delete_msg(None, b'N'), false, false),
        Err(DecodeError::BadMarker(b'N', "Delete old tuple"))
    );
}

#[test]
fn truncate_and_logical_message() {
    assert_eq!(
        parse(&truncate_msg(None), false, false).unwrap(),
        Message::Truncate { xid: None, flags: 3, rels: vec![100, 200] }
    );
    assert_eq!(
        parse(&truncate_msg(Some(1)), true, false).unwrap(),
        Message::Truncate { xid: Some(1), flags: 3, rels: vec![100, 200] }
    );
    assert_eq!(
        parse(&message_msg(Some(2)), true, false).unwrap(),
        Message::LogicalMessage {
            xid: Some(2),
            transactional: true,
            lsn: 0x1234,
            prefix: "pfx",
            content: b"abc"
        }
    );
    let m = Enc::new(b'M').u8(0).u64(1).str("").u32(0).done();
    assert_eq!(
        parse(&m, false, false).unwrap(),
        Message::LogicalMessage { xid: None, transactional: false, lsn: 1, prefix: "", content: b"" }
    );
}

#[test]
fn stream_messages() {
    let s = Enc::new(b'S').u32(9).u8(1).done();
    assert_eq!(parse(&s, false, false).unwrap(), Message::StreamStart { xid: 9, first_segment: true });
    let s = Enc::new(b'S').u32(9).u8(0).done();
    assert_eq!(parse(&s, false, false).unwrap(), Message::StreamStart { xid: 9, first_segment: false });
    assert_eq!(parse(b"E", true, false).unwrap(), Message::StreamStop);
    let c = Enc::new(b'c').u32(9).u8(0).u64(0x10).u64(0x20).i64(5).done();
    assert_eq!(
        parse(&c, false, false).unwrap(),
        Message::StreamCommit { xid: 9, flags: 0, commit_lsn: 0x10, end_lsn: 0x20, commit_ts: 5 }
    );
}

#[test]
fn stream_abort_with_and_without_parallel_fields() {
    let a = Enc::new(b'A').u32(9).u32(10).done();
    assert_eq!(
        parse(&a, false, false).unwrap(),
        Message::StreamAbort { xid: 9, subxid: 10, abort_lsn: None, abort_ts: None }
    );
    let a = Enc::new(b'A').u32(9).u32(9).u64(0x40).i64(6).done();
    assert_eq!(
        parse(&a, false, true).unwrap(),
        Message::StreamAbort { xid: 9, subxid: 9, abort_lsn: Some(0x40), abort_ts: Some(6) }
    );
    // The parallel fields are required when announced.
    let short = Enc::new(b'A').u32(9).u32(9).done();
    assert!(matches!(parse(&short, false, true), Err(DecodeError::Truncated(_))));
}

#[test]
fn xid_only_inside_a_stream() {
    // Begin, Commit and the stream control messages never carry the streamed xid.
    let b = Enc::new(b'B').u64(1).i64(2).u32(3).done();
    assert_eq!(parse(&b, true, false).unwrap(), Message::Begin { final_lsn: 1, commit_ts: 2, xid: 3 });
    // A streamed Insert read as a plain one takes the xid for the relation and fails on the marker.
    let streamed = insert_msg(Some(5));
    assert!(parse(&streamed, false, false).is_err());
    // A plain Truncate read as streamed takes the count for the xid.
    assert!(parse(&truncate_msg(None), true, false).is_err());
}

#[test]
fn bad_bytes_are_errors() {
    let bad_kind = Enc::new(b'I').u32(1).u8(b'N').u16(1).u8(b'x').done();
    assert_eq!(parse(&bad_kind, false, false), Err(DecodeError::BadTuple(b'x')));
    let bad_marker = Enc::new(b'I').u32(1).u8(b'K').tuple(&[]).done();
    assert_eq!(parse(&bad_marker, false, false), Err(DecodeError::BadMarker(b'K', "Insert new tuple")));
    let bad_update = Enc::new(b'U').u32(1).u8(b'Z').tuple(&[]).done();
    assert_eq!(parse(&bad_update, false, false), Err(DecodeError::BadMarker(b'Z', "Update old tuple")));
    let bad_utf8 = Enc::new(b'O').u64(1).bytes(&[0xff, 0xfe]).u8(0).done();
    assert_eq!(parse(&bad_utf8, false, false), Err(DecodeError::Utf8("Origin name")));
    assert_eq!(parse(b"Z", false, false), Err(DecodeError::UnknownType('Z')));
    assert_eq!(parse(b"", false, false), Err(DecodeError::Truncated("message type")));
}

#[test]
fn two_phase_messages_are_refused_clearly() {
    for ty in [b'b', b'P', b'K', b'r', b'p'] {
        let e = parse(&[ty, 0, 0, 0, 0], false, false).unwrap_err();
        assert_eq!(e, DecodeError::UnknownType(char::from(ty)));
        assert!(e.to_string().contains("two_phase"), "{e}");
    }
    assert!(!DecodeError::UnknownType('Z').to_string().contains("two_phase"));
}

#[test]
fn huge_counts_fail_without_allocating() {
    let t = Enc::new(b'I').u32(1).u8(b'N').u16(u16::MAX).done();
    assert!(matches!(parse(&t, false, false), Err(DecodeError::Truncated(_))));
    let t = Enc::new(b'T').u32(u32::MAX).u8(0).done();
    assert!(matches!(parse(&t, false, false), Err(DecodeError::Truncated(_))));
    let t = Enc::new(b'I').u32(1).u8(b'N').u16(1).u8(b't').u32(u32::MAX).done();
    assert_eq!(parse(&t, false, false), Err(DecodeError::Truncated("text value")));
    let r = Enc::new(b'R').u32(1).str("s").str("t").u8(b'f').u16(u16::MAX).done();
    assert!(matches!(parse(&r, false, false), Err(DecodeError::Truncated(_))));
}

#[test]
fn every_truncated_prefix_is_an_error() {
    for (msg, in_stream, parallel) in samples() {
        assert!(parse(&msg, in_stream, parallel).is_ok(), "sample {:?} does not parse", char::from(msg[0]));
        for len in 0..msg.len() {
            assert!(
                parse(&msg[..len], in_stream, parallel).is_err(),
                "message {:?} truncated to {len} of {} bytes parsed",
                char::from(msg[0]),
                msg.len()
            );
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    for (msg, in_stream, parallel) in samples() {
        for i in 1..msg.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff, b'n', b'u', b't', b'b', b'N', b'K', b'O'] {
                let mut m = msg.clone();
                m[i] = b;
                let _ = parse(&m, in_stream, parallel);
                let _ = parse(&m, !in_stream, !parallel);
            }
        }
    }
}

#[test]
fn timestamps_to_unix_ms() {
    assert_eq!(pg_ts_to_unix_ms(0), 946_684_800_000);
    assert_eq!(pg_ts_to_unix_ms(1_999), 946_684_800_001);
    assert_eq!(pg_ts_to_unix_ms(-1), 946_684_799_999);
    assert_eq!(pg_ts_to_unix_ms(-1_000), 946_684_799_999);
    assert_eq!(pg_ts_to_unix_ms(-1_001), 946_684_799_998);
    // 2024-01-31 12:34:56.123456 UTC
    assert_eq!(pg_ts_to_unix_ms(760_019_696_123_456), 1_706_704_496_123);
}
