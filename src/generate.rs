//! `specd generate`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use specd_engine::actors::Method;
use specd_engine::chat::{ChatTemplate, Message};
use specd_engine::generate::GenerateRequest;
use specd_engine::kv::KvDtype;
use specd_engine::model::{self, Device, GlideModel, LoadOptions, WeightStorage};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{
    generate_speculative, DraftModelProposer, DraftPolicyConfig, GlideProposer, NgramProposer,
    Proposer,
};

/// Model selection shared by the subcommands.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face model folder (default: the fetched Qwen2.5-Coder-1.5B).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A tokenizer.json to use instead of the model's own tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Where the models run: `cpu`, `cuda` or `cuda:N` (a build with `--features cuda`)
    /// [default: cpu].
    #[arg(long, env = "SPECD_DEVICE")]
    pub device: Option<Device>,
    /// Element type of the target's and draft model's KV caches: `bf16` halves their memory
    /// and what attention reads at depth, rounding keys and values to 8 bits of mantissa
    /// [default: f32 on the CPU, bf16 on a GPU].
    #[arg(long, value_enum, env = "SPECD_KV_DTYPE")]
    pub kv_dtype: Option<KvDtype>,
    /// How a quantized model file's matrices are held: `stored` (quantized, as in the file)
    /// or `dense` (dequantized at load: bf16 on a GPU, f32 on the CPU; the draft model
    /// follows the target) [default: stored].
    #[arg(long, value_enum, env = "SPECD_WEIGHTS")]
    pub weights: Option<WeightStorage>,
}

impl ModelArgs {
    /// Loads the chosen model, or the default one.
    pub fn load(&self) -> anyhow::Result<model::LoadedModel> {
        let path = match &self.model {
            Some(p) => p.clone(),
            None => model::default_model(model::DEFAULT_TARGET_FILE)?,
        };
        let opts = LoadOptions {
            tokenizer: self.tokenizer.clone(),
            device: self.device.unwrap_or_default(),
            kv_dtype: self.kv_dtype,
            weights: self.weights.unwrap_or_default(),
        };
        // Engine errors name the file already.
        Ok(model::load(&path, &opts)?)
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Raw prompt text (special tokens such as <|im_start|> are recognized).
    #[arg(long, conflicts_with = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the model's own chat template.
    #[arg(long)]
    chat: Option<String>,
    /// A system message to put before --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    spec: SpecArgs,
}

/// Loads a draft model for `target` on the target's device, its head cut to `head_rows` rows
/// unless 0.
pub fn load_drafter(
    path: &std::path::Path,
    head_rows: usize,
    target: &model::LoadedModel,
    tokenizer: &model::Tokenizer,
) -> anyhow::Result<DraftModelProposer> {
    let opts = LoadOptions {
        tokenizer: None,
        device: target.model.device(),
        kv_dtype: Some(target.model.kv_dtype()),
        weights: target.model.weight_storage(),
    };
    let mut d = model::load(path, &opts)?;
    if head_rows > 0 {
        d.model.restrict_head(head_rows)?;
    }
    d.model.warm_up()?;
    Ok(DraftModelProposer::new(
        Arc::new(d.model),
        d.tokenizer.as_ref(),
        &d.path,
        &target.model,
        tokenizer,
    )?)
}

/// Where the default GLIDE drafter is looked for, in order: the models folder, then
/// `models/glide/` of the repository this binary was built from.
pub fn default_glide_paths() -> [PathBuf; 2] {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        model::models_dir().join(model::DEFAULT_GLIDE_FILE),
        repository
            .join("models/glide")
            .join(model::DEFAULT_GLIDE_FILE),
    ]
}

/// The default GLIDE drafter's file if there is one, else where it was looked for (which an
/// info line says too).
pub fn find_default_glide() -> Result<PathBuf, String> {
    let places = default_glide_paths();
    if let Some(p) = places.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let looked = format!("{} and {}", places[0].display(), places[1].display());
    tracing::info!("no GLIDE drafter: looked for {looked}");
    Err(looked)
}

/// The GLIDE drafter of a command that drafts with one: `given`, else with the default target
/// the default one; an error saying what to pass otherwise.
pub fn glide_path(given: Option<&PathBuf>, default_target: bool) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None if default_target => find_default_glide().map_err(|looked| {
            anyhow!(
                "--speculation glide needs a GLIDE drafter and none was found (looked for \
                 {looked}): pass --glide PATH"
            )
        }),
        None => bail!(
            "--speculation glide needs a GLIDE drafter made for this target: pass --glide PATH"
        ),
    }
}

/// Loads a GLIDE drafter file for `target`, on the target's device; one made for another target
/// is refused with the file and the mismatch named.
pub fn load_glide(path: &Path, target: &model::LoadedModel) -> anyhow::Result<GlideProposer> {
    let glide = GlideModel::load(path, &target.model)?;
    Ok(GlideProposer::new(Arc::new(glide)))
}

/// Speculation flags shared by the subcommands.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// The proposer [default: `draft` on the default model pair or when --draft is given,
    /// `glide` when --glide is given, else `none`]. `glide+ngram` takes prompt lookup's draft
    /// instead of GLIDE's where the last tokens continue a long earlier match.
    #[arg(long, value_enum)]
    pub speculation: Option<Method>,
    /// The draft model: a GGUF file or Hugging Face folder sharing the target's vocabulary.
    #[arg(long)]
    pub draft: Option<PathBuf>,
    /// The GLIDE drafter: a safetensors file made for the target [default with the default
    /// target: glide-qwen2.5-coder-1.5b-instruct.safetensors in the models folder or in the
    /// repository's models/glide/, where found].
    #[arg(long)]
    pub glide: Option<PathBuf>,
    /// The most tokens drafted per step [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=15))]
    pub max_draft: Option<u16>,
    /// Adapt the draft length to acceptance (grow on full acceptance, shrink on early rejection).
    #[arg(long)]
    pub adaptive: bool,
    /// Stop drafting when the drafter's top probability falls below this (the draft model and
    /// GLIDE; n-gram drafts carry none). `serve` without it derives one from its calibration:
    /// 0.5 where a verification row costs 5 % of a step or more (a CPU), else none (a GPU); 0
    /// never stops early.
    #[arg(long)]
    pub confidence: Option<f32>,
    /// Keep only the first N rows of the draft model's output head (frequent tokens; lossless,
    /// cheaper drafting, acceptance may drop). 0 keeps the whole head [default: 0].
    #[arg(long)]
    pub draft_head: Option<usize>,
    /// Longest suffix the n-gram proposer matches [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub ngram: Option<u16>,
}

impl SpecArgs {
    /// The chosen proposer, built for `target` (a draft model is loaded here).
    pub fn proposer(
        &self,
        target: &model::LoadedModel,
        tokenizer: &model::Tokenizer,
        default_target: bool,
    ) -> anyhow::Result<Option<Box<dyn Proposer>>> {
        // A drafter given by flag is the default; with the default target, its GLIDE drafter
        // where it is found (looked for once, when it may be used), else the default pair's
        // draft model.
        let found_glide = (default_target
            && self.glide.is_none()
            && self.draft.is_none()
            && self.speculation.is_none_or(Method::needs_glide))
        .then(find_default_glide)
        .and_then(Result::ok);
        let kind = self.speculation.unwrap_or(Method::default_with(
            self.draft.is_some(),
            self.glide.is_some() || found_glide.is_some(),
            default_target && self.glide.is_none(),
        ));
        if self.draft.is_some() && !kind.needs_draft_model() {
            bail!("--draft needs --speculation draft");
        }
        if self.glide.is_some() && !kind.needs_glide() {
            bail!("--glide needs --speculation glide or glide+ngram");
        }
        Ok(match kind {
            Method::None => None,
            Method::Ngram => Some(Box::new(NgramProposer::new(
                self.ngram.unwrap_or(3) as usize,
                1,
            )?)),
            Method::Draft => {
                let path = match &self.draft {
                    Some(p) => p.clone(),
                    None => model::default_model(model::DEFAULT_DRAFT_FILE)?,
                };
                Some(Box::new(load_drafter(
                    &path,
                    self.draft_head.unwrap_or(0),
                    target,
                    tokenizer,
                )?))
            }
            Method::Glide | Method::GlideNgram => {
                let path = match self.glide.clone().or(found_glide) {
                    Some(p) => p,
                    None => glide_path(None, default_target)?,
                };
                let glide = load_glide(&path, target)?;
                if kind == Method::GlideNgram {
                    Some(Box::new(glide.with_ngram().clone()))
                } else {
                    Some(Box::new(glide))
                }
            }
        })
    }

    /// The draft-length policy.
    pub fn policy(&self, proposer: Option<&dyn Proposer>) -> DraftPolicyConfig {
        DraftPolicyConfig {
            max_draft: if proposer.is_some() {
                self.max_draft.unwrap_or(4) as usize
            } else {
                0
            },
            adaptive: self.adaptive,
            confidence: self.confidence,
        }
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let tokenizer = loaded
        .tokenizer
        .clone()
        .context("the model has no tokenizer: pass --tokenizer tokenizer.json")?;
    let prompt = match (&args.prompt, &args.chat) {
        (Some(p), None) => p.clone(),
        (None, Some(c)) => {
            let source = loaded
                .chat_template
                .as_deref()
                .context("the model ships no chat template: use --prompt")?;
            let template = ChatTemplate::new(source, tokenizer.bos_token(), tokenizer.eos_token())?;
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(Message::new("system", s));
            }
            messages.push(Message::new("user", c));
            template.render(&messages, true)?
        }
        _ => bail!("give one of --prompt TEXT or --chat TEXT"),
    };
    let req = GenerateRequest {
        prompt: tokenizer.encode(&prompt, true)?,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repeat_penalty,
            seed: args.seed,
        },
        stop: args.stop.clone(),
        ignore_eos: false,
    };
    let proposer = args
        .spec
        .proposer(&loaded, &tokenizer, args.model.model.is_none())?;
    let proposer = proposer.as_deref();
    let policy = args.spec.policy(proposer);
    let mut stdout = std::io::stdout().lock();
    let out = generate_speculative(&loaded.model, &tokenizer, proposer, policy, &req, |text| {
        // A closed stdout (a pipe into `head`) just ends the output.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    drop(stdout);
    let prefill = out.prefill_time.as_secs_f64();
    let decode = out.decode_time.as_secs_f64();
    eprintln!(
        "\n\n[{} prompt tokens in {:.2}s: {:.1} tok/s | {} generated tokens in {:.2}s: {:.1} tok/s | finish: {}]",
        out.prompt_tokens,
        prefill,
        out.prompt_tokens as f64 / prefill.max(1e-9),
        out.tokens.len(),
        decode,
        out.tokens.len() as f64 / decode.max(1e-9),
        out.finish_reason.as_str(),
    );
    if let Some(p) = proposer {
        eprintln!("[speculation {}: {}]", p.name(), out.speculation.summary());
    }
    Ok(())
}
