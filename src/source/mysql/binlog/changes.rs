//! The part of the reader that turns rows events and statements into changes: rows
//! decoded with their table map (refusing partial images), TRUNCATE as `op: "t"`, and the
//! guard against DML logged as a statement for a captured table.

use super::Reader;
use crate::error::{Error, Kind, Result};
use crate::event::{ChangeEvent, Op, Snapshot, Source, Table};
use crate::source::SourceMessage;
use crate::source::mysql::decode::{TableInfo, decode_row};
use crate::source::mysql::statement;
use mysql_common::binlog::events::RowsEventData;
use mysql_common::io::ParseBuf;
use std::sync::Arc;

impl Reader {
    pub(super) fn on_rows(
        &mut self,
        rows: &RowsEventData<'_>,
        start: u64,
        server_id: u32,
        ts_ms: i64,
        out: &mut Vec<SourceMessage>,
    ) -> Result<()> {
        let Some((_, info)) = self.tables.get(&rows.table_id()) else {
            return Err(self.malformed(start, "rows event without its table map"));
        };
        let Some(info) = info.clone() else {
            return Ok(());
        };
        if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
            return Err(Error::config(format!(
                "partial JSON updates for {} in the binlog: set binlog_row_value_options='' on the server",
                info.table.qualified()
            )));
        }
        let n = info.columns.len();
        let before_cols =
            rows.columns_before_image().map(|b| b.iter().by_vals().take(n).collect::<Vec<bool>>());
        let after_cols =
            rows.columns_after_image().map(|b| b.iter().by_vals().take(n).collect::<Vec<bool>>());
        for image in [&before_cols, &after_cols].into_iter().flatten() {
            if image.len() < n || image.contains(&false) {
                return Err(self.partial_image(&info, image, start));
            }
        }
        let op = match (&before_cols, &after_cols) {
            (Some(_), Some(_)) => Op::Update,
            (None, Some(_)) => Op::Create,
            _ => Op::Delete,
        };
        let ts_ms = self.tx.commit_ms.unwrap_or(ts_ms);
        let mut buf = ParseBuf(rows.rows_data());
        let mut row = 0u32;
        while !buf.is_empty() {
            let before = before_cols.as_deref().map(|p| decode_row(&info, p, &mut buf)).transpose()?;
            let after = after_cols.as_deref().map(|p| decode_row(&info, p, &mut buf)).transpose()?;
            let transaction = Some(self.tx.next_order(&info.table, &self.file));
            let ev = ChangeEvent {
                table: info.table.clone(),
                op,
                before,
                after,
                ts_ms,
                snapshot: Snapshot::No,
                source: self.source(server_id, start, row),
                transaction,
            };
            self.tx.push(ev, out).map_err(|why| self.too_many(start, why))?;
            row += 1;
        }
        Ok(())
    }

    fn partial_image(&self, info: &TableInfo, image: &[bool], start: u64) -> Error {
        let missing: Vec<&str> = (0..info.columns.len())
            .filter(|&i| !image.get(i).copied().unwrap_or(false))
            .map(|i| info.table.columns[i].as_str())
            .collect();
        Error::new(
            Kind::Encode,
            format!(
                "the rows event for {} at {}:{start} has a partial row image (missing {}): a session wrote it with \
                 binlog_row_image=MINIMAL or NOBLOB, and cdc will not publish the missing values as null. Set \
                 binlog_row_image=FULL globally and in every session (SET SESSION can change it), then re-snapshot \
                 the table",
                info.table.qualified(),
                self.file,
                missing.join(", ")
            ),
        )
    }

    /// A statement outside row events: TRUNCATE becomes an `op: "t"` event; DML logged as a
    /// statement that may have changed a captured table stops the run (its rows are not in
    /// the binlog).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_statement(
        &mut self,
        sql: &str,
        default_db: &str,
        status_vars: &[u8],
        server_id: u32,
        ts_ms: i64,
        start: u64,
        out: &mut Vec<SourceMessage>,
    ) -> Result<()> {
        let verb = statement::first_word(sql);
        if statement::is_dml(&verb) {
            if let Some(target) = self.statement_capture(sql, default_db, status_vars) {
                return Err(Error::new(
                    Kind::Encode,
                    format!(
                        "{verb} on {target} was logged as a statement at {}:{start}, so its rows are not in the binlog: \
                         set binlog_format=ROW globally and in every session (SET SESSION binlog_format is allowed to change it)",
                        self.file
                    ),
                ));
            }
            return Ok(());
        }
        let Some((_, db, name)) = statement::statement_target(sql, default_db).filter(|t| t.0 == "TRUNCATE")
        else {
            return Ok(());
        };
        if !self.filter.captures(&db, &name) {
            return Ok(());
        }
        let qualified = format!("{db}.{name}");
        let table = self
            .by_name
            .get(&qualified)
            .cloned()
            .unwrap_or_else(|| Arc::new(Table { schema: db, name, columns: vec![], key: vec![] }));
        let transaction = Some(self.tx.next_order(&table, &self.file));
        let ev = ChangeEvent {
            table,
            op: Op::Truncate,
            before: None,
            after: None,
            ts_ms: self.tx.commit_ms.unwrap_or(ts_ms),
            snapshot: Snapshot::No,
            source: self.source(server_id, start, 0),
            transaction,
        };
        self.tx.push(ev, out).map_err(|why| self.too_many(start, why))
    }

    /// What captured table (or database) a statement-logged DML may have changed, if any.
    /// A single-table statement names its table; otherwise the server's list of updated
    /// databases (MySQL) decides, or, without one (MariaDB), every database the statement
    /// could name: its default database and each `db.` qualifier.
    fn statement_capture(&self, sql: &str, default_db: &str, status_vars: &[u8]) -> Option<String> {
        if let Some((db, table)) = statement::single_target(sql, default_db) {
            return self.filter.captures_ignore_case(&db, &table).then(|| format!("{db}.{table}"));
        }
        let dbs =
            statement::updated_dbs(status_vars).unwrap_or_else(|| statement::named_dbs(sql, default_db));
        dbs.into_iter().find(|db| self.filter.captures_db(db)).map(|db| format!("a table of {db}"))
    }

    /// Where a change of the current transaction comes from: row `row` of the event at
    /// `start` of the current file.
    fn source(&self, server_id: u32, start: u64, row: u32) -> Source {
        Source::Mysql {
            server_id,
            gtid: self.tx.gtid.clone(),
            file: self.file.clone(),
            pos: start,
            row,
            thread: self.tx.thread,
        }
    }
}
