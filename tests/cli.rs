//! End-to-end tests of the `specd` binary on a tiny model folder written by the test.

use std::path::Path;
use std::process::Command;

use specd_engine::model::tiny::{tiny_config, tiny_weights, write_folder, TinySpec};

/// Writes a Hugging Face style folder holding a tiny Qwen2 model.
fn write_tiny_folder(dir: &Path) {
    let spec = TinySpec {
        seed: 4,
        weight_scale: 0.5,
        ..Default::default()
    };
    let tensors = tiny_weights(&tiny_config(&spec), spec.seed, spec.weight_scale);
    write_folder(dir, &spec, &tensors).unwrap();
}

fn specd(args: &[&str], home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_specd"))
        .args(args)
        .env("SPECD_HOME", home)
        .output()
        .unwrap()
}

#[test]
fn generate_streams_text_and_reports_speed() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_folder(dir.path());
    let model = dir.path().to_str().unwrap();
    let out = specd(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "def add(x, y):",
            "--max-tokens",
            "12",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "specd failed: {stderr}");
    assert!(
        stderr.contains("prompt tokens") && stderr.contains("tok/s"),
        "{stderr}"
    );
    assert!(stderr.contains("generated tokens"), "{stderr}");
    // greedy is deterministic: the same command prints the same text
    let again = specd(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "def add(x, y):",
            "--max-tokens",
            "12",
        ],
        dir.path(),
    );
    assert_eq!(out.stdout, again.stdout);
    // the chat path renders the folder's own template
    let chat = specd(
        &[
            "generate",
            "--model",
            model,
            "--chat",
            "hi",
            "--max-tokens",
            "4",
        ],
        dir.path(),
    );
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
}

#[test]
fn missing_default_model_says_how_to_fetch_it() {
    let home = tempfile::tempdir().unwrap();
    let out = specd(&["generate", "--prompt", "hi"], home.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scripts/fetch-models"), "{stderr}");
}

#[test]
fn bad_arguments_are_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_folder(dir.path());
    let model = dir.path().to_str().unwrap();
    let out = specd(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "x",
            "--temperature=-1",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
    let out = specd(&["generate", "--model", model], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt"));
    let out = specd(
        &[
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "x",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.gguf"));
}

#[test]
fn speculative_generation_prints_the_same_text_and_its_statistics() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_folder(dir.path());
    let model = dir.path().to_str().unwrap();
    let base = [
        "generate",
        "--model",
        model,
        "--prompt",
        "def add(x, y):\n    return x + y\n\ndef add(x, y):",
        "--max-tokens",
        "24",
    ];
    let plain = specd(&base, dir.path());
    assert!(plain.status.success());
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(!stderr.contains("[speculation"), "{stderr}");
    for extra in [
        &["--speculation", "ngram", "--max-draft", "3"][..],
        // The model drafting for itself: every draft is accepted.
        &["--draft", model, "--max-draft", "5", "--adaptive"][..],
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = specd(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {stderr}");
        assert_eq!(out.stdout, plain.stdout, "{extra:?} changed the text");
        assert!(
            stderr.contains("[speculation") && stderr.contains("mean accepted length"),
            "{stderr}"
        );
        if extra.contains(&"--draft") {
            assert!(stderr.contains("(100.0%)"), "{stderr}");
        }
    }
    let out = specd(&[&base[..], &["--max-draft", "16"]].concat(), dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-draft"));
    let out = specd(
        &[&base[..], &["--speculation", "ngram", "--draft", model]].concat(),
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--speculation draft"));
}

#[test]
fn a_device_this_build_cannot_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_folder(dir.path());
    let model = dir.path().to_str().unwrap();
    let run = |device: &str| {
        let out = specd(
            &[
                "generate", "--model", model, "--prompt", "x", "--device", device,
            ],
            dir.path(),
        );
        assert!(!out.status.success(), "--device {device} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run("tpu");
    assert!(
        e.contains("unknown device `tpu`") && e.contains("cuda:N"),
        "{e}"
    );
    if !cfg!(feature = "cuda") {
        // A CPU build says how to get a CUDA one, never panics.
        let e = run("cuda:0");
        assert!(
            e.contains("built without CUDA") && e.contains("--features cuda"),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
}
