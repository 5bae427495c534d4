//! Query events as pure data: the SQL words that matter (transaction control, XA, TRUNCATE,
//! DML logged as a statement) and the databases the server says a statement changed (the
//! `Q_UPDATED_DB_NAMES` status variable). No I/O.

/// What a query event does to the reader's transaction state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`: the transaction ends.
    Commit,
    /// `ROLLBACK` of the whole transaction (non-transactional changes were logged).
    Rollback,
    /// `SAVEPOINT` or `ROLLBACK TO [SAVEPOINT]`: inside a transaction, ends nothing (rows
    /// rolled back to a savepoint are not in the binlog).
    Savepoint,
    /// `XA START xid`: an XA transaction's body begins.
    XaStart(String),
    /// `XA END xid`: the body ends; `XA PREPARE` or a one-phase commit follows.
    XaEnd,
    /// `XA COMMIT xid`, `one_phase` for `XA COMMIT xid ONE PHASE`.
    XaCommit { xid: String, one_phase: bool },
    /// `XA ROLLBACK xid`.
    XaRollback(String),
    /// Anything else: DDL, DML logged as a statement, `SET`, ...
    Other,
}

/// Classifies a query event's SQL.
pub fn control(sql: &str) -> Control {
    let mut w = words(sql);
    let first = w.next().unwrap_or_default();
    let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match first.to_ascii_uppercase().as_str() {
        "BEGIN" => Control::Begin,
        "START" if w.next().is_some_and(|t| is(t, "TRANSACTION")) => Control::Begin,
        "COMMIT" => Control::Commit,
        // MySQL 8.0.21+ logs CREATE TABLE ... SELECT as one transaction: this query, the
        // rows, then XID.
        "CREATE" if sql.trim_end().to_ascii_uppercase().ends_with("START TRANSACTION") => Control::Begin,
        "SAVEPOINT" | "RELEASE" => Control::Savepoint,
        "ROLLBACK" => match w.next() {
            Some(t) if is(t, "TO") => Control::Savepoint,
            _ => Control::Rollback,
        },
        "XA" => {
            let verb = w.next().unwrap_or_default().to_ascii_uppercase();
            let rest = sql.trim_start();
            // The XID is everything after the verb, up to ONE PHASE / SUSPEND / etc.
            let after_verb = rest
                .get(rest.to_ascii_uppercase().find(&verb).map_or(0, |i| i + verb.len())..)
                .unwrap_or_default();
            let (xid, tail) = split_xid(after_verb);
            match verb.as_str() {
                "START" | "BEGIN" => Control::XaStart(xid),
                "END" => Control::XaEnd,
                "COMMIT" => Control::XaCommit { xid, one_phase: tail.to_ascii_uppercase().contains("ONE") },
                "ROLLBACK" => Control::XaRollback(xid),
                _ => Control::Other,
            }
        }
        _ => Control::Other,
    }
}

/// Splits `X'..',X'..',1 ONE PHASE` into the XID text (normalised: no spaces, hex upper
/// case) and what follows it.
fn split_xid(s: &str) -> (String, &str) {
    let s = s.trim_start();
    let mut end = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                // a space inside `X'..', X'..'` lists is still the XID
                let next = s[i..].trim_start();
                if !next.starts_with(',') && !s[..i].trim_end().ends_with(',') {
                    break;
                }
            }
            _ => {}
        }
        end = i + c.len_utf8();
    }
    let xid: String = s[..end].chars().filter(|c| !c.is_whitespace()).collect();
    (xid.to_ascii_uppercase(), &s[end..])
}

/// The first SQL keyword, upper-cased, after comments and whitespace.
pub fn first_word(sql: &str) -> String {
    words(sql).next().unwrap_or_default().to_ascii_uppercase()
}

/// True for statements that change rows (logged as a statement, their rows are missing).
pub fn is_dml(verb: &str) -> bool {
    matches!(verb, "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "LOAD" | "WITH" | "CALL")
}

/// SQL words, skipping `/* */` and `--`/`#` comments; identifiers keep their quotes.
pub fn words(sql: &str) -> impl Iterator<Item = &str> {
    let mut rest = sql;
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix("/*") {
                rest = r.split_once("*/").map_or("", |(_, after)| after);
            } else if rest.starts_with("--") || rest.starts_with('#') {
                rest = rest.split_once('\n').map_or("", |(_, after)| after);
            } else {
                break;
            }
        }
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(|c: char| c.is_whitespace() || c == '(' || c == ';').unwrap_or(rest.len()).max(1);
        let (word, after) = rest.split_at(end);
        rest = after;
        Some(word)
    })
}

/// For DML and TRUNCATE statements: the verb and the target `(db, table)`.
pub fn statement_target(sql: &str, default_db: &str) -> Option<(String, String, String)> {
    let mut w = words(sql).map(|s| s.to_string());
    let verb = w.next()?.to_ascii_uppercase();
    let skip: &[&str] = match verb.as_str() {
        "INSERT" | "REPLACE" => &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
        "UPDATE" => &["LOW_PRIORITY", "IGNORE"],
        "DELETE" => &["LOW_PRIORITY", "QUICK", "IGNORE", "FROM"],
        "TRUNCATE" => &["TABLE"],
        "LOAD" => {
            &["DATA", "LOW_PRIORITY", "CONCURRENT", "LOCAL", "INFILE", "REPLACE", "IGNORE", "INTO", "TABLE"]
        }
        _ => return None,
    };
    let mut target = w.find(|t| !skip.contains(&t.to_ascii_uppercase().as_str()))?;
    if verb == "LOAD" {
        // LOAD DATA INFILE 'file' ... INTO TABLE t: the word after TABLE.
        target = words(sql).map(str::to_string).skip_while(|t| !t.eq_ignore_ascii_case("TABLE")).nth(1)?;
    }
    let unquote = |s: &str| s.trim_matches('`').to_string();
    let (db, table) = match target.split_once('.') {
        Some((d, t)) => (unquote(d), unquote(t)),
        None => (default_db.to_string(), unquote(&target)),
    };
    Some((verb, db, table.trim_end_matches(',').to_string()))
}

/// The one table a statement-logged DML changes, when its form says so: INSERT, REPLACE and
/// LOAD DATA always name one; `UPDATE t SET` and `DELETE FROM t [WHERE ...]` without joins.
/// None for multi-table forms, `WITH`, aliases and anything else.
pub fn single_target(sql: &str, default_db: &str) -> Option<(String, String)> {
    let (verb, db, table) = statement_target(sql, default_db)?;
    let upper: Vec<String> = words(sql).map(|w| w.to_ascii_uppercase()).collect();
    let single = match verb.as_str() {
        "INSERT" | "REPLACE" | "LOAD" => true,
        "UPDATE" => {
            let rest: Vec<&String> =
                upper[1..].iter().skip_while(|w| matches!(w.as_str(), "LOW_PRIORITY" | "IGNORE")).collect();
            rest.len() >= 2 && !rest[0].ends_with(',') && rest[1] == "SET"
        }
        "DELETE" => {
            let rest: Vec<&String> = upper[1..]
                .iter()
                .skip_while(|w| matches!(w.as_str(), "LOW_PRIORITY" | "QUICK" | "IGNORE"))
                .collect();
            rest.first().is_some_and(|w| *w == "FROM")
                && rest.get(1).is_some_and(|w| !w.ends_with(','))
                && rest.get(2).is_none_or(|w| {
                    matches!(w.as_str(), "WHERE" | "ORDER" | "LIMIT" | "PARTITION" | "RETURNING")
                })
        }
        _ => false,
    };
    single.then_some((db, table))
}

/// Every database a statement can name: its default database and each `db.` qualifier (a
/// table outside the default database can only be named that way).
pub fn named_dbs(sql: &str, default_db: &str) -> Vec<String> {
    let mut dbs: Vec<String> = Vec::new();
    if !default_db.is_empty() {
        dbs.push(default_db.to_owned());
    }
    let ident = |c: char| c.is_alphanumeric() || matches!(c, '_' | '$' | '`' | '.');
    for word in words(sql) {
        for token in word.split(|c: char| !ident(c)) {
            if let Some((db, _)) = token.split_once('.') {
                let db = db.trim_matches('`');
                if !db.is_empty() && !dbs.iter().any(|d| d.eq_ignore_ascii_case(db)) {
                    dbs.push(db.to_owned());
                }
            }
        }
    }
    dbs
}

/// `Q_UPDATED_DB_NAMES` (status variable 12): the databases a statement changed, as the
/// server knows them (lower-cased under `lower_case_table_names`). `None` when the event
/// does not say, or the statement touched more databases than the server lists
/// (`OVER_MAX_DBS_IN_EVENT_MTS`, count 254).
pub fn updated_dbs(status_vars: &[u8]) -> Option<Vec<String>> {
    let mut b = status_vars;
    // Lengths of the status variables before 12, from MySQL's `log_event.h`.
    loop {
        let (&key, rest) = b.split_first()?;
        let len = match key {
            0 => 4,                               // Q_FLAGS2_CODE
            1 => 8,                               // Q_SQL_MODE_CODE
            2 => 2 + *rest.first()? as usize,     // Q_CATALOG_CODE: len, bytes, NUL
            3 => 4,                               // Q_AUTO_INCREMENT
            4 => 6,                               // Q_CHARSET_CODE
            5 | 6 => 1 + *rest.first()? as usize, // Q_TIME_ZONE_CODE, Q_CATALOG_NZ_CODE
            7 | 8 => 2,                           // Q_LC_TIME_NAMES_CODE, Q_CHARSET_DATABASE_CODE
            9 => 8,                               // Q_TABLE_MAP_FOR_UPDATE_CODE
            10 => 4,                              // Q_MASTER_DATA_WRITTEN_CODE
            11 => {
                // Q_INVOKER: user length, user, host length, host
                let user = *rest.first()? as usize;
                2 + user + *rest.get(1 + user)? as usize
            }
            12 => {
                let (&count, mut names) = rest.split_first()?;
                if count >= 254 {
                    return None;
                }
                let mut out = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let nul = names.iter().position(|&c| c == 0)?;
                    out.push(String::from_utf8_lossy(&names[..nul]).into_owned());
                    names = &names[nul + 1..];
                }
                return Some(out);
            }
            _ => return None, // a variable after 12, or one we do not know the length of
        };
        b = rest.get(len..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_targets() {
        let t = |sql: &str| statement_target(sql, "shop").map(|(v, d, t)| format!("{v} {d}.{t}"));
        assert_eq!(t("INSERT INTO orders VALUES (1)").as_deref(), Some("INSERT shop.orders"));
        assert_eq!(t("insert ignore into `crm`.`leads`(id) values (1)").as_deref(), Some("INSERT crm.leads"));
        assert_eq!(t("/* c */ UPDATE LOW_PRIORITY t SET a=1").as_deref(), Some("UPDATE shop.t"));
        assert_eq!(t("DELETE FROM x.y WHERE 1").as_deref(), Some("DELETE x.y"));
        assert_eq!(t("TRUNCATE TABLE orders").as_deref(), Some("TRUNCATE shop.orders"));
        assert_eq!(t("truncate orders").as_deref(), Some("TRUNCATE shop.orders"));
        assert_eq!(t("LOAD DATA INFILE '/x' INTO TABLE a.b").as_deref(), Some("LOAD a.b"));
        assert_eq!(t("ALTER TABLE orders ADD c INT"), None);
        assert_eq!(t("CREATE TABLE t (id INT)"), None);
        assert_eq!(first_word("  -- note\nbegin"), "BEGIN");
    }

    #[test]
    fn single_table_forms_and_the_databases_others_can_name() {
        let t = |sql: &str| single_target(sql, "shop").map(|(d, t)| format!("{d}.{t}"));
        assert_eq!(t("INSERT INTO other SELECT * FROM t").as_deref(), Some("shop.other"));
        assert_eq!(t("UPDATE LOW_PRIORITY crm.t SET a = 1").as_deref(), Some("crm.t"));
        assert_eq!(t("DELETE FROM t WHERE id = 1").as_deref(), Some("shop.t"));
        assert_eq!(t("DELETE FROM t").as_deref(), Some("shop.t"));
        assert_eq!(t("UPDATE t1, t2 SET t1.a = t2.a"), None);
        assert_eq!(t("UPDATE t1 JOIN t2 USING (id) SET t1.a = 1"), None);
        assert_eq!(t("UPDATE t AS x SET x.a = 1"), None);
        assert_eq!(t("DELETE t1 FROM t1 JOIN t2 USING (id)"), None);
        assert_eq!(t("DELETE FROM t1 USING t1 JOIN t2"), None);
        assert_eq!(t("WITH c AS (SELECT 1) UPDATE t SET a = 1"), None);
        let dbs = named_dbs("UPDATE t1 JOIN `crm`.t2 ON t1.id=crm.t2.id SET t1.a = x.`b`", "shop");
        assert_eq!(dbs, ["shop", "crm", "t1", "x"]);
        assert_eq!(named_dbs("WITH c AS (SELECT 1) UPDATE a.t SET v = 1", ""), ["a"]);
    }

    #[test]
    fn transaction_control() {
        assert_eq!(control("BEGIN"), Control::Begin);
        assert_eq!(control("START TRANSACTION"), Control::Begin);
        assert_eq!(control("COMMIT"), Control::Commit);
        assert_eq!(control("CREATE TABLE t2 (id INT) START TRANSACTION"), Control::Begin);
        assert_eq!(control("CREATE TABLE t2 (id INT)"), Control::Other);
        assert_eq!(control("ROLLBACK"), Control::Rollback);
        assert_eq!(control("ROLLBACK TO `s1`"), Control::Savepoint);
        assert_eq!(control("rollback to savepoint s1"), Control::Savepoint);
        assert_eq!(control("SAVEPOINT `s1`"), Control::Savepoint);
        assert_eq!(control("XA START X'6162',X'',1"), Control::XaStart("X'6162',X'',1".into()));
        assert_eq!(control("XA END X'6162',X'',1"), Control::XaEnd);
        assert_eq!(
            control("XA COMMIT X'6162', X'', 1"),
            Control::XaCommit { xid: "X'6162',X'',1".into(), one_phase: false }
        );
        assert_eq!(
            control("XA COMMIT X'6162',X'',1 ONE PHASE"),
            Control::XaCommit { xid: "X'6162',X'',1".into(), one_phase: true }
        );
        assert_eq!(control("XA ROLLBACK X'6162',X'',1"), Control::XaRollback("X'6162',X'',1".into()));
        assert_eq!(control("UPDATE t SET a = 1"), Control::Other);
    }

    #[test]
    fn updated_databases_from_status_variables() {
        // Q_FLAGS2, Q_SQL_MODE, Q_CATALOG_NZ "std", Q_CHARSET, Q_UPDATED_DB_NAMES 2: "a", "shop"
        let mut vars = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 3, b's', b't', b'd'];
        vars.extend([4, 33, 0, 33, 0, 8, 0, 12, 2, b'a', 0, b's', b'h', b'o', b'p', 0, 128, 1, 2, 3]);
        assert_eq!(updated_dbs(&vars), Some(vec!["a".to_owned(), "shop".to_owned()]));
        assert_eq!(updated_dbs(&[0, 0, 0, 0, 0, 12, 254]), None, "more databases than listed");
        assert_eq!(updated_dbs(&[0, 0, 0, 0, 0]), None, "not written");
        assert_eq!(updated_dbs(&[0, 0, 0, 0, 0, 12, 2, b'a', 0]), None, "truncated");
    }
}
