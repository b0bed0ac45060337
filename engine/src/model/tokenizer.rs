//! Tokenizers: a Hugging Face `tokenizer.json`, or a byte-level BPE built from GGUF metadata.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::config::gguf_usize;
use crate::error::{Error, Result};

/// Pre-tokenizer patterns, by the name GGUF's `tokenizer.ggml.pre` gives them.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: usize = 3;
const TOKEN_TYPE_USER_DEFINED: usize = 4;

/// Texts that end a turn or a document in the chat formats specd knows; a control token with
/// one of these texts stops generation even when the metadata names another EOS.
const END_OF_GENERATION: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "</s>",
    "<|eom_id|>",
];

/// A tokenizer plus the special tokens generation needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// The same tokenizer with special-token matching off, built on first use.
    plain: Arc<std::sync::OnceLock<tokenizers::Tokenizer>>,
    eos_token_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::file(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Self::from_tokenizer(inner))
    }

    /// Wraps a tokenizer built in code; EOS tokens are found by their text.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Self {
        let eos_token_ids = END_OF_GENERATION
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        Self {
            inner: Arc::new(inner),
            plain: Arc::default(),
            eos_token_ids,
            bos_token: None,
            eos_token: None,
        }
    }

    /// Builds a byte-level BPE tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| Error::file(path, format!("missing GGUF key `{k}`")))
        };
        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(|_| Error::file(path, "`tokenizer.ggml.model` is not a string"))?;
        if model != "gpt2" {
            return Err(Error::file(
                path,
                format!(
                    "tokenizer model `{model}` is not supported from GGUF metadata (only byte-level \
                     BPE, `gpt2`); pass a tokenizer.json instead"
                ),
            ));
        }
        let tokens = string_array(get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens", path)?;
        let merges = string_array(get("tokenizer.ggml.merges")?, "tokenizer.ggml.merges", path)?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::file(path, format!("malformed BPE merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = bpe_model(&tokens, merges)
            .map_err(|e| Error::file(path, format!("cannot build BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map_or("default", String::as_str);
        set_byte_level_pre_tokenizer(&mut inner, pre, path)?;
        add_gguf_whole_tokens(&mut inner, md, &tokens, path)?;

        let token_id = |k: &str| md.get(k).and_then(gguf_usize).map(|v| v as u32);
        let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        Ok(Self {
            bos_token: name_of(token_id("tokenizer.ggml.bos_token_id")),
            eos_token: name_of(token_id("tokenizer.ggml.eos_token_id")),
            eos_token_ids: gguf_eos_ids(&inner, token_id),
            inner: Arc::new(inner),
            plain: Arc::default(),
        })
    }

    /// Token ids that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Adds end-of-generation ids (from the model config).
    pub fn add_eos_token_ids(&mut self, ids: &[u32]) {
        for &id in ids {
            if !self.eos_token_ids.contains(&id) {
                self.eos_token_ids.push(id);
            }
        }
    }

    /// Forgets every end-of-generation id (callers that want a fixed output length).
    pub fn clear_eos_token_ids(&mut self) {
        self.eos_token_ids.clear();
    }

    /// Sets the BOS/EOS token texts the chat template sees.
    pub fn set_special_texts(&mut self, bos: Option<String>, eos: Option<String>) {
        if bos.is_some() {
            self.bos_token = bos;
        }
        if eos.is_some() {
            self.eos_token = eos;
        }
    }

    /// The BOS token text, if the model has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS token text, if the model has one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Encodes text. With `parse_special`, special-token texts (`<|im_start|>`) in the input
    /// become their ids; without it they are tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let enc = if parse_special {
            self.inner.encode_fast(text, false)
        } else {
            self.plain
                .get_or_init(|| {
                    let mut t = (*self.inner).clone();
                    t.set_encode_special_tokens(true);
                    t
                })
                .encode_fast(text, false)
        }
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, special tokens included unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// A stream that turns ids into text one token at a time.
    pub fn text_stream(&self, skip_special: bool) -> TextStream {
        TextStream {
            tokenizer: self.inner.clone(),
            skip_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// Incremental detokenization that never splits a UTF-8 character: text is released only once
/// the bytes of every character in it have arrived.
#[derive(Debug, Clone)]
pub struct TextStream {
    tokenizer: Arc<tokenizers::Tokenizer>,
    skip_special: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl TextStream {
    /// Feeds one token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        tokenizers::step_decode_stream(
            &self.tokenizer,
            vec![id],
            self.skip_special,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// A BPE model whose token ids are the positions in `tokens`.
pub(crate) fn bpe_model(
    tokens: &[String],
    merges: Vec<(String, String)>,
) -> tokenizers::Result<BPE> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    BPE::builder().vocab_and_merges(vocab, merges).build()
}

/// The split pattern (and normalization) of the GGUF pre-tokenizer `pre`, then byte-level
/// encoding and decoding, as llama.cpp applies them for that name.
fn set_byte_level_pre_tokenizer(
    inner: &mut tokenizers::Tokenizer,
    pre: &str,
    path: &Path,
) -> Result<()> {
    let (pattern, nfc) = match pre {
        "qwen2" => (QWEN2_SPLIT, true),
        "llama-bpe" | "llama3" | "smaug-bpe" => (LLAMA3_SPLIT, false),
        "default" | "gpt2" | "gpt-2" => (GPT2_SPLIT, false),
        other => {
            return Err(Error::file(
                path,
                format!(
                    "unsupported pre-tokenizer `tokenizer.ggml.pre = {other}` (specd knows \
                     qwen2, llama-bpe, llama3, smaug-bpe, gpt2)"
                ),
            ))
        }
    };
    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::Tokenizer(format!("pre-tokenizer pattern: {e}")))?;
    inner.with_pre_tokenizer(Some(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])));
    if nfc {
        inner
            .with_normalizer(Some(NFC))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
    }
    inner.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok(())
}

/// Control and user-defined tokens (`tokenizer.ggml.token_type`) are matched whole in the
/// input, never split by BPE.
fn add_gguf_whole_tokens(
    inner: &mut tokenizers::Tokenizer,
    md: &std::collections::HashMap<String, Value>,
    tokens: &[String],
    path: &Path,
) -> Result<()> {
    let Some(types) = md.get("tokenizer.ggml.token_type") else {
        return Ok(());
    };
    let types = types
        .to_vec()
        .map_err(|_| Error::file(path, "`tokenizer.ggml.token_type` is not an array"))?;
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (i, ty) in types.iter().enumerate() {
        match gguf_usize(ty) {
            Some(TOKEN_TYPE_CONTROL) => special.push(AddedToken::from(tokens[i].clone(), true)),
            Some(TOKEN_TYPE_USER_DEFINED) => user.push(AddedToken::from(tokens[i].clone(), false)),
            _ => {}
        }
    }
    inner
        .add_special_tokens(special)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    inner
        .add_tokens(user)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(())
}

/// The ids that end generation: the file's end-of-sequence and end-of-turn ids (`token_id` of
/// a metadata key), then the known end-of-generation tokens the vocabulary has, each once.
fn gguf_eos_ids(inner: &tokenizers::Tokenizer, token_id: impl Fn(&str) -> Option<u32>) -> Vec<u32> {
    let mut ids = Vec::new();
    let from_keys = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .into_iter()
        .filter_map(token_id);
    let from_names = END_OF_GENERATION
        .iter()
        .filter_map(|t| inner.token_to_id(t));
    for id in from_keys.chain(from_names) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

fn string_array(v: &Value, key: &str, path: &Path) -> Result<Vec<String>> {
    let arr = v
        .to_vec()
        .map_err(|_| Error::file(path, format!("`{key}` is not an array")))?;
    arr.iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| Error::file(path, format!("`{key}` holds a non-string")))
        })
        .collect()
}
