//! Pipeline properties with an in-process source, a sink whose deliveries finish out of
//! order after random delays (or fail), and a store that checks every commit.

use super::*;
use crate::error::Error;
use crate::event::{ChangeEvent, Op, Snapshot, Source as Src, Table, Value};
use crate::offsets::MemoryStore;
use crate::position::BinlogPosition;
use crate::sink::Delivery;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

fn pos(n: u64) -> Position {
    Position::Mysql(BinlogPosition::new("binlog.000001", n))
}

fn change(n: u64) -> SourceMessage {
    let table =
        Arc::new(Table { schema: "db".into(), name: "t".into(), columns: vec!["id".into()], key: vec![0] });
    SourceMessage::Change(ChangeEvent {
        table,
        op: Op::Create,
        before: None,
        after: Some(vec![Value::UInt(n)]),
        ts_ms: 0,
        snapshot: Snapshot::No,
        source: Src::Mysql {
            server_id: 1,
            gtid: None,
            file: "binlog.000001".into(),
            pos: n,
            row: 0,
            thread: None,
        },
        transaction: None,
    })
}

/// Transactions of `per_tx` changes at positions 1.. with a Commit at each end; then either
/// pends forever (a live stream) or ends.
struct ScriptSource {
    script: std::collections::VecDeque<SourceMessage>,
    end: bool,
    acks: Vec<Position>,
}

fn script(txs: u64, per_tx: u64, end: bool) -> ScriptSource {
    let mut script = std::collections::VecDeque::new();
    let mut n = 0;
    for _ in 0..txs {
        for _ in 0..per_tx {
            n += 1;
            script.push_back(change(n));
        }
        script.push_back(SourceMessage::Commit(pos(n)));
    }
    ScriptSource { script, end, acks: vec![] }
}

impl crate::source::Source for ScriptSource {
    async fn next(&mut self) -> Result<SourceMessage> {
        match self.script.pop_front() {
            Some(m) => Ok(m),
            None if self.end => Ok(SourceMessage::End),
            None => std::future::pending().await,
        }
    }
    async fn ack(&mut self, upto: &Position) -> Result<()> {
        self.acks.push(upto.clone());
        Ok(())
    }
}

/// Positions (the `id` of each record) durably delivered, shared with the checking store.
type Delivered = Arc<Mutex<BTreeSet<u64>>>;

struct SlowSink {
    delivered: Delivered,
    batches: usize,
    fail_batch: Option<usize>,
}

fn ids(batch: &Batch) -> Vec<u64> {
    batch
        .records
        .iter()
        .map(|r| {
            let key: serde_json::Value = serde_json::from_slice(r.key.as_ref().unwrap()).unwrap();
            key["id"].as_u64().unwrap()
        })
        .collect()
}

impl Sink for SlowSink {
    async fn send(&mut self, batch: Batch) -> Result<Delivery> {
        self.batches += 1;
        let fail = self.fail_batch == Some(self.batches);
        let ids = ids(&batch);
        let delivered = self.delivered.clone();
        let delay = Duration::from_millis(fastrand::u64(0..15));
        Ok(Box::pin(async move {
            tokio::time::sleep(delay).await;
            if fail {
                return Err(Error::unavailable("injected delivery failure"));
            }
            delivered.lock().unwrap().extend(ids);
            Ok(())
        }))
    }
}

/// Fails the test when an offset is committed past a record that is not yet delivered.
struct CheckingStore {
    inner: MemoryStore,
    delivered: Delivered,
}

impl OffsetStore for CheckingStore {
    fn load(&self) -> Result<Option<Position>> {
        self.inner.load()
    }
    fn commit(&mut self, p: &Position) -> Result<()> {
        let Position::Mysql(b) = p else { unreachable!() };
        let delivered = self.delivered.lock().unwrap();
        let missing: Vec<u64> = (1..=b.pos).filter(|i| !delivered.contains(i)).collect();
        assert!(missing.is_empty(), "offset {} committed before records {missing:?} were delivered", b.pos);
        self.inner.commit(p)
    }
    fn reset(&mut self) -> Result<()> {
        self.inner.reset()
    }
}

fn small() -> Settings {
    Settings {
        max_batch_records: 7,
        linger: Duration::from_millis(2),
        offset_flush_interval: Duration::from_millis(1),
        max_in_flight: 3,
        ..Settings::default()
    }
}

fn setup(fail_batch: Option<usize>) -> (SlowSink, CheckingStore, Delivered) {
    let delivered = Delivered::default();
    let sink = SlowSink { delivered: delivered.clone(), batches: 0, fail_batch };
    (sink, CheckingStore { inner: MemoryStore::default(), delivered: delivered.clone() }, delivered)
}

fn stored_pos(store: &CheckingStore) -> u64 {
    match store.inner.position.as_ref().unwrap() {
        Position::Mysql(b) => b.pos,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn offsets_never_pass_undelivered_records_and_advance_in_order() {
    let (mut sink, mut store, delivered) = setup(None);
    let mut source = script(200, 3, true);
    let mut enc = Encoder::new("t", "t", false);
    let stopped =
        run(&mut source, &mut sink, &mut store, &mut enc, &small(), std::future::pending()).await.unwrap();
    assert_eq!(stopped, Stopped::End);
    assert_eq!(delivered.lock().unwrap().len(), 600);
    assert_eq!(stored_pos(&store), 600);
    let history: Vec<u64> = store
        .inner
        .history
        .iter()
        .map(|p| match p {
            Position::Mysql(b) => b.pos,
            _ => 0,
        })
        .collect();
    assert!(history.len() > 5, "offsets should advance during the run: {history:?}");
    assert!(history.windows(2).all(|w| w[0] < w[1]), "acknowledgements out of order: {history:?}");
    assert!(history.iter().all(|p| p % 3 == 0), "offset inside a transaction: {history:?}");
    assert_eq!(source.acks, store.inner.history, "source acked exactly what was stored, in order");
}

#[tokio::test]
async fn failed_delivery_stops_and_keeps_the_offset_behind_it() {
    let (mut sink, mut store, delivered) = setup(Some(5));
    let mut source = script(100, 3, true);
    let mut enc = Encoder::new("t", "t", false);
    let err = run(&mut source, &mut sink, &mut store, &mut enc, &small(), std::future::pending())
        .await
        .unwrap_err();
    assert!(err.is_transient());
    // Batch 5 holds records 29..=35 (7 per batch): the offset must stay below 29.
    let stored = store.inner.position.as_ref().map_or(0, |_| stored_pos(&store));
    assert!(stored < 29, "stored {stored} passes the failed batch");
    assert!(!delivered.lock().unwrap().contains(&29));
}

#[tokio::test]
async fn graceful_stop_stores_the_last_delivered_commit_and_nothing_after_it() {
    let (mut sink, mut store, delivered) = setup(None);
    // 10 changes per transaction so a stop lands inside one; the stream then pends.
    let mut source = script(50, 10, false);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = rx.await;
    };
    let mut enc = Encoder::new("t", "t", false);
    let settings = small();
    let runner = run(&mut source, &mut sink, &mut store, &mut enc, &settings, stop);
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(3)).await;
        tx.send(()).unwrap();
    };
    let (stopped, ()) = tokio::join!(runner, stopper);
    assert_eq!(stopped.unwrap(), Stopped::Shutdown);
    let stored = stored_pos(&store);
    assert_eq!(stored % 10, 0, "stopped inside a transaction: {stored}");
    let delivered = delivered.lock().unwrap();
    let max = *delivered.iter().max().unwrap();
    assert_eq!(max, stored, "records after the stored offset were sent: a restart would duplicate them");
    assert_eq!(delivered.len() as u64, stored);
}
