//! The reader on hand-made events, as a MariaDB or MySQL server sends them: file tracking
//! across server restarts, held XA and savepoint changes, partial row images, the statement
//! guard, MariaDB compressed events; MySQL-only shapes in `tests/mysql.rs`.

use super::*;
use crate::config::{Config, Flags};
use crate::event::Source;
use crate::position::Position;
use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::FormatDescriptionEvent;

const TS: u32 = 1_700_000_000;

/// Post-header lengths of a MariaDB 10.11 format description, types 1..=171.
fn fde() -> FormatDescriptionEvent<'static> {
    let mut lengths = vec![0u8; 171];
    for (ty, len) in
        [(2, 13), (4, 8), (15, 84), (16, 0), (19, 8), (23, 8), (24, 8), (25, 8), (30, 10), (31, 10), (33, 42)]
    {
        lengths[ty - 1] = len;
    }
    for (ty, len) in [(165, 13), (166, 8), (167, 8), (168, 8), (169, 10), (170, 10), (171, 10)] {
        lengths[ty - 1] = len;
    }
    FormatDescriptionEvent::new(BinlogVersion::Version4).with_event_type_header_lengths(lengths)
}

fn event(ty: u8, log_pos: u32, body: &[u8]) -> Event {
    let mut b = TS.to_le_bytes().to_vec();
    b.push(ty);
    b.extend(1u32.to_le_bytes());
    b.extend((19 + body.len() as u32).to_le_bytes());
    b.extend(log_pos.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(body);
    Event::read(&fde(), &b[..]).unwrap()
}

fn rotate(log_pos: u32, pos: u64, name: &str) -> Event {
    let mut body = pos.to_le_bytes().to_vec();
    body.extend(name.as_bytes());
    event(4, log_pos, &body)
}

fn format_description() -> Event {
    let mut body = 4u16.to_le_bytes().to_vec();
    let mut version = b"5.5.0-test".to_vec();
    version.resize(50, 0);
    body.extend(version);
    body.extend(0u32.to_le_bytes());
    body.push(19);
    body.extend([56, 13, 0, 8, 0, 18, 0, 4, 4, 4, 4, 18, 0, 0, 84, 0, 4, 26, 8, 0, 0, 0, 8, 8, 8]);
    event(15, 0, &body)
}

/// MariaDB GTID event `0-1-seq` ending at `log_pos`, with `flags` and optional XID bytes.
fn gtid(seq: u64, flags: u8, xid: &[u8], log_pos: u32) -> Event {
    gtid_in(0, seq, flags, xid, log_pos)
}

/// As [`gtid`], in replication domain `domain`.
fn gtid_in(domain: u32, seq: u64, flags: u8, xid: &[u8], log_pos: u32) -> Event {
    let mut body = seq.to_le_bytes().to_vec();
    body.extend(domain.to_le_bytes());
    body.push(flags);
    body.extend(xid);
    if xid.is_empty() {
        body.extend([0u8; 6]);
    }
    event(162, log_pos, &body)
}

fn query(sql: &str, log_pos: u32) -> Event {
    query_with_vars(sql, &[], log_pos)
}

fn query_with_vars(sql: &str, vars: &[u8], log_pos: u32) -> Event {
    let mut body = 7u32.to_le_bytes().to_vec(); // thread id
    body.extend(0u32.to_le_bytes());
    body.push(4); // "shop"
    body.extend(0u16.to_le_bytes());
    body.extend((vars.len() as u16).to_le_bytes());
    body.extend(vars);
    body.extend(b"shop\0");
    body.extend(sql.as_bytes());
    event(2, log_pos, &body)
}

fn xid(log_pos: u32) -> Event {
    event(16, log_pos, &9u64.to_le_bytes())
}

/// TABLE_MAP of `shop.t (id INT PRIMARY KEY, v INT)` with full metadata.
fn table_map(log_pos: u32) -> Event {
    let mut b = vec![42, 0, 0, 0, 0, 0, 1, 0];
    b.extend([4, b's', b'h', b'o', b'p', 0, 1, b't', 0]);
    b.extend([2, 3, 3, 0, 0b10]); // 2 columns, LONG LONG, no type metadata, v nullable
    b.extend([4, 5, 2, b'i', b'd', 1, b'v']); // COLUMN_NAME
    b.extend([8, 1, 0]); // SIMPLE_PRIMARY_KEY: column 0
    event(19, log_pos, &b)
}

/// WRITE_ROWS_V1 of `(id, v)` rows; `present` is the columns-present bitmap.
fn write_rows(rows: &[(i32, i32)], present: u8, log_pos: u32) -> Event {
    event(23, log_pos, &rows_body(rows, present))
}

fn rows_body(rows: &[(i32, i32)], present: u8) -> Vec<u8> {
    let mut b = vec![42, 0, 0, 0, 0, 0, 1, 0, 2, present];
    for (id, v) in rows {
        b.push(0); // no nulls
        b.extend(id.to_le_bytes());
        if present == 0b11 {
            b.extend(v.to_le_bytes());
        }
    }
    b
}

fn reader(tables: &str) -> Reader {
    let flags = Flags {
        source: Some("mysql".into()),
        source_url: Some("mysql://u@h".into()),
        tables: Some(tables.into()),
        ..Flags::default()
    };
    let config = Config::resolve(&flags).unwrap();
    let mut start = BinlogPosition::new("binlog.000001", 4);
    start.gtid_set = Some("0-1-4".into());
    Reader::new(Filter::new(&config), &start, Some("1".into()))
}

fn feed(r: &mut Reader, events: &[Event]) -> Result<Vec<SourceMessage>> {
    let mut out = vec![];
    for ev in events {
        r.on_event(ev, &mut out)?;
    }
    Ok(out)
}

/// `(file, pos, gtid_set)` of each commit, `id` of each change.
fn summary(out: &[SourceMessage]) -> Vec<String> {
    out.iter()
        .map(|m| match m {
            SourceMessage::Change(c) => {
                let Source::Mysql { file, .. } = &c.source else { unreachable!() };
                format!("{} {:?} in {file}", c.op.code(), c.after.as_ref().or(c.before.as_ref()).unwrap()[0])
            }
            SourceMessage::Commit(Position::Mysql(p)) => {
                let replay = p.replay_from.as_ref().map(|r| {
                    format!(" replay from {}:{} {}", r.file, r.pos, r.gtid_set.as_deref().unwrap_or("-"))
                });
                format!(
                    "commit {}:{} {} @{}{}",
                    p.file,
                    p.pos,
                    p.gtid_set.as_deref().unwrap_or("-"),
                    p.server.as_deref().unwrap_or("-"),
                    replay.unwrap_or_default()
                )
            }
            other => format!("{other:?}"),
        })
        .collect()
}

fn insert_tx(seq: u64, id: i32, at: u32) -> Vec<Event> {
    vec![
        gtid(seq, 0, &[], at),
        query("BEGIN", at + 10),
        table_map(at + 20),
        write_rows(&[(id, 0)], 0b11, at + 30),
        xid(at + 40),
    ]
}

#[test]
fn the_opening_rotate_loses_its_checksum_bytes() {
    // As MariaDB sends it before the format description: name, then the CRC32 of it all.
    let mut body = 4u64.to_le_bytes().to_vec();
    body.extend(b"binlog.000007");
    let mut b = 0u32.to_le_bytes().to_vec();
    b.push(4);
    b.extend(1u32.to_le_bytes());
    b.extend((19 + body.len() as u32 + 4).to_le_bytes());
    b.extend([0, 0, 0, 0, 0x20, 0]);
    b.extend(&body);
    let mut crc = flate2::Crc::new();
    crc.update(&b);
    b.extend(crc.sum().to_le_bytes());
    let ev = Event::read(&fde(), &b[..]).unwrap();
    let mut r = reader("shop.*");
    feed(&mut r, &[ev, format_description()]).unwrap();
    assert_eq!(r.file(), "binlog.000007");
    // without a checksum the name is taken whole
    let mut r = reader("shop.*");
    feed(&mut r, &[rotate(0, 4, "binlog.000008")]).unwrap();
    assert_eq!(r.file(), "binlog.000008");
}

#[test]
fn files_follow_artificial_rotates_after_a_server_restart() {
    let mut r = reader("shop.*");
    let mut evs = vec![rotate(0, 4, "binlog.000001"), format_description()];
    evs.extend(insert_tx(5, 1, 300));
    // The server restarted: file 1 ends with STOP, the dump announces file 2 artificially.
    evs.extend([event(3, 400, &[]), rotate(0, 4, "binlog.000002"), format_description()]);
    evs.extend(insert_tx(6, 2, 500));
    // A real rotate at the end of file 2.
    evs.push(rotate(700, 4, "binlog.000003"));
    let out = feed(&mut r, &evs).unwrap();
    assert_eq!(
        summary(&out),
        [
            "c Int(1) in binlog.000001",
            "commit binlog.000001:340 0-1-5 @1",
            "commit binlog.000002:4 0-1-5 @1",
            "c Int(2) in binlog.000002",
            "commit binlog.000002:540 0-1-6 @1",
            "commit binlog.000003:4 0-1-6 @1",
        ]
    );
    // The table map cache was cleared at the rotate: a rows event needs its map again.
    let err = feed(&mut r, &[write_rows(&[(3, 0)], 0b11, 800)]).unwrap_err();
    assert!(err.to_string().contains("without its table map"), "{err}");
}

/// A stream that opens and prepares XA transaction `xa` inserting id 1, as MariaDB logs it.
fn prepared_body(xa: &[u8]) -> Vec<Event> {
    let prepare = event(38, 140, &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'x']);
    vec![
        rotate(0, 4, "binlog.000001"),
        format_description(),
        gtid(5, 64 | 4, xa, 100),
        table_map(110),
        write_rows(&[(1, 0)], 0b11, 120),
        query("XA END X'78',X'',1", 130),
        prepare,
    ]
}

#[test]
fn prepared_xa_is_held_until_commit_and_caps_the_offset() {
    let xa = [1, 0, 0, 0, 1, 0, b'x']; // formatID 1, gtrid "x", bqual ""
    let mut r = reader("shop.*");
    let mut evs = prepared_body(&xa);
    evs.extend(insert_tx(6, 2, 200));
    let out = feed(&mut r, &evs).unwrap();
    // Nothing of the prepared body yet; every commit names where to read again from: before
    // the body (GTID 0-1-4).
    assert_eq!(
        summary(&out),
        [
            "commit binlog.000001:140 0-1-5 @1 replay from binlog.000001:61 0-1-4",
            "c Int(2) in binlog.000001",
            "commit binlog.000001:240 0-1-6 @1 replay from binlog.000001:61 0-1-4"
        ]
    );
    let commit = [gtid(7, 128 | 4 | 1, &xa, 300), query("XA COMMIT X'78',X'',1", 350)];
    let out = feed(&mut r, &commit).unwrap();
    assert_eq!(summary(&out), ["c Int(1) in binlog.000001", "commit binlog.000001:350 0-1-7 @1"]);

    // The same prepared body rolled back: nothing is delivered.
    let mut r = reader("shop.*");
    let mut evs = prepared_body(&xa);
    evs.extend([gtid(6, 128 | 4 | 1, &xa, 300), query("XA ROLLBACK X'78',X'',1", 350)]);
    let out = feed(&mut r, &evs).unwrap();
    assert_eq!(
        summary(&out),
        [
            "commit binlog.000001:140 0-1-5 @1 replay from binlog.000001:61 0-1-4",
            "commit binlog.000001:350 0-1-6 @1"
        ]
    );

    // An XA COMMIT whose PREPARE was never read stops instead of skipping its rows.
    let err =
        feed(&mut reader("shop.*"), &[gtid(8, 128 | 4 | 1, &xa, 300), query("XA COMMIT X'78',X'',1", 350)])
            .unwrap_err();
    assert_eq!(err.kind(), Kind::Encode);
    assert!(err.to_string().contains("XA COMMIT X'78',X'',1"), "{err}");
}

/// The stream of two overlapping XA transactions `x` (prepared at 100..140) and `y`
/// (prepared at 400..440), a plain insert between them, `XA COMMIT x`, another insert, then
/// `XA COMMIT y`.
fn overlapping_xa() -> Vec<Event> {
    let (x, y) = ([1, 0, 0, 0, 1, 0, b'x'], [1, 0, 0, 0, 1, 0, b'y']);
    let prepare = |c: u8, at| event(38, at, &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, c]);
    let mut evs = prepared_body(&x);
    evs.extend(insert_tx(6, 2, 200));
    evs.extend([gtid(7, 64 | 4, &y, 400), table_map(410), write_rows(&[(3, 0)], 0b11, 420)]);
    evs.extend([query("XA END X'79',X'',1", 430), prepare(b'y', 440)]);
    evs.extend(insert_tx(8, 4, 500));
    evs.extend([gtid(9, 128 | 4 | 1, &x, 600), query("XA COMMIT X'78',X'',1", 650)]);
    evs.extend(insert_tx(10, 5, 700));
    evs.extend([gtid(11, 128 | 4 | 1, &y, 800), query("XA COMMIT X'79',X'',1", 850)]);
    evs
}

#[test]
fn a_restart_with_prepared_xa_reads_again_and_delivers_each_change_once() {
    // A first run: every change once, in commit order; the last commit before `XA COMMIT y`
    // asks to read again from before y's body.
    let mut r = reader("shop.*");
    let all = overlapping_xa();
    let out = feed(&mut r, &all).unwrap();
    let changes: Vec<String> = summary(&out).into_iter().filter(|s| !s.starts_with("commit")).collect();
    let ids = |v: &[String]| v.iter().map(|s| s.split(' ').nth(1).unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&changes), ["Int(2)", "Int(4)", "Int(1)", "Int(5)", "Int(3)"]);
    let stored = out
        .iter()
        .filter_map(|m| match m {
            SourceMessage::Commit(Position::Mysql(p)) if p.pos == 740 => Some(p.clone()),
            _ => None,
        })
        .next()
        .unwrap();
    let replay = stored.replay_from.clone().expect("y is still prepared");
    assert_eq!(
        (replay.file.as_str(), replay.pos, replay.gtid_set.as_deref()),
        ("binlog.000001", 361, Some("0-1-6"))
    );
    // The restart after that commit reads from y's body: x's commit is not an unknown XA
    // (no 65), nothing delivered before the crash comes again, y arrives at its commit.
    let mut again = Reader::new(r.filter.clone(), &stored, Some("1".into()));
    let from_y = all.iter().skip_while(|e| e.header().log_pos() != 400).cloned().collect::<Vec<_>>();
    let mut evs = vec![rotate(0, 361, "binlog.000001"), format_description()];
    evs.extend(from_y);
    let out = feed(&mut again, &evs).unwrap();
    assert_eq!(summary(&out), ["c Int(3) in binlog.000001", "commit binlog.000001:850 0-1-11 @1"]);
    // The same after a failover: on server 2 the coordinates mean nothing, the GTIDs decide.
    let mut elsewhere = Reader::new(r.filter.clone(), &stored, Some("2".into()));
    let out = feed(&mut elsewhere, &evs).unwrap();
    assert_eq!(summary(&out), ["c Int(3) in binlog.000001", "commit binlog.000001:850 0-1-11 @2"]);
}

#[test]
fn rows_rolled_back_to_a_savepoint_are_dropped() {
    let mut r = reader("shop.*");
    let evs = [
        gtid(5, 4, &[], 100),
        query("BEGIN", 110),
        table_map(120),
        write_rows(&[(1, 0)], 0b11, 130),
        query("SAVEPOINT `s1`", 140),
        write_rows(&[(2, 0)], 0b11, 150),
        query("ROLLBACK TO `s1`", 160),
        write_rows(&[(3, 0)], 0b11, 170),
        xid(180),
    ];
    let out = feed(&mut r, &evs).unwrap();
    assert_eq!(
        summary(&out),
        ["c Int(1) in binlog.000001", "c Int(3) in binlog.000001", "commit binlog.000001:180 0-1-5 @1"]
    );
    let SourceMessage::Change(c) = &out[1] else { unreachable!() };
    assert_eq!(c.transaction.as_ref().unwrap().total_order, 2, "order continues from the savepoint");
    // A full ROLLBACK: the rows held since the savepoint were undone too.
    let evs = [
        gtid(6, 4, &[], 200),
        query("BEGIN", 210),
        table_map(220),
        query("SAVEPOINT `s1`", 230),
        write_rows(&[(5, 0)], 0b11, 240),
        query("ROLLBACK", 250),
    ];
    let out = feed(&mut r, &evs).unwrap();
    assert_eq!(summary(&out), ["commit binlog.000001:250 0-1-6 @1"]);
}

#[test]
fn a_partial_row_image_stops_naming_table_position_and_setting() {
    let mut r = reader("shop.*");
    let err = feed(
        &mut r,
        &[gtid(5, 4, &[], 100), query("BEGIN", 110), table_map(120), write_rows(&[(1, 0)], 0b01, 130)],
    )
    .unwrap_err();
    assert_eq!(err.kind(), Kind::Encode);
    let msg = err.to_string();
    assert!(msg.contains("shop.t") && msg.contains("binlog.000001:") && msg.contains("missing v"), "{msg}");
    assert!(msg.contains("binlog_row_image=FULL"), "{msg}");
}

#[test]
fn statement_logged_dml_is_judged_by_what_it_can_change() {
    let stop = |tables: &str, sql: &str, vars: &[u8]| {
        let mut r = reader(tables);
        feed(&mut r, &[gtid(5, 1, &[], 100), query_with_vars(sql, vars, 200)]).err().map(|e| e.to_string())
    };
    assert!(stop("shop.t", "UPDATE t1, t2 SET t1.a = t2.a", &[]).unwrap().contains("a table of shop"));
    assert!(stop("shop.t", "UPDATE t SET v = 1", &[]).unwrap().contains("shop.t"));
    assert!(stop("shop.t", "INSERT INTO other VALUES (1)", &[]).is_none(), "another table of the database");
    assert!(stop("crm.*", "UPDATE t1 JOIN crm.t2 USING (id) SET t1.a = 1", &[]).is_some());
    assert!(stop("shop.T", "update T set v = 1", &[]).is_some());
    assert!(stop("Shop.T", "update shop.t set v = 1", &[]).is_some(), "lower_case_table_names");
    assert!(stop("Shop.*", "UPDATE a JOIN b SET a.v = 1", &[]).is_some());
    // MySQL says which databases changed (Q_UPDATED_DB_NAMES): only "crm" here.
    let crm = [12, 1, b'c', b'r', b'm', 0];
    assert!(stop("shop.*", "WITH c AS (SELECT 1) UPDATE crm.t JOIN c SET v = 1", &crm).is_none());
    assert!(stop("crm.*", "WITH c AS (SELECT 1) UPDATE crm.t JOIN c SET v = 1", &crm).is_some());
}

#[test]
fn mariadb_compressed_query_and_rows_events_decode_as_plain_ones() {
    let compress = super::compressed::tests::compress;
    let mut r = reader("shop.*");
    // QUERY_COMPRESSED: the query text compressed after the db name.
    let mut q = 7u32.to_le_bytes().to_vec();
    q.extend(0u32.to_le_bytes());
    q.extend([4, 0, 0, 0, 0]);
    q.extend(b"shop\0");
    q.extend(compress(b"BEGIN"));
    // WRITE_ROWS_COMPRESSED_V1: the row images compressed after the bitmap.
    let plain = rows_body(&[(1, 10), (2, 20)], 0b11);
    let mut rows = plain[..10].to_vec();
    rows.extend(compress(&plain[10..]));
    let evs = [gtid(5, 4, &[], 100), event(165, 110, &q), table_map(120), event(166, 130, &rows), xid(140)];
    let out = feed(&mut r, &evs).unwrap();
    assert_eq!(
        summary(&out),
        ["c Int(1) in binlog.000001", "c Int(2) in binlog.000001", "commit binlog.000001:140 0-1-5 @1"]
    );
    let SourceMessage::Change(c) = &out[0] else { unreachable!() };
    let Source::Mysql { pos, .. } = c.source else { unreachable!() };
    assert_eq!(pos, 130 - 19 - rows.len() as u64, "the compressed event's own start");
    let mut bad = rows.clone();
    bad.truncate(rows.len() - 3);
    let err = feed(&mut reader("shop.*"), &[table_map(120), event(166, 130, &bad)]).unwrap_err();
    assert!(err.to_string().contains("decompress") && err.to_string().contains("binlog.000001:"), "{err}");
}

#[test]
fn after_a_failover_every_group_is_judged_by_its_gtid() {
    // Stored on server 1: delivered through 0-1-6 and 1-1-20, x prepared at 0-1-5.
    let mut stored = BinlogPosition::new("binlog.000009", 9000);
    stored.gtid_set = Some("0-1-6,1-1-20".into());
    stored.server = Some("1".into());
    stored.replay_from = Some(Box::new(crate::position::ReplayFrom {
        file: "binlog.000009".into(),
        pos: 100,
        gtid_set: Some("0-1-4,1-1-20".into()),
    }));
    let mut r = Reader::new(reader("shop.*").filter, &stored, Some("2".into()));
    let xa = [1, 0, 0, 0, 1, 0, b'x'];
    // Server 2 logged domain 1's transaction after domain 0's newer ones.
    let mut evs = prepared_body(&xa);
    evs.extend(insert_tx(6, 2, 200));
    evs.extend([
        gtid(7, 4, &[], 300),
        query("BEGIN", 310),
        table_map(320),
        write_rows(&[(7, 0)], 0b11, 330),
        xid(340),
    ]);
    evs.extend([gtid_in(1, 20, 4, &[], 400), query("BEGIN", 410), table_map(420)]);
    evs.extend([write_rows(&[(20, 0)], 0b11, 430), xid(440)]);
    let out = feed(&mut r, &evs).unwrap();
    let ids: Vec<String> = summary(&out).into_iter().filter(|s| !s.starts_with("commit")).collect();
    assert_eq!(ids, ["c Int(7) in binlog.000001"], "1-1-20 was delivered before the failover");
}

mod mysql;
