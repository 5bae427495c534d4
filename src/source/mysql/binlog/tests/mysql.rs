//! MySQL-only shapes on hand-made events: transaction payloads, (tagged) GTID events and
//! the executed set, anonymous GTIDs, an XA body's GTID set.

use super::*;
use mysql_common::binlog::consts::TransactionPayloadCompressionType;
use mysql_common::binlog::events::{GtidEvent, TransactionPayloadEvent};
use mysql_common::proto::MySerialize;

#[test]
fn events_inside_a_transaction_payload_take_the_payload_position() {
    let mut r = reader("shop.*");
    let payload = TransactionPayloadEvent::new(0, TransactionPayloadCompressionType::NONE, 0, &[][..]);
    let mut body = vec![];
    payload.serialize(&mut body);
    let inner = [query("BEGIN", 0), table_map(0), write_rows(&[(1, 0)], 0b11, 0), xid(0)];
    let mut evs = vec![gtid(5, 4, &[], 1000), event(40, 2000, &body)];
    evs.extend(inner);
    let out = feed(&mut r, &evs).unwrap();
    assert_eq!(summary(&out), ["c Int(1) in binlog.000001", "commit binlog.000001:2000 0-1-5 @1"]);
    let SourceMessage::Change(c) = &out[0] else { unreachable!() };
    let Source::Mysql { pos, .. } = c.source else { unreachable!() };
    assert_eq!(pos, 2000 - 19 - body.len() as u64, "the payload event's start");
    // A payload mysql_async could not decompress yields no inner events: never skipped.
    let err =
        feed(&mut r, &[gtid(6, 4, &[], 2100), event(40, 2200, &body), gtid(7, 4, &[], 2300)]).unwrap_err();
    assert!(err.to_string().contains("payload gave no events"), "{err}");
}

#[test]
fn mysql_gtids_grow_the_executed_set_and_stamp_the_commit_time() {
    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    let sid: [u8; 16] = *uuid_bytes(A);
    let gtid_event = |ev: GtidEvent, ty: u8, log_pos: u32| {
        let mut body = vec![];
        ev.serialize(&mut body);
        event(ty, log_pos, &body)
    };
    let mut r = mysql_reader(A);
    let committed_us = 1_700_000_123_456_789u64;
    let first = GtidEvent::new(sid, 6).with_lc_typecode().with_immediate_commit_timestamp(committed_us);
    let tag = mysql_common::packets::Tag::new("t1").unwrap();
    let tagged =
        GtidEvent::new_tagged(sid, tag, 1).with_lc_typecode().with_immediate_commit_timestamp(committed_us);
    let mut evs = vec![gtid_event(first, 33, 100), query("BEGIN", 110), table_map(120)];
    evs.extend([write_rows(&[(1, 0)], 0b11, 130), xid(140)]);
    evs.extend([
        gtid_event(tagged, 42, 200),
        query("BEGIN", 210),
        table_map(220),
        write_rows(&[(2, 0)], 0b11, 230),
    ]);
    evs.push(xid(240));
    let out = feed(&mut r, &evs).unwrap();
    let commits: Vec<String> = summary(&out).into_iter().filter(|s| s.starts_with("commit")).collect();
    assert_eq!(
        commits,
        [
            format!("commit binlog.000001:140 {A}:1-6 @{A}"),
            format!("commit binlog.000001:240 {A}:1-6,{A}:t1:1 @{A}")
        ]
    );
    let SourceMessage::Change(c) = &out[0] else { unreachable!() };
    assert_eq!(c.ts_ms, (committed_us / 1000) as i64, "the commit time, not the rows event's second");
    let Source::Mysql { gtid, .. } = &c.source else { unreachable!() };
    assert_eq!(gtid.as_deref(), Some(format!("{A}:6").as_str()));
    let SourceMessage::Change(c) = &out[2] else { unreachable!() };
    let Source::Mysql { gtid, .. } = &c.source else { unreachable!() };
    assert_eq!(gtid.as_deref(), Some(format!("{A}:t1:1").as_str()));
}

fn uuid_bytes(text: &str) -> Box<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let v: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    Box::new(v.try_into().unwrap())
}

#[test]
fn transactions_without_gtids_get_their_own_ids_and_order() {
    let anonymous = |log_pos| {
        let ev =
            mysql_common::binlog::events::AnonymousGtidEvent(GtidEvent::new([0; 16], 0).with_lc_typecode());
        let mut body = vec![];
        ev.serialize(&mut body);
        event(34, log_pos, &body)
    };
    let mut r = reader("shop.*");
    let mut evs = vec![
        anonymous(100),
        query("BEGIN", 110),
        table_map(120),
        write_rows(&[(1, 0), (2, 0)], 0b11, 130),
        xid(140),
    ];
    evs.extend([
        anonymous(200),
        query("BEGIN", 210),
        table_map(220),
        write_rows(&[(3, 0)], 0b11, 230),
        xid(240),
    ]);
    let out = feed(&mut r, &evs).unwrap();
    let tx: Vec<(String, u64)> = out
        .iter()
        .filter_map(|m| match m {
            SourceMessage::Change(c) => c.transaction.as_ref().map(|t| (t.id.to_string(), t.total_order)),
            _ => None,
        })
        .collect();
    assert_eq!(tx[0].1, 1);
    assert_eq!(tx[1].1, 2);
    assert_eq!(tx[2].1, 1, "order starts again: {tx:?}");
    assert_ne!(tx[0].0, tx[2].0, "each transaction has its own id: {tx:?}");
}

#[test]
fn a_mysql_xa_body_is_re_read_from_the_gtid_set_before_it() {
    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    let mut r = mysql_reader(A);
    let mut body = vec![];
    GtidEvent::new(*uuid_bytes(A), 6).with_lc_typecode().serialize(&mut body);
    let evs = [
        event(33, 100, &body),
        query("XA START X'78',X'',1", 110),
        table_map(120),
        write_rows(&[(1, 0)], 0b11, 130),
        query("XA END X'78',X'',1", 140),
        event(38, 150, &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'x']),
    ];
    let out = feed(&mut r, &evs).unwrap();
    let at = 100 - 19 - body.len() as u64;
    assert_eq!(
        summary(&out),
        [format!("commit binlog.000001:150 {A}:1-6 @{A} replay from binlog.000001:{at} {A}:1-5")],
        "read again from {A}:1-5, not 1-6"
    );
}

/// A reader of `shop.*` on MySQL server `uuid`, from an executed set `uuid:1-5`.
fn mysql_reader(uuid: &str) -> Reader {
    let mut start = BinlogPosition::new("binlog.000001", 4);
    start.gtid_set = Some(format!("{uuid}:1-5"));
    Reader::new(reader("shop.*").filter, &start, Some(uuid.into()))
}
