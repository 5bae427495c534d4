//! Text of every charset MySQL and MariaDB ship, decoded as the server itself converts it
//! to utf8mb4 (which is what the snapshot receives after `SET NAMES utf8mb4`), so a row
//! reads the same in the snapshot and in the binlog.
//!
//! The binlog names a column's collation by id. Which charset an id belongs to is read from
//! the server (`information_schema.collations`), never from a built-in table that drifts
//! between versions. Multi-byte charsets are decoded with `encoding_rs` (UTF-32 by hand: it
//! has no decoder for it). Single-byte charsets (latin1, cp1251, koi8r, swe7, ...) are
//! decoded by a 256-entry table the server renders once per connection: the same bytes
//! the snapshot's conversion would produce, including `?` for bytes the charset leaves
//! undefined, with none of the small differences between MySQL's tables and WHATWG's.

use super::classify;
use crate::error::Result;
use encoding_rs::Encoding;
use mysql_async::prelude::Queryable;
use std::collections::HashMap;
use std::sync::Arc;

/// How the bytes of one charset become text.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoder {
    /// `binary`: not text at all.
    Binary,
    Utf8,
    /// UTF-32 big-endian (MySQL `utf32`).
    Utf32,
    Multi(&'static Encoding),
    /// A single-byte charset: the character of each byte value.
    Single(Arc<[char]>),
}

impl Decoder {
    /// The decoder of a charset by its MySQL name; single-byte charsets need their table.
    fn multi_byte(name: &str) -> Option<Decoder> {
        use encoding_rs::{BIG5, EUC_JP, EUC_KR, GB18030, GBK, SHIFT_JIS, UTF_16BE, UTF_16LE};
        Some(match name {
            "binary" => Decoder::Binary,
            "utf8" | "utf8mb3" | "utf8mb4" => Decoder::Utf8,
            "utf32" => Decoder::Utf32,
            // ucs2 is UTF-16 restricted to the BMP: the same bytes.
            "utf16" | "ucs2" => Decoder::Multi(UTF_16BE),
            "utf16le" => Decoder::Multi(UTF_16LE),
            "big5" => Decoder::Multi(BIG5),
            "gbk" | "gb2312" => Decoder::Multi(GBK),
            "gb18030" => Decoder::Multi(GB18030),
            "sjis" | "cp932" => Decoder::Multi(SHIFT_JIS),
            "ujis" | "eucjpms" => Decoder::Multi(EUC_JP),
            "euckr" => Decoder::Multi(EUC_KR),
            _ => return None,
        })
    }

    /// Decodes `b`; bytes that are not valid in the charset are refused, never replaced.
    pub fn decode(&self, b: Vec<u8>) -> std::result::Result<String, String> {
        let invalid = || "bytes are not valid in the column's charset".to_owned();
        match self {
            Decoder::Binary | Decoder::Utf8 => String::from_utf8(b).map_err(|_| invalid()),
            Decoder::Single(table) => Ok(b.iter().map(|&c| table[c as usize]).collect()),
            Decoder::Utf32 => b
                .chunks(4)
                .map(|c| <[u8; 4]>::try_from(c).ok().and_then(|c| char::from_u32(u32::from_be_bytes(c))))
                .collect::<Option<String>>()
                .ok_or_else(invalid),
            Decoder::Multi(enc) => match enc.decode_without_bom_handling(&b) {
                (text, false) => Ok(text.into_owned()),
                (_, true) => Err(invalid()),
            },
        }
    }
}

/// The charset of every collation id of one server.
#[derive(Debug, Clone)]
pub struct Charsets {
    by_id: HashMap<u16, (Arc<str>, Decoder)>,
}

/// Collation ids every MySQL and MariaDB version gives the same meaning; enough to decode
/// where no server was asked (unit tests of captured bytes).
const KNOWN: [(u16, &str); 8] = [
    (33, "utf8mb3"),
    (45, "utf8mb4"),
    (46, "utf8mb4"),
    (83, "utf8mb3"),
    (224, "utf8mb4"),
    (255, "utf8mb4"),
    (63, "binary"),
    (8, "latin1"),
];

impl Default for Charsets {
    fn default() -> Self {
        let mut latin1: Vec<char> = (0u8..=255).map(char::from).collect();
        // MySQL's latin1 is cp1252: 0x80..0x9F hold the Windows characters.
        let high = "€\u{81}‚ƒ„…†‡ˆ‰Š‹Œ\u{8d}Ž\u{8f}\u{90}‘’“”•–—˜™š›œ\u{9d}žŸ";
        for (i, c) in high.chars().enumerate() {
            latin1[0x80 + i] = c;
        }
        let latin1 = Decoder::Single(Arc::from(latin1));
        let by_id = KNOWN
            .iter()
            .map(|&(id, name)| {
                let decoder = Decoder::multi_byte(name).unwrap_or_else(|| latin1.clone());
                (id, (Arc::from(name), decoder))
            })
            .collect();
        Charsets { by_id }
    }
}

impl Charsets {
    /// Reads every collation of the server and renders the table of each single-byte
    /// charset (one query for all of them).
    pub async fn load(conn: &mut mysql_async::Conn) -> Result<Charsets> {
        let opts = conn.opts().clone();
        let fail = |e| classify(e, &opts, "read the server's collations (information_schema.collations)");
        let rows: Vec<(u16, String, u32)> = conn
            .query(
                "SELECT c.id, c.character_set_name, s.maxlen FROM information_schema.collations c \
                 JOIN information_schema.character_sets s ON s.character_set_name = c.character_set_name \
                 WHERE c.id IS NOT NULL",
            )
            .await
            .map_err(fail)?;
        let mut single: Vec<String> = rows
            .iter()
            .filter(|(_, name, maxlen)| *maxlen == 1 && Decoder::multi_byte(name).is_none())
            .map(|(_, name, _)| name.clone())
            .collect();
        single.sort();
        single.dedup();
        let mut tables = HashMap::new();
        if !single.is_empty() {
            let all: String = (0u8..=255).map(|b| format!("{b:02X}")).collect();
            // Names come from the server's own catalog; only [a-z0-9] reach the SQL.
            let safe = |n: &String| n.chars().all(|c| c.is_ascii_alphanumeric());
            let columns: Vec<String> = single
                .iter()
                .filter(|n| safe(n))
                .map(|n| format!("CONVERT(_{n} X'{all}' USING utf8mb4)"))
                .collect();
            let row: Option<mysql_async::Row> =
                conn.query_first(format!("SELECT {}", columns.join(", "))).await.map_err(fail)?;
            for (i, name) in single.iter().filter(|n| safe(n)).enumerate() {
                let text: Option<String> = row.as_ref().and_then(|r| r.get(i));
                let chars: Vec<char> = text.unwrap_or_default().chars().collect();
                if chars.len() == 256 {
                    tables.insert(name.clone(), Decoder::Single(Arc::from(chars)));
                }
            }
        }
        let mut by_id = HashMap::new();
        for (id, name, _) in rows {
            let decoder = Decoder::multi_byte(&name).or_else(|| tables.get(&name).cloned());
            if let Some(decoder) = decoder {
                by_id.insert(id, (Arc::<str>::from(name), decoder));
            }
        }
        Ok(Charsets { by_id })
    }

    /// The decoder of collation `id`, or why there is none.
    pub fn get(&self, id: u16) -> std::result::Result<&Decoder, String> {
        self.by_id.get(&id).map(|(_, d)| d).ok_or_else(|| {
            format!("collation id {id} is not one this server reported or cdc can decode (see `cdc check`)")
        })
    }

    /// Whether text of the charset `name` can be decoded.
    pub fn supports(&self, name: &str) -> bool {
        self.by_id.values().any(|(n, _)| &**n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_byte_charsets_decode_and_refuse_invalid_bytes() {
        let d = |n: &str, b: &[u8]| Decoder::multi_byte(n).unwrap().decode(b.to_vec());
        assert_eq!(d("utf16", &[0x00, 0x41, 0xD8, 0x3D, 0xDE, 0x00]).unwrap(), "A😀");
        assert_eq!(d("utf16le", &[0x41, 0x00, 0x3D, 0xD8, 0x00, 0xDE]).unwrap(), "A😀");
        assert_eq!(d("ucs2", &[0x04, 0x16]).unwrap(), "Ж");
        assert_eq!(d("utf32", &[0, 0, 0, 0x41, 0, 1, 0xF6, 0]).unwrap(), "A😀");
        assert_eq!(d("gbk", &[0xD6, 0xD0, 0xCE, 0xC4]).unwrap(), "中文");
        assert_eq!(d("big5", &[0xA4, 0xA4]).unwrap(), "中");
        assert_eq!(d("sjis", &[0x93, 0xFA]).unwrap(), "日");
        assert_eq!(d("ujis", &[0xC6, 0xFC]).unwrap(), "日");
        assert_eq!(d("euckr", &[0xC7, 0xD1]).unwrap(), "한");
        assert!(d("utf32", &[0, 0x11, 0, 0]).is_err(), "beyond U+10FFFF");
        assert!(d("utf32", &[0, 0, 0x41]).is_err(), "a torn code unit");
        assert!(d("utf16", &[0xD8, 0x3D]).is_err(), "a lone surrogate");
        assert!(d("utf8mb4", &[0xC3]).is_err());
        assert_eq!(Decoder::multi_byte("cp1251"), None, "single-byte charsets take the server's table");
    }

    #[test]
    fn latin1_without_a_server_is_cp1252_and_unknown_ids_are_refused() {
        let c = Charsets::default();
        assert_eq!(c.get(8).unwrap().decode(vec![0x80, b'a', 0xE9, 0x81]).unwrap(), "€aé\u{81}");
        assert_eq!(c.get(45).unwrap().decode("ü".into()).unwrap(), "ü");
        assert!(c.get(2).unwrap_err().contains("collation id 2"));
        assert!(c.supports("latin1") && !c.supports("latin2"));
    }
}
