//! Parquet input for `hgpt prepare`: the documents of one text column, one per
//! row, as the Hub ships pretraining corpora (FineWeb, OpenWebText, TinyStories).
//!
//! The column is read a row group at a time and in batches of [`BATCH_ROWS`]
//! within it through the parquet crate's column reader, so memory holds one batch
//! and the page being decoded whatever the file's size. Null rows are skipped, as
//! empty documents are. The column is named by its path (`text`, or `meta.text`
//! inside a struct) and must hold strings (BYTE_ARRAY), one per row.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::{ColumnReaderImpl, get_typed_column_reader};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::{FileReader, SerializedFileReader};

/// Rows decoded per batch.
const BATCH_ROWS: usize = 1024;

/// The documents of one column of a Parquet file, a batch at a time.
pub struct ParquetColumn {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    column: usize,
    /// The column's maximum definition level: a row is null below it.
    max_def: i16,
    next_group: usize,
    current: Option<ColumnReaderImpl<ByteArrayType>>,
    /// Rows read so far, of `total_rows`, for progress in file bytes.
    rows_read: u64,
    total_rows: u64,
    file_bytes: u64,
    values: Vec<ByteArray>,
    defs: Vec<i16>,
}

impl ParquetColumn {
    /// Opens `path` and finds the string column `field`; `file_bytes` is the
    /// file's size, reported as progress across the rows.
    pub fn open(path: &Path, field: &str, file_bytes: u64) -> Result<ParquetColumn> {
        let name = path.display();
        let file = File::open(path).map_err(|e| anyhow!("cannot open {name}: {e}"))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| anyhow!("{name}: not a readable Parquet file ({e})"))?;
        let meta = reader.metadata();
        let schema = meta.file_metadata().schema_descr();
        let Some(column) =
            (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == field)
        else {
            let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
            bail!(
                "{name}: no column \"{field}\" (choose one with --jsonl-field; the file has {})",
                names.join(", ")
            );
        };
        let descr = schema.column(column);
        if descr.physical_type() != PhysicalType::BYTE_ARRAY {
            bail!(
                "{name}: column \"{field}\" holds {}, not text",
                descr.physical_type()
            );
        }
        if descr.max_rep_level() > 0 {
            bail!("{name}: column \"{field}\" is a list, not one text per row");
        }
        let total_rows = meta.file_metadata().num_rows().max(0) as u64;
        Ok(ParquetColumn {
            path: path.to_path_buf(),
            max_def: descr.max_def_level(),
            reader,
            column,
            next_group: 0,
            current: None,
            rows_read: 0,
            total_rows,
            file_bytes,
            values: Vec::with_capacity(BATCH_ROWS),
            defs: Vec::with_capacity(BATCH_ROWS),
        })
    }

    /// Bytes of the file that the rows read so far stand for.
    pub fn bytes_read(&self) -> u64 {
        if self.total_rows == 0 {
            return self.file_bytes;
        }
        (self.file_bytes as u128 * self.rows_read as u128 / self.total_rows as u128) as u64
    }

    /// The next batch of non-null documents, as raw bytes (possibly empty when a
    /// batch was all nulls); None at the end of the file.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Vec<u8>>>> {
        loop {
            let Some(column) = self.current.as_mut() else {
                if self.next_group == self.reader.num_row_groups() {
                    return Ok(None);
                }
                let group = self.next_group;
                let reader = self
                    .reader
                    .get_row_group(group)
                    .and_then(|g| g.get_column_reader(self.column))
                    .map_err(|e| self.corrupt(group, e))?;
                self.current = Some(get_typed_column_reader(reader));
                self.next_group += 1;
                continue;
            };
            self.values.clear();
            self.defs.clear();
            let (rows, _, _) = column
                .read_records(BATCH_ROWS, Some(&mut self.defs), None, &mut self.values)
                .map_err(|e| self.corrupt(self.next_group - 1, e))?;
            if rows == 0 {
                self.current = None;
                continue;
            }
            self.rows_read += rows as u64;
            let nulls = if self.max_def > 0 {
                self.defs.iter().filter(|&&d| d < self.max_def).count()
            } else {
                0
            };
            if self.values.len() + nulls != rows {
                let e = anyhow!("{rows} rows but {} values", self.values.len());
                return Err(self.corrupt(self.next_group - 1, e));
            }
            return Ok(Some(
                self.values.drain(..).map(|v| v.data().to_vec()).collect(),
            ));
        }
    }

    fn corrupt(&self, group: usize, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: corrupt Parquet data in row group {group} ({e})",
            self.path.display()
        )
    }
}
