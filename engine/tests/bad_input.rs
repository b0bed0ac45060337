//! Bad model files fail with errors that name the file and the problem, never with a panic.

use std::path::{Path, PathBuf};

use specd_engine::model::{self, LoadOptions};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
}

/// A copy of the qwen2 fixture folder that a test may damage.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden("qwen2").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(path: &Path) -> String {
    match std::panic::catch_unwind(|| model::load(path, &LoadOptions::default())) {
        Ok(Ok(_)) => panic!("{} loaded although it is broken", path.display()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("loading {} panicked", path.display()),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` does not mention `{p}`");
    }
}

#[test]
fn missing_paths_and_files() {
    let e = load_err(Path::new("/nonexistent/model.gguf"));
    assert_mentions(&e, &["/nonexistent/model.gguf", "No such file"]);
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_mentions(&load_err(dir.path()), &["no *.safetensors"]);
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_mentions(&load_err(dir.path()), &["config.json"]);
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let dir = copy_fixture();
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.safetensors", "not a valid safetensors file"],
    );
    std::fs::write(&st, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.safetensors", "not a valid safetensors file"],
    );
    std::fs::write(&st, b"").unwrap();
    assert_mentions(&load_err(dir.path()), &["model.safetensors"]);
}

/// An edit of config.json and the words its error must contain.
type ConfigCase<'a> = (Box<dyn Fn(&mut serde_json::Value)>, Vec<&'a str>);

#[test]
fn config_problems_name_the_field() {
    let dir = copy_fixture();
    let cfg_path = dir.path().join("config.json");
    let orig: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let cases: Vec<ConfigCase> = vec![
        (
            Box::new(|c| c["model_type"] = "gpt_neox".into()),
            vec!["unsupported architecture `gpt_neox`"],
        ),
        (
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("hidden_size");
            }),
            vec!["hidden_size"],
        ),
        (
            Box::new(|c| c["num_key_value_heads"] = 3.into()),
            vec!["num_key_value_heads"],
        ),
        (
            Box::new(|c| c["hidden_size"] = 80.into()),
            vec!["model.embed_tokens.weight", "[256, 64]", "[256, 80]"],
        ),
        (
            Box::new(|c| c["rope_parameters"]["rope_type"] = "yarn".into()),
            vec!["rope scaling type `yarn`"],
        ),
    ];
    for (edit, parts) in cases {
        let mut c = orig.clone();
        edit(&mut c);
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        assert_mentions(&load_err(dir.path()), &parts);
    }
    std::fs::write(&cfg_path, "{ not json").unwrap();
    assert_mentions(&load_err(dir.path()), &["config.json"]);
}

#[test]
fn missing_tensor_and_wrong_shape_are_named() {
    use candle_core::{Device, Tensor};
    let dir = copy_fixture();
    let st = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&tensors, &st).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["missing tensor `model.layers.1.mlp.up_proj.weight`"],
    );
    tensors.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        Tensor::zeros((160, 63), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &st).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &[
            "model.layers.1.mlp.up_proj.weight",
            "[160, 63]",
            "[160, 64]",
        ],
    );
}

#[test]
fn truncated_and_corrupt_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00").unwrap();
    assert_mentions(&load_err(&path), &["bad.gguf", "not a valid GGUF file"]);
    std::fs::write(&path, b"this is not a gguf file at all").unwrap();
    assert_mentions(&load_err(&path), &["bad.gguf", "not a valid GGUF file"]);

    // A valid header whose tensor data is cut short.
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let t = QTensor::quantize(
        &candle_core::Tensor::ones((64, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
        GgmlDType::Q8_0,
    )
    .unwrap();
    let arch = Value::String("llama".into());
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(
        &mut buf,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    let bytes = buf.into_inner();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert_mentions(&load_err(&path), &["bad.gguf"]);

    // A GGUF of another architecture.
    let arch = Value::String("falcon".into());
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(
        &mut buf,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    std::fs::write(&path, buf.into_inner()).unwrap();
    assert_mentions(
        &load_err(&path),
        &["bad.gguf", "unsupported architecture `falcon`"],
    );
}
