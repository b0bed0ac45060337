//! End-to-end tests of the `specd` binary on a tiny model folder written by the test.

use std::path::Path;
use std::process::Command;

use specd_engine::model::tiny::{
    tiny_config, tiny_weights, write_folder, write_guessing_glide, TinySpec,
};
use specd_engine::model::{DEFAULT_GLIDE_FILE, DEFAULT_TARGET_FILE};

fn tiny_spec() -> TinySpec {
    TinySpec {
        seed: 4,
        weight_scale: 0.5,
        ..Default::default()
    }
}

/// Writes a Hugging Face style folder holding a tiny Qwen2 model.
fn write_tiny_folder(dir: &Path) {
    let spec = tiny_spec();
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
fn glide_drafts_from_a_given_file_and_refuses_files_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    write_tiny_folder(&model);
    let glide = dir.path().join("glide.safetensors");
    write_guessing_glide(&glide, &tiny_spec(), 240, 9).unwrap();
    let (model, glide) = (model.to_str().unwrap(), glide.to_str().unwrap());
    let base = [
        "generate",
        "--model",
        model,
        "--prompt",
        "======",
        "--max-tokens",
        "24",
    ];
    let run = |extra: &[&str]| specd(&[&base[..], extra].concat(), dir.path());
    let plain = run(&[]);
    assert!(plain.status.success());
    // A given GLIDE drafter drafts with prompt lookup by default (glide+ngram), or alone.
    for (extra, method) in [
        (&[][..], "glide+ngram"),
        (&["--speculation", "glide"][..], "glide"),
    ] {
        let out = run(&[&["--glide", glide, "--max-draft", "4"][..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(out.stdout, plain.stdout, "{method} changed the text");
        assert!(
            stderr.contains(&format!("[speculation {method}:")),
            "{stderr}"
        );
    }
    let refused = |extra: &[&str], wanted: &[&str]| {
        let out = run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{extra:?} succeeded");
        for w in wanted {
            assert!(stderr.contains(w), "{extra:?}: {stderr}");
        }
    };
    refused(&["--speculation", "glide"], &["pass --glide PATH"]);
    refused(
        &["--glide", glide, "--speculation", "ngram"],
        &["--glide needs --speculation glide or glide+ngram"],
    );
    // A drafter made for a target of another width is refused, the file and mismatch named.
    let other = dir.path().join("other.safetensors");
    let wider = TinySpec {
        hidden_size: 2 * tiny_spec().hidden_size,
        ..tiny_spec()
    };
    write_guessing_glide(&other, &wider, 240, 9).unwrap();
    refused(
        &["--glide", other.to_str().unwrap()],
        &[other.to_str().unwrap(), "hidden size"],
    );
    refused(
        &["--glide", "/nonexistent/g.safetensors"],
        &["/nonexistent/g.safetensors"],
    );
}

/// With the default target, `--speculation glide` finds the GLIDE drafter in the models
/// folder by its default name, and says where it looked when there is none.
#[test]
fn the_default_glide_drafter_is_found_in_the_models_folder() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    // The tiny folder stands in for the default target, under its name.
    write_tiny_folder(&models.join(DEFAULT_TARGET_FILE));
    let args = [
        "generate",
        "--prompt",
        "======",
        "--max-tokens",
        "24",
        "--speculation",
    ];
    let plain = specd(&[&args[..], &["none"]].concat(), home.path());
    assert!(plain.status.success());
    let missing = specd(&[&args[..], &["glide"]].concat(), home.path());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    let in_repository = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/glide")
        .join(DEFAULT_GLIDE_FILE);
    if in_repository.exists() {
        // The repository's drafter is made for the real target, not this tiny one.
        assert!(stderr.contains(in_repository.to_str().unwrap()), "{stderr}");
    } else {
        let home_file = models.join(DEFAULT_GLIDE_FILE);
        assert!(
            stderr.contains("looked for") && stderr.contains(home_file.to_str().unwrap()),
            "{stderr}"
        );
    }
    write_guessing_glide(&models.join(DEFAULT_GLIDE_FILE), &tiny_spec(), 240, 9).unwrap();
    let out = specd(&[&args[..], &["glide"]].concat(), home.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, plain.stdout);
    assert!(stderr.contains("[speculation glide:"), "{stderr}");
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

/// The three CPU benchmarks run end to end on the tiny model and print their tables (their
/// numbers are not checked here: benchmarks are commands, not assertions); bench-spec also
/// checks every method's output against target-only and says how many matched.
#[test]
fn the_benchmarks_print_their_tables_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_folder(dir.path());
    let model = dir.path().to_str().unwrap();
    let prompts = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/bench/code_prompts.json"
    );
    let run = |args: &[&str]| {
        let out = specd(args, dir.path());
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    // A benchmark command on the tiny model and the bench prompts, then its own arguments.
    let bench = |command: &str, rest: &[&str]| {
        run(&[&[command, "--model", model, "--prompts", prompts], rest].concat())
    };
    let spec = bench(
        "bench-spec",
        &[
            "--draft",
            model,
            "--limit",
            "2",
            "--max-tokens",
            "12",
            "--methods",
            "none,ngram:3,draft:2",
        ],
    );
    let rows = table(&spec, "| method | decode tok/s |");
    for method in ["none", "ngram:3", "draft:2"] {
        let row = rows.iter().find(|r| r[0] == method);
        let row = row.unwrap_or_else(|| panic!("no {method} row:\n{spec}"));
        // The last column: outputs identical to target-only's (trivially so for none).
        assert_eq!(row.last(), Some(&"2/2"), "{method}: {spec}");
    }
    let load = bench(
        "bench-load",
        &[
            "--draft",
            model,
            "--concurrency",
            "1,2",
            "--modes",
            "none,draft:2",
            "--max-tokens",
            "8",
            "--requests",
            "3",
        ],
    );
    let rows = table(&load, "| concurrency | mode | aggregate tok/s |");
    let levels: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        levels,
        [
            ("1", "none"),
            ("1", "draft:2"),
            ("2", "none"),
            ("2", "draft:2")
        ],
        "{load}"
    );
    let prefill = bench(
        "bench-prefill",
        &[
            "--running",
            "2",
            "--prompt-tokens",
            "96",
            "--warmup",
            "3",
            "--chunks",
            "whole,auto",
        ],
    );
    let rows = table(&prefill, "| prefill | running streams |");
    assert_eq!(rows.len(), 2, "{prefill}");
    for (row, chunks) in rows.iter().zip(["whole", "auto"]) {
        assert_eq!((row[0], row[1]), (chunks, "2"), "{prefill}");
        // ITL after p50: the streams went on after the long prompt's first token.
        let after: f64 = row[6].parse().unwrap_or(f64::NAN);
        assert!(after.is_finite() && after >= 0.0, "{prefill}");
    }
}

/// The rows of the one markdown table in `out` (cells trimmed), after checking that its header
/// starts with `header` and that every row has the header's number of cells.
fn table<'a>(out: &'a str, header: &str) -> Vec<Vec<&'a str>> {
    let cells = |l: &'a str| -> Vec<&'a str> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect()
    };
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('|')).collect();
    assert!(
        lines.len() > 2 && lines[0].starts_with(header),
        "no table under `{header}`:\n{out}"
    );
    let width = cells(lines[0]).len();
    let rows: Vec<Vec<&str>> = lines[2..].iter().map(|&l| cells(l)).collect();
    for r in &rows {
        assert_eq!(
            r.len(),
            width,
            "a row of {} cells under {width} headers:\n{out}",
            r.len()
        );
    }
    rows
}
