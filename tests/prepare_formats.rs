//! `hgpt prepare` on datasets as the Hub ships them: Parquet (every codec the
//! Hub's files use, several row groups, nulls, a column in a struct) and
//! compressed JSON Lines (.jsonl.gz, .jsonl.zst) give exactly the shards of the
//! same documents in plain JSON Lines; a missing or non-text column and corrupt
//! or truncated files fail with one line naming the file. The Parquet and
//! compressed files are written here with the same crates hgpt reads them with.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hgpt::data::prepare::{PrepareOptions, TokenizerSource, prepare};
use indicatif::ProgressBar;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::json;

fn options(input: &Path, out: &Path, field: &str) -> PrepareOptions {
    PrepareOptions {
        inputs: vec![input.to_path_buf()],
        out: out.to_path_buf(),
        jsonl_field: field.into(),
        tokenizer: TokenizerSource::Bytes,
        val_fraction: 0.2,
        seed: 1337,
        shard_tokens: 100_000,
    }
}

/// Documents with UTF-8 beyond ASCII, a literal <|endoftext|> and newlines.
fn documents() -> Vec<String> {
    (0..40)
        .map(|i| {
            format!(
                "Document {i}: café ☃ <|endoftext|> inside,\nsecond line {}",
                "x".repeat(i * 7)
            )
        })
        .collect()
}

/// The files a prepare wrote (shards, manifest, tokenizer) and their bytes.
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with("manifest.json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn prepared(input: &Path, root: &Path, field: &str) -> Vec<(String, Vec<u8>)> {
    let out = root.join(format!(
        "out-{}",
        input.file_name().unwrap().to_string_lossy()
    ));
    prepare(&options(input, &out, field), &ProgressBar::hidden()).unwrap();
    outputs(&out)
}

fn prepare_error(input: &Path, field: &str) -> String {
    let root = input.parent().unwrap();
    let out = root.join("failed");
    let err = prepare(&options(input, &out, field), &ProgressBar::hidden()).unwrap_err();
    let line = format!("{err:#}");
    assert!(!line.contains('\n'), "one line: {line}");
    line
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"id": i, "text": d}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A Parquet file of `docs` in an optional string column `text` (None rows are
/// nulls) beside an int64 `id`, in row groups of `group_rows`.
fn write_parquet(
    path: &Path,
    docs: &[Option<String>],
    compression: Compression,
    group_rows: usize,
) {
    let schema = Arc::new(
        parse_message_type("message doc { REQUIRED INT64 id; OPTIONAL BYTE_ARRAY text (UTF8); }")
            .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_row_count_limit(7)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for (g, group) in docs.chunks(group_rows).enumerate() {
        let mut rg = writer.next_row_group().unwrap();
        let ids: Vec<i64> = (0..group.len())
            .map(|i| (g * group_rows + i) as i64)
            .collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let values: Vec<ByteArray> = group
            .iter()
            .flatten()
            .map(|d| ByteArray::from(d.as_str()))
            .collect();
        let defs: Vec<i16> = group.iter().map(|d| i16::from(d.is_some())).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

fn some(docs: &[String]) -> Vec<Option<String>> {
    docs.iter().cloned().map(Some).collect()
}

#[test]
fn parquet_with_every_hub_codec_prepares_as_its_jsonl_does() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let jsonl = dir.path().join("docs.jsonl");
    write_jsonl(&jsonl, &docs);
    let expected = prepared(&jsonl, dir.path(), "text");
    let codecs = [
        ("plain", Compression::UNCOMPRESSED),
        ("snappy", Compression::SNAPPY),
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
    ];
    for (name, codec) in codecs {
        let path = dir.path().join(format!("{name}.parquet"));
        write_parquet(&path, &some(&docs), codec, 16);
        assert_eq!(prepared(&path, dir.path(), "text"), expected, "{name}");
    }

    // Null rows are skipped, as empty documents are.
    let mut with_nulls = some(&docs);
    for i in [3, 4, 17, 39] {
        with_nulls.insert(i, None);
    }
    let path = dir.path().join("nulls.parquet");
    write_parquet(&path, &with_nulls, Compression::SNAPPY, 9);
    assert_eq!(prepared(&path, dir.path(), "text"), expected);
}

#[test]
fn parquet_column_inside_a_struct_is_named_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let jsonl = dir.path().join("docs.jsonl");
    write_jsonl(&jsonl, &docs);
    let expected = prepared(&jsonl, dir.path(), "text");

    let path = dir.path().join("nested.parquet");
    let schema = Arc::new(
        parse_message_type(
            "message doc { REQUIRED GROUP meta { REQUIRED BYTE_ARRAY text (UTF8); } }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(&path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::default())).unwrap();
    let mut rg = writer.next_row_group().unwrap();
    let values: Vec<ByteArray> = docs.iter().map(|d| ByteArray::from(d.as_str())).collect();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&values, None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    writer.close().unwrap();
    assert_eq!(prepared(&path, dir.path(), "meta.text"), expected);
}

#[test]
fn compressed_json_lines_prepare_as_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let jsonl = dir.path().join("docs.jsonl");
    write_jsonl(&jsonl, &docs);
    let plain = std::fs::read(&jsonl).unwrap();
    let expected = prepared(&jsonl, dir.path(), "text");

    // gzip in two members, as concatenated .gz files are.
    let gz = dir.path().join("docs.jsonl.gz");
    let (a, b) = plain.split_at(plain.len() / 2);
    let mut bytes = Vec::new();
    for part in [a, b] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(part).unwrap();
        bytes.extend(enc.finish().unwrap());
    }
    std::fs::write(&gz, bytes).unwrap();
    assert_eq!(prepared(&gz, dir.path(), "text"), expected);

    let zst = dir.path().join("docs.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(&plain[..], 3).unwrap()).unwrap();
    assert_eq!(prepared(&zst, dir.path(), "text"), expected);

    // The Hub's .json.gz (C4) are JSON Lines too.
    let c4 = dir.path().join("c4.json.gz");
    std::fs::copy(&gz, &c4).unwrap();
    assert_eq!(prepared(&c4, dir.path(), "text"), expected);
}

#[test]
fn missing_or_non_text_columns_are_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.parquet");
    write_parquet(&path, &some(&documents()), Compression::SNAPPY, 16);
    let line = prepare_error(&path, "content");
    assert!(
        line.contains("docs.parquet: no column \"content\"") && line.contains("id, text"),
        "{line}"
    );
    let line = prepare_error(&path, "id");
    assert!(
        line.contains("column \"id\" holds INT64, not text"),
        "{line}"
    );

    let gz = dir.path().join("docs.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"{\"content\": \"a\"}\n").unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let line = prepare_error(&gz, "text");
    assert!(
        line.contains("docs.jsonl.gz:1: no string field \"text\""),
        "{line}"
    );
}

/// Writes `bytes` cut to `keep` of its length as `name` in `dir`.
fn write_cut(dir: &Path, name: &str, bytes: &[u8], keep: f64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
    path
}

#[test]
fn corrupt_and_truncated_files_are_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = documents();
    let parquet = d.join("good.parquet");
    write_parquet(&parquet, &some(&docs), Compression::SNAPPY, 16);
    let bytes = std::fs::read(&parquet).unwrap();

    let path = write_cut(
        d,
        "junk.parquet",
        b"this is not parquet at all, not even close",
        1.0,
    );
    let line = prepare_error(&path, "text");
    assert!(
        line.contains("junk.parquet: not a readable Parquet file"),
        "{line}"
    );
    // Cut: the footer is gone.
    let path = write_cut(d, "cut.parquet", &bytes, 0.6);
    let line = prepare_error(&path, "text");
    assert!(
        line.contains("cut.parquet: not a readable Parquet file"),
        "{line}"
    );
    // Pages overwritten: the footer reads, the data does not.
    let mut scrambled = bytes.clone();
    for b in &mut scrambled[4..bytes.len() / 2] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let path = write_cut(d, "scrambled.parquet", &scrambled, 1.0);
    let line = prepare_error(&path, "text");
    assert!(
        line.contains("scrambled.parquet: corrupt Parquet data in row group 0"),
        "{line}"
    );

    let jsonl = d.join("docs.jsonl");
    write_jsonl(&jsonl, &docs);
    let plain = std::fs::read(&jsonl).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).unwrap();
    let gz = enc.finish().unwrap();
    let path = write_cut(d, "cut.jsonl.gz", &gz, 0.5);
    let line = prepare_error(&path, "text");
    assert!(
        line.contains("cut.jsonl.gz: corrupt or truncated gzip data"),
        "{line}"
    );
    let path = write_cut(d, "junk.jsonl.gz", &plain, 1.0);
    let line = prepare_error(&path, "text");
    assert!(
        line.contains("junk.jsonl.gz: corrupt or truncated gzip data"),
        "{line}"
    );

    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let path = write_cut(d, "cut.jsonl.zst", &zst, 0.5);
    let line = prepare_error(&path, "text");
    assert!(
        line.contains("cut.jsonl.zst: corrupt or truncated zstd data"),
        "{line}"
    );
    let path = write_cut(d, "junk.jsonl.zst", &plain, 1.0);
    let line = prepare_error(&path, "text");
    assert!(
        line.contains("junk.jsonl.zst: corrupt or truncated zstd data"),
        "{line}"
    );
}
