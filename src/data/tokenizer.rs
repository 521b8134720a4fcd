//! Tokenizers: every one is a Hugging Face `tokenizers` tokenizer, so each run and
//! prepared directory carries a tokenizer.json that `AutoTokenizer` can load.
//!
//! The built-in one is byte-level with no merges: ids 0..=255 are the bytes of the
//! UTF-8 text and 256 is <|endoftext|>, which separates documents. It encodes by a
//! fast path (the bytes themselves) that gives the same ids as the HF pipeline.

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

/// The tokenizer's file, in the Hugging Face tokenizers format, wherever hgpt
/// keeps one: a prepared directory, a checkpoint, an export.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

pub const EOT_TEXT: &str = "<|endoftext|>";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// End-of-text tokens of common tokenizers, tried in order for a tokenizer.json.
const EOT_CANDIDATES: &[&str] = &[EOT_TEXT, "</s>", "<|end_of_text|>", "<eos>"];

#[derive(Clone)]
pub struct Tokenizer {
    hf: HfTokenizer,
    eot: u32,
    vocab_size: usize,
    /// SHA-256 of the compact tokenizer.json.
    hash: String,
    /// The built-in byte tokenizer: encode and decode without the HF pipeline.
    bytes: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer(vocab {}, eot {}, sha256 {})",
            self.vocab_size, self.eot, self.hash
        )
    }
}

/// GPT-2's reversible map from bytes to printable characters, which byte-level
/// BPE vocabularies spell their tokens in: printable Latin-1 bytes stand for
/// themselves, the others take the characters from U+0100 on.
fn byte_char(b: u8) -> char {
    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable {
        return char::from(b);
    }
    let shifted = (0..b)
        .filter(|&x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
        .count();
    char::from_u32(256 + shifted as u32).expect("valid char")
}

/// Byte-level pre-tokenizer and decoder on `model`, as GPT-2 has them.
fn byte_level(model: BPE) -> HfTokenizer {
    let mut hf = HfTokenizer::new(model);
    hf.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    hf.with_decoder(Some(ByteLevelDecoder::default()));
    hf
}

/// Adds <|endoftext|> as a special token (the model's own id if it has one).
fn add_eot(hf: &mut HfTokenizer) -> Result<()> {
    hf.add_special_tokens([AddedToken::from(EOT_TEXT, true)])
        .map_err(|e| anyhow!("cannot add {EOT_TEXT}: {e}"))?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Tokenizer {
    /// The built-in byte-level tokenizer (vocab 257).
    pub fn bytes() -> Tokenizer {
        static BYTES: OnceLock<Tokenizer> = OnceLock::new();
        BYTES
            .get_or_init(|| {
                let vocab: Vocab = (0..=255u8)
                    .map(|b| (byte_char(b).to_string(), b as u32))
                    .collect();
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, vec![])
                    .build()
                    .expect("byte vocabulary builds");
                let mut hf = byte_level(bpe);
                add_eot(&mut hf).expect("EOT adds");
                let mut tok = Tokenizer::from_hf(hf, "the built-in byte tokenizer")
                    .expect("byte tokenizer is valid");
                assert_eq!((tok.eot, tok.vocab_size), (256, 257));
                tok.bytes = true;
                tok
            })
            .clone()
    }

    /// Any Hugging Face tokenizer.json.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        let not_one =
            |e: &dyn std::fmt::Display| anyhow!("{}: not a tokenizer.json: {e}", path.display());
        // The tokenizers crate panics on some malformed JSON (a truncated decoder
        // section) instead of failing: check the syntax first.
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| not_one(&e))?;
        let hf = HfTokenizer::from_bytes(text.as_bytes()).map_err(|e| not_one(&e))?;
        let mut tok = Tokenizer::from_hf(hf, &path.display().to_string())?;
        tok.bytes = tok.hash == Tokenizer::bytes().hash;
        Ok(tok)
    }

    /// GPT-2's encoder.json (token -> id) and vocab.bpe (merges).
    pub fn gpt2_bpe(encoder: &Path, merges: &Path) -> Result<Tokenizer> {
        let name = |p: &Path| p.to_str().map(str::to_string).context("non-UTF-8 path");
        let bpe = BPE::from_file(&name(encoder)?, &name(merges)?)
            .build()
            .map_err(|e| {
                anyhow!(
                    "cannot read GPT-2 BPE from {} and {}: {e}",
                    encoder.display(),
                    merges.display()
                )
            })?;
        let mut hf = byte_level(bpe);
        add_eot(&mut hf)?;
        Tokenizer::from_hf(hf, &encoder.display().to_string())
    }

    /// A byte-level BPE of `vocab_size` tokens (including the 256 bytes and
    /// <|endoftext|>) trained on `texts`.
    pub fn train_bpe<I, S>(vocab_size: usize, texts: I) -> Result<Tokenizer>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if vocab_size < 257 {
            bail!(
                "--train-tokenizer {vocab_size}: a byte-level vocabulary needs at least 257 tokens (256 bytes + {EOT_TEXT})"
            );
        }
        let alphabet: HashSet<char> = (0..=255u8).map(byte_char).collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .special_tokens(vec![AddedToken::from(EOT_TEXT, true)])
            .initial_alphabet(alphabet)
            .show_progress(false)
            .build();
        let mut hf = byte_level(BPE::default());
        hf.train(&mut TrainerWrapper::BpeTrainer(trainer), texts)
            .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
        Tokenizer::from_hf(hf, "the trained tokenizer")
    }

    fn from_hf(mut hf: HfTokenizer, origin: &str) -> Result<Tokenizer> {
        // Text is encoded as text: a literal "<|endoftext|>" inside a document
        // does not become the separator (documents are split before encoding).
        hf.set_encode_special_tokens(true);
        let eot = EOT_CANDIDATES
            .iter()
            .find_map(|t| hf.token_to_id(t))
            .ok_or_else(|| {
                anyhow!(
                    "{origin}: no end-of-text token (looked for {})",
                    EOT_CANDIDATES.join(", ")
                )
            })?;
        let vocab_size = hf
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let json = hf
            .to_string(false)
            .map_err(|e| anyhow!("{origin}: cannot serialise tokenizer: {e}"))?;
        Ok(Tokenizer {
            eot,
            vocab_size,
            hash: sha256_hex(json.as_bytes()),
            hf,
            bytes: false,
        })
    }

    /// One past the largest token id.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The end-of-text token, which separates documents.
    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// SHA-256 of the compact tokenizer.json: identifies the tokenizer in
    /// manifests and checkpoints whatever the file's formatting.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Writes tokenizer.json (pretty-printed, as Hugging Face writes it).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.hf
            .save(path, true)
            .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
    }

    /// tokenizer_config.json, with which transformers' `AutoTokenizer` loads the
    /// tokenizer.json beside it as hgpt uses it (no custom code): the end-of-text
    /// token as bos, eos, unk and pad (GPT-2's roles, pad for batches), a literal
    /// end-of-text in text encoded as text (`split_special_tokens`, as
    /// [`Tokenizer::encode`] does), and no space added or cleaned up.
    pub fn transformers_config(&self, model_max_length: Option<usize>) -> serde_json::Value {
        let eot = self.hf.id_to_token(self.eot);
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": eot,
            "eos_token": eot,
            "unk_token": eot,
            "pad_token": eot,
            "split_special_tokens": true,
            "add_prefix_space": false,
            "clean_up_tokenization_spaces": false,
        });
        if let Some(n) = model_max_length {
            config["model_max_length"] = n.into();
        }
        config
    }

    /// Writes tokenizer.json and tokenizer_config.json ([`Self::transformers_config`])
    /// into `dir`, so that `AutoTokenizer.from_pretrained(dir)` loads them.
    pub fn save_for_transformers(&self, dir: &Path, model_max_length: Option<usize>) -> Result<()> {
        self.save(&dir.join(TOKENIZER_FILE))?;
        let path = dir.join(TOKENIZER_CONFIG_FILE);
        let text = serde_json::to_string_pretty(&self.transformers_config(model_max_length))
            .expect("JSON serializes")
            + "\n";
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The tokens of `text`, read as plain text (no special tokens).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if self.bytes {
            return text.bytes().map(u32::from).collect();
        }
        self.hf_encode(text)
    }

    fn hf_encode(&self, text: &str) -> Vec<u32> {
        self.hf
            .encode_fast(text, false)
            .expect("encoding plain text cannot fail")
            .get_ids()
            .to_vec()
    }

    /// Tokens back to text; invalid UTF-8 is replaced, the end-of-text token is
    /// spelled out, ids outside the vocabulary are skipped.
    pub fn decode(&self, tokens: &[u32]) -> String {
        if self.bytes {
            let bytes: Vec<u8> = tokens
                .iter()
                .flat_map(|&t| match t {
                    0..=255 => vec![t as u8],
                    256 => EOT_TEXT.as_bytes().to_vec(),
                    _ => vec![],
                })
                .collect();
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        self.hf.decode(tokens, false).expect("decoding cannot fail")
    }

    /// The underlying Hugging Face tokenizer.
    pub fn hf(&self) -> &HfTokenizer {
        &self.hf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus;

    #[test]
    fn byte_chars_are_gpt2s() {
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(b' '), '\u{120}'); // GPT-2's "Ġ"
        assert_eq!(byte_char(b'\n'), '\u{10A}'); // "Ċ"
        let all: HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn byte_fast_path_matches_the_hf_pipeline() {
        let tok = Tokenizer::bytes();
        let mut text = corpus::generate(7, 20_000).join("\n");
        text.push_str(" héllo ☃ <|endoftext|> \t\r\n tail");
        let fast = tok.encode(&text);
        assert_eq!(
            fast,
            text.as_bytes()
                .iter()
                .map(|&b| b as u32)
                .collect::<Vec<_>>()
        );
        assert_eq!(fast, tok.hf_encode(&text));
        let mut ids = fast.clone();
        ids.extend([256, 0xE2, 0x98, 256, 0xFF, b'x' as u32]);
        let hf_decoded = tok.hf.decode(&ids, false).unwrap();
        assert_eq!(tok.decode(&ids), hf_decoded);
        assert!(hf_decoded.starts_with(&text));
    }

    #[test]
    fn byte_tokenizer_json_round_trips_to_the_fast_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        Tokenizer::bytes().save(&path).unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        assert_eq!(loaded.hash(), Tokenizer::bytes().hash());
        assert!(loaded.bytes);
        assert_eq!((loaded.vocab_size(), loaded.eot()), (257, 256));
    }
}
