//! MariaDB compressed binlog events (`log_bin_compress=ON`), as pure functions: a
//! QUERY_COMPRESSED (165) or *_ROWS_COMPRESSED (166–171) event becomes the plain event it
//! stands for (2, 23–25, 30–32), which the reader then decodes like any other.
//!
//! Only the query text, or the row images after the column bitmaps, are compressed; the
//! headers stay as written. A compressed part starts with `0x80 | n`, then the uncompressed
//! length in `n` big-endian bytes, then a zlib stream (MariaDB's `binlog_buf_compress`).
//! The rebuilt event keeps the header's `log_pos`, so positions stay those of the server.

use mysql_common::binlog::events::Event;
use std::io::Read;

/// Event types MariaDB writes compressed.
pub const COMPRESSED: std::ops::RangeInclusive<u8> = 165..=171;
/// Largest uncompressed part accepted (MariaDB's own limit for an event is 1 GiB).
const MAX_UNCOMPRESSED: usize = 1 << 30;
/// Common event header length.
const HEADER: usize = 19;

/// The plain event type a compressed one stands for.
fn plain_type(compressed: u8) -> u8 {
    match compressed {
        165 => 2,                      // QUERY_EVENT
        166..=168 => compressed - 143, // WRITE/UPDATE/DELETE_ROWS_EVENT_V1 (23–25)
        _ => compressed - 139,         // WRITE/UPDATE/DELETE_ROWS_EVENT (30–32)
    }
}

/// Decompresses a MariaDB compressed part: `0x80 | n`, the length in `n` big-endian bytes,
/// a zlib stream.
pub fn uncompress(part: &[u8]) -> Result<Vec<u8>, String> {
    let (&first, rest) = part.split_first().ok_or("empty compressed part")?;
    // bit 7 set, bits 4-6 the algorithm (0: zlib), bits 0-2 the length's length
    if first & 0xf0 != 0x80 {
        return Err(format!("unknown compression header byte {first:#04x} (only zlib is known)"));
    }
    let n = (first & 0x07) as usize;
    if !(1..=4).contains(&n) || rest.len() < n {
        return Err("bad compressed length".into());
    }
    let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    if len > MAX_UNCOMPRESSED {
        return Err(format!("compressed part claims {len} bytes"));
    }
    let mut out = Vec::with_capacity(len);
    flate2::read::ZlibDecoder::new(&rest[n..])
        .take(len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zlib: {e}"))?;
    if out.len() != len {
        return Err(format!("zlib stream holds {} bytes, the header says {len}", out.len()));
    }
    Ok(out)
}

/// Where the compressed part of an event body starts. `post_header` is the event type's
/// post-header length from the format description.
fn compressed_from(ty: u8, body: &[u8], post_header: usize) -> Option<usize> {
    if ty == 165 {
        // thread id 4, exec time 4, db length 1, error code 2, status vars length 2
        let db_len = *body.get(8)? as usize;
        let vars = u16::from_le_bytes([*body.get(11)?, *body.get(12)?]) as usize;
        return Some(post_header + vars + db_len + 1);
    }
    let mut at = post_header;
    if ty >= 169 {
        // v2: the extra-data length (counting its own two bytes) ends the post-header
        let extra = u16::from_le_bytes([*body.get(8)?, *body.get(9)?]) as usize;
        at += extra.checked_sub(2)?;
    }
    let (width, used) = lenenc(body.get(at..)?)?;
    at += used;
    let bitmaps = if matches!(ty, 167 | 170) { 2 } else { 1 };
    Some(at + bitmaps * width.div_ceil(8))
}

/// A length-encoded integer (the column count of a rows event): (value, bytes used).
fn lenenc(b: &[u8]) -> Option<(usize, usize)> {
    let n = match *b.first()? {
        x @ 0..=250 => return Some((x as usize, 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let v = b.get(1..1 + n)?.iter().rev().fold(0usize, |acc, &x| (acc << 8) | x as usize);
    Some((v, 1 + n))
}

/// The 19 header bytes of `ev` as sent, with another type and size.
pub fn header_bytes(ev: &Event, ty: u8, size: u32) -> Vec<u8> {
    let header = ev.header();
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend(header.timestamp().to_le_bytes());
    bytes.push(ty);
    bytes.extend(header.server_id().to_le_bytes());
    bytes.extend(size.to_le_bytes());
    bytes.extend(header.log_pos().to_le_bytes());
    bytes.extend(header.flags_raw().to_le_bytes());
    bytes
}

/// The plain event a compressed one stands for, with the same header fields (but type and
/// size) and, when the stream has checksums, a placeholder checksum the reader skips.
pub fn decompress(ev: &Event) -> Result<Event, String> {
    let header = ev.header();
    let ty = header.event_type_raw();
    let lengths = ev.fde().event_type_header_lengths();
    let post_header =
        *lengths.get(ty as usize - 1).ok_or("no post-header length for the event type")? as usize;
    let body = ev.data();
    let at = compressed_from(ty, body, post_header)
        .filter(|&at| at <= body.len())
        .ok_or("event too short for its type")?;
    let plain = uncompress(&body[at..])?;
    let checksum = if ev.checksum().is_some() { 4 } else { 0 };
    let size = HEADER + at + plain.len() + checksum;
    let size = u32::try_from(size).map_err(|_| "event over 4 GiB")?;
    let mut bytes = header_bytes(ev, plain_type(ty), size);
    bytes.extend(&body[..at]);
    bytes.extend(plain);
    bytes.extend([0u8; 4].iter().take(checksum));
    Event::read(ev.fde(), &bytes[..]).map_err(|e| e.to_string())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;

    /// A MariaDB compressed part of `data`, as `binlog_buf_compress` writes it.
    pub fn compress(data: &[u8]) -> Vec<u8> {
        let len = data.len() as u32;
        let n = match len {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xff_ffff => 3,
            _ => 4,
        };
        let mut out = vec![0x80 | n as u8];
        out.extend(&len.to_be_bytes()[4 - n..]);
        let mut z = flate2::write::ZlibEncoder::new(out, flate2::Compression::best());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn compressed_parts_round_trip_and_lies_are_refused() {
        for data in [&b"INSERT INTO t VALUES (1)"[..], &[7u8; 70_000][..]] {
            assert_eq!(uncompress(&compress(data)).unwrap(), data);
        }
        let mut wrong = compress(b"abc");
        wrong[1] = 4; // claims 4 bytes
        assert!(uncompress(&wrong).unwrap_err().contains("header says 4"));
        assert!(uncompress(&[0x90, 1, 0]).is_err(), "another algorithm");
        assert!(uncompress(&[0x81]).is_err(), "no length");
        assert!(uncompress(&[]).is_err());
    }

    #[test]
    fn compressed_part_follows_the_uncompressed_headers() {
        // query: db "shop" (4), 3 bytes of status vars
        let mut q = vec![0u8; 13];
        q[8] = 4;
        q[11] = 3;
        assert_eq!(compressed_from(165, &q, 13), Some(13 + 3 + 4 + 1));
        // rows v1: table id 6 + flags 2, 10 columns (1 bitmap byte... 2 bytes), update: 2 bitmaps
        let rows = [1, 0, 0, 0, 0, 0, 0, 0, 10, 0xff, 0x03, 0xff, 0x03];
        assert_eq!(compressed_from(166, &rows, 8), Some(8 + 1 + 2));
        assert_eq!(compressed_from(167, &rows, 8), Some(8 + 1 + 4));
        // rows v2: extra data length 2 (just itself)
        let v2 = [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0x07];
        assert_eq!(compressed_from(169, &v2, 10), Some(10 + 1 + 1));
        assert_eq!(plain_type(165), 2);
        assert_eq!((plain_type(166), plain_type(168)), (23, 25));
        assert_eq!((plain_type(169), plain_type(171)), (30, 32));
    }
}
