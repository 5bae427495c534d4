//! A fault-injecting HTTP proxy in front of kinesis-mock (no emulator fails entries): it
//! fails a share of PutRecords entries (not forwarding them; some keys several times in a
//! row), answers the rest with the emulator's own results, and records every limit or
//! ordering rule a request breaks: over 500 entries or 5 MiB, two entries of one key in a
//! request, or a key already in flight in another request (for KPL aggregates, the keys
//! inside them). It can also say a stream is still CREATING, or refuse to describe it.

use base64::Engine;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// PutRecords requests.
    pub requests: usize,
    /// Entries failed on purpose.
    pub failed: usize,
    /// Broken rules, in words.
    pub violations: Vec<String>,
    in_flight: HashSet<String>,
    /// Consecutive failures per key (some keys fail several times in a row).
    streak: HashMap<String, u32>,
    /// Until then every PutRecords is throttled: the whole request (400) or every entry.
    pub throttle_until: Option<std::time::Instant>,
    /// Requests refused whole while throttling.
    pub throttled: usize,
    /// Share of PutRecords whose answer is lost after the emulator stored the records:
    /// half of them answered 500, half with a dropped connection.
    pub lose_answers: f64,
    /// Answers lost on purpose.
    pub lost_answers: usize,
    /// Answer DescribeStreamSummary with AccessDenied.
    pub deny: bool,
    /// Until then DescribeStreamSummary says the stream is CREATING.
    pub creating_until: Option<std::time::Instant>,
    /// KPL aggregates seen, and the records inside them.
    pub aggregates: usize,
    pub aggregated_records: usize,
}

/// A running proxy; `url` is the endpoint to give cdc.
pub struct Proxy {
    pub url: String,
    pub stats: Arc<Mutex<Stats>>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `upstream` (`host:port`), failing
    /// about `rate` of the entries.
    pub async fn start(upstream: &str, rate: f64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (up, st) = (upstream.to_owned(), stats.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(conn, up.clone(), st.clone(), rate));
            }
        });
        Proxy { url, stats }
    }
}

/// One HTTP/1.1 message: head lines and body.
async fn read_message(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let start = end + 4;
            if chunked {
                if let Some((body, used)) = dechunk(&buf[start..]) {
                    buf.drain(..start + used);
                    return Some((head, body));
                }
            } else if buf.len() >= start + len {
                let body = buf[start..start + len].to_vec();
                buf.drain(..start + len);
                return Some((head, body));
            }
        }
        let mut chunk = [0u8; 65536];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A chunked body, and how many bytes it used; None while incomplete.
fn dechunk(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut body, mut i) = (Vec::new(), 0);
    loop {
        let line_end = data[i..].windows(2).position(|w| w == b"\r\n")? + i;
        let size = usize::from_str_radix(std::str::from_utf8(&data[i..line_end]).ok()?.trim(), 16).ok()?;
        let start = line_end + 2;
        if size == 0 {
            return Some((body, start + 2));
        }
        if data.len() < start + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[start..start + size]);
        i = start + size + 2;
    }
}

/// Sends `head` + `body` upstream on a fresh connection; the answer's status line and body.
async fn forward(upstream: &str, head: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut up = TcpStream::connect(upstream).await.unwrap();
    let mut out = String::new();
    for (i, line) in head.lines().enumerate() {
        let lower = line.to_ascii_lowercase();
        if i > 0 && (lower.starts_with("content-length") || lower.starts_with("connection")) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    up.write_all(out.as_bytes()).await.unwrap();
    up.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_message(&mut up, &mut buf).await.expect("an answer from the emulator");
    (head.lines().next().unwrap_or("HTTP/1.1 500").to_owned(), body)
}

async fn serve(mut conn: TcpStream, upstream: String, stats: Arc<Mutex<Stats>>, rate: f64) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_message(&mut conn, &mut buf).await {
        let target = header(&head, "x-amz-target").unwrap_or("").to_owned();
        if target.ends_with(".DescribeStreamSummary") && stats.lock().unwrap().deny {
            let body = br#"{"__type":"AccessDeniedException","message":"not allowed (proxy)"}"#;
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.write_all(body).await;
            continue;
        }
        let put = target.ends_with(".PutRecords");
        let (status, mut answer) = if put {
            put_records(&upstream, &head, &body, &stats, rate).await
        } else {
            forward(&upstream, &head, &body).await
        };
        let creating = stats.lock().unwrap().creating_until.is_some_and(|t| std::time::Instant::now() < t);
        if target.ends_with(".DescribeStreamSummary") && creating && status.contains(" 200") {
            let mut v: Value = serde_json::from_slice(&answer).unwrap();
            v["StreamDescriptionSummary"]["StreamStatus"] = json!("CREATING");
            answer = serde_json::to_vec(&v).unwrap();
        }
        if put && status.contains(" 200") {
            let lose = {
                let mut st = stats.lock().unwrap();
                let lose = st.lose_answers > 0.0 && fastrand::f64() < st.lose_answers;
                st.lost_answers += usize::from(lose);
                lose.then_some(st.lost_answers)
            };
            match lose {
                // The connection drops: the sender cannot know the records were stored.
                Some(n) if n.is_multiple_of(2) => return,
                Some(_) => {
                    let reply = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => {}
            }
        }
        let reply = format!(
            "{status}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if conn.write_all(reply.as_bytes()).await.is_err() || conn.write_all(&answer).await.is_err() {
            return;
        }
    }
}

async fn put_records(
    upstream: &str,
    head: &str,
    body: &[u8],
    stats: &Arc<Mutex<Stats>>,
    rate: f64,
) -> (String, Vec<u8>) {
    let mut req: Value = serde_json::from_slice(body).unwrap();
    let records = req["Records"].as_array().cloned().unwrap_or_default();
    let keys: Vec<String> =
        records.iter().map(|r| r["PartitionKey"].as_str().unwrap_or("").to_owned()).collect();
    let datas: Vec<Vec<u8>> = records
        .iter()
        .map(|r| base64::engine::general_purpose::STANDARD.decode(r["Data"].as_str().unwrap_or("")).unwrap())
        .collect();
    // The keys each entry carries: an aggregate's own (each once), else its partition key.
    let carried: Vec<Vec<String>> =
        datas.iter().zip(&keys).map(|(d, k)| aggregate_keys(d).unwrap_or_else(|| vec![k.clone()])).collect();
    let mut fail = vec![false; records.len()];
    {
        let mut st = stats.lock().unwrap();
        st.requests += 1;
        if st.throttle_until.is_some_and(|t| std::time::Instant::now() < t) {
            st.throttled += 1;
            if st.throttled.is_multiple_of(2) {
                let body = json!({"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded (proxy)"});
                return ("HTTP/1.1 400 Bad Request".into(), serde_json::to_vec(&body).unwrap());
            }
            let all = vec![
                json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded (proxy)"});
                records.len()
            ];
            let answer = json!({"FailedRecordCount": records.len(), "Records": all});
            return ("HTTP/1.1 200 OK".into(), serde_json::to_vec(&answer).unwrap());
        }
        let bytes: usize = datas.iter().zip(&keys).map(|(d, k)| d.len() + k.len()).sum();
        if records.len() > 500 || bytes > 5 * 1024 * 1024 {
            st.violations.push(format!("request of {} entries, {bytes} bytes", records.len()));
        }
        for d in &datas {
            if let Some(n) = aggregate_records(d) {
                st.aggregates += 1;
                st.aggregated_records += n;
            }
        }
        let mut seen = HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            for c in &carried[i] {
                if !seen.insert(c.clone()) {
                    st.violations.push(format!("key {c} in two entries of one request"));
                }
                if st.in_flight.contains(c) {
                    st.violations.push(format!("key {c} sent while in flight"));
                }
            }
            // A key on a streak fails again (up to 3 times); others fail at `rate`.
            let streak = st.streak.get(k).copied().unwrap_or(0);
            fail[i] = (streak > 0 && streak < 3) || (streak == 0 && fastrand::f64() < rate);
            if fail[i] {
                *st.streak.entry(k.clone()).or_insert(0) += 1;
                st.failed += 1;
            } else {
                st.streak.remove(k);
            }
        }
        st.in_flight.extend(carried.iter().flatten().cloned());
    }
    let keys: Vec<String> = carried.into_iter().flatten().collect();
    let kept: Vec<Value> = records.iter().zip(&fail).filter(|(_, f)| !**f).map(|(r, _)| r.clone()).collect();
    let mut results: Vec<Value> = Vec::new();
    let mut upstream_failed = 0;
    if !kept.is_empty() {
        req["Records"] = Value::Array(kept);
        let (status, answer) = forward(upstream, head, &serde_json::to_vec(&req).unwrap()).await;
        if !status.contains(" 200") {
            stats.lock().unwrap().in_flight.retain(|k| !keys.contains(k));
            return (status, answer);
        }
        let v: Value = serde_json::from_slice(&answer).unwrap();
        upstream_failed = v["FailedRecordCount"].as_u64().unwrap_or(0);
        results = v["Records"].as_array().cloned().unwrap_or_default();
    }
    let mut from_upstream = results.into_iter();
    let merged: Vec<Value> = fail
        .iter()
        .map(|f| match f {
            true => json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard (proxy)"}),
            false => from_upstream.next().unwrap_or(json!({"ErrorCode": "InternalFailure", "ErrorMessage": "missing"})),
        })
        .collect();
    let failed = fail.iter().filter(|f| **f).count() as u64 + upstream_failed;
    stats.lock().unwrap().in_flight.retain(|k| !keys.contains(k));
    let answer = json!({"FailedRecordCount": failed, "Records": merged});
    ("HTTP/1.1 200 OK".into(), serde_json::to_vec(&answer).unwrap())
}

/// The length-delimited protobuf fields of `body` (field number, bytes; varints skipped);
/// None when it is not well-formed protobuf.
fn fields(mut body: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !body.is_empty() {
        let tag = varint(&mut body)?;
        match tag & 7 {
            0 => {
                varint(&mut body)?;
            }
            2 => {
                let n = usize::try_from(varint(&mut body)?).ok()?;
                let (field, rest) = (body.get(..n)?, body.get(n..)?);
                out.push((tag >> 3, field));
                body = rest;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The protobuf body of a KPL aggregate (magic, protobuf, MD5 of it), checked; None for a
/// plain record.
fn aggregate_body(data: &[u8]) -> Option<&[u8]> {
    use md5::Digest;
    let body = data.strip_prefix(&[0xF3, 0x89, 0x9A, 0xC2])?.get(..data.len().checked_sub(20)?)?;
    assert_eq!(md5::Md5::digest(body)[..], data[data.len() - 16..], "an aggregate whose MD5 is wrong");
    Some(body)
}

/// The partition key table of a KPL aggregate.
fn aggregate_keys(data: &[u8]) -> Option<Vec<String>> {
    let f = fields(aggregate_body(data)?).expect("an aggregate that is not protobuf");
    Some(f.iter().filter(|f| f.0 == 1).map(|f| String::from_utf8(f.1.to_vec()).unwrap()).collect())
}

/// How many records a KPL aggregate holds.
fn aggregate_records(data: &[u8]) -> Option<usize> {
    let f = fields(aggregate_body(data)?).expect("an aggregate that is not protobuf");
    Some(f.iter().filter(|f| f.0 == 3).count())
}
