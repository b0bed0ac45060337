//! The tokenizer built from the real Qwen2.5-Coder GGUF metadata against llama.cpp's own
//! tokenization of the same file (engine/tests/fixtures/tokenizer, made by
//! scripts/bench/make_tokenizer_refs.py). Needs the draft model: `scripts/fetch-models draft`.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use specd_engine::chat::{ChatTemplate, Message};
use specd_engine::model::{models_dir, Tokenizer, DEFAULT_DRAFT_FILE};
use unicode_normalization::UnicodeNormalization;

fn draft_gguf() -> PathBuf {
    let path = models_dir().join(DEFAULT_DRAFT_FILE);
    assert!(
        path.exists(),
        "this test needs the Qwen2.5-Coder-0.5B GGUF at {}: run `scripts/fetch-models draft`",
        path.display()
    );
    path
}

fn load() -> (Tokenizer, Option<String>) {
    let path = draft_gguf();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let tok = Tokenizer::from_gguf(&content, &path).unwrap();
    let template = content
        .metadata
        .get("tokenizer.chat_template")
        .map(|v| v.to_string().unwrap().clone());
    (tok, template)
}

#[test]
fn ids_match_llama_cpp_on_code_unicode_and_special_tokens() {
    let (tok, _) = load();
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/tokenizer/qwen2_llamacpp_refs.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let cases = refs["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let mut compared = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let special = c["special"].as_bool().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text, special).unwrap();
        let nfc: String = text.nfc().collect();
        if nfc != text {
            // Qwen's tokenizer.json normalizes to NFC and so do we; llama.cpp does not. Check
            // that we encode the composed text, and that it round-trips to it.
            assert_eq!(ids, tok.encode(&nfc, special).unwrap(), "{text:?}");
            assert_eq!(tok.decode(&ids, false).unwrap(), nfc);
            continue;
        }
        assert_eq!(
            ids, want,
            "ids of {text:?} (special tokens parsed: {special})"
        );
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
        compared += 1;
    }
    assert!(
        compared + 1 >= cases.len(),
        "only {compared} cases compared"
    );
}

#[test]
fn known_ids_and_end_of_generation_tokens() {
    let (tok, _) = load();
    assert_eq!(tok.encode("def", true).unwrap(), vec![750]);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(151643));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(151645));
    for id in [151643, 151645] {
        assert!(
            tok.eos_token_ids().contains(&id),
            "{id} must end generation: {:?}",
            tok.eos_token_ids()
        );
    }
    // streaming never splits a character: feed "🚀 café" token by token
    let ids = tok.encode("🚀 café 你好", true).unwrap();
    let mut stream = tok.text_stream(false);
    let mut pieces = Vec::new();
    for id in ids {
        if let Some(p) = stream.push(id).unwrap() {
            pieces.push(p);
        }
    }
    assert_eq!(pieces.concat(), "🚀 café 你好");
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
}

#[test]
fn the_models_own_chat_template_renders_chatml() {
    let (tok, template) = load();
    let template = template.expect("the Qwen GGUF carries tokenizer.chat_template");
    let t = ChatTemplate::new(&template, tok.bos_token(), tok.eos_token()).unwrap();
    let out = t
        .render(&[Message::new("user", "Write hello world in C.")], true)
        .unwrap();
    assert!(out.starts_with("<|im_start|>system\n"), "{out}");
    assert!(
        out.contains("<|im_start|>user\nWrite hello world in C.<|im_end|>\n"),
        "{out}"
    );
    assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
    let with_system = t
        .render(
            &[
                Message::new("system", "Be terse."),
                Message::new("user", "Hi"),
            ],
            false,
        )
        .unwrap();
    assert!(
        with_system.starts_with("<|im_start|>system\nBe terse.<|im_end|>"),
        "{with_system}"
    );
    assert!(!with_system.ends_with("assistant\n"));
}
