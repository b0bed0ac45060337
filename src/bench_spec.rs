//! `specd bench-spec`: speculative decoding against target-only decoding on a set of prompts,
//! every method on every prompt in one run (methods rotate their order from prompt to prompt so
//! that machine drift spreads evenly), greedy. Prints one markdown table.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use specd_engine::actors::Method;
use specd_engine::chat::{ChatTemplate, Message};
use specd_engine::generate::{GenerateOutput, GenerateRequest};
use specd_engine::model;
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{
    generate_speculative, DraftModelProposer, DraftPolicyConfig, GlideProposer, NgramProposer,
    Proposer, SpecStats,
};

use crate::generate::{glide_path, load_drafter, load_glide, ModelArgs};

#[derive(Args, Debug)]
pub struct BenchSpecArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The draft model (default: the fetched Qwen2.5-Coder-0.5B).
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Keep only the first N rows of the draft model's head (0: all).
    #[arg(long, default_value_t = 0)]
    draft_head: usize,
    /// The GLIDE drafter [default with the default target: the trained one, where found].
    #[arg(long)]
    glide: Option<PathBuf>,
    /// A JSON file `{"prompts": [{"kind": ..., "text": ...}, ...]}`; each text is sent as the
    /// user message of the target's chat template.
    #[arg(long, default_value = "scripts/bench/code_prompts.json")]
    prompts: PathBuf,
    /// Use only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens generated per prompt and method.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Comma-separated methods: `none`, `draft:K`, `draft:adaptive:MAX`, `ngram:K`,
    /// `ngram:adaptive:MAX`, `glide:K`, `glide:adaptive:MAX`, `glide+ngram:K`,
    /// `glide+ngram:adaptive:MAX`; any but `none` may end in `:cC`: a drafter stops drafting
    /// where its top probability falls below C (serve's `--confidence`).
    #[arg(
        long,
        default_value = "none,draft:2,draft:3,draft:4,draft:5,draft:6,draft:adaptive:6,ngram:6"
    )]
    methods: String,
    /// Sampling temperature (0: greedy). Sampled outputs differ between methods (each draws
    /// its own random numbers), so the `output = none` column then says `sampled`; the law of
    /// sampled speculation is checked by the distribution tests instead.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed of prompt i's sampling is SEED + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// One column of the comparison: a method with its draft-length policy.
#[derive(Debug, Clone)]
struct Mode {
    label: String,
    method: Method,
    policy: DraftPolicyConfig,
}

fn parse_methods(spec: &str) -> anyhow::Result<Vec<Mode>> {
    let mut out = Vec::new();
    for m in spec.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let parts: Vec<&str> = m.split(':').collect();
        let num = |s: &str| -> anyhow::Result<usize> {
            let k: usize = s
                .parse()
                .with_context(|| format!("method `{m}`: `{s}` is not a number"))?;
            anyhow::ensure!(
                (1..=15).contains(&k),
                "method `{m}`: draft length must be 1..=15"
            );
            Ok(k)
        };
        let usage = || {
            anyhow::anyhow!("unknown method `{m}`: use none, or draft, ngram, glide or glide+ngram as METHOD:K or METHOD:adaptive:MAX, either followed by :cC to stop drafting below confidence C")
        };
        let method: Method = parts[0].parse().map_err(|_| usage())?;
        // A last part `cC`: drafting stops where the drafter's top probability falls below C.
        let (parts, confidence) = match parts.split_last() {
            Some((last, rest)) if rest.len() > 1 && last.starts_with('c') => {
                let c: f32 = last[1..]
                    .parse()
                    .with_context(|| format!("method `{m}`: `{last}` is not c and a number"))?;
                anyhow::ensure!(
                    (0.0..=1.0).contains(&c),
                    "method `{m}`: confidence must be in [0, 1]"
                );
                (rest.to_vec(), Some(c))
            }
            _ => (parts, None),
        };
        let (max_draft, adaptive) = match (method, &parts[1..]) {
            (Method::None, []) => (0, false),
            (Method::None, _) => return Err(usage()),
            (_, [k]) => (num(k)?, false),
            (_, ["adaptive", k]) => (num(k)?, true),
            _ => return Err(usage()),
        };
        out.push(Mode {
            label: m.to_string(),
            method,
            policy: DraftPolicyConfig {
                max_draft,
                adaptive,
                confidence,
            },
        });
    }
    anyhow::ensure!(!out.is_empty(), "no methods given");
    Ok(out)
}

#[derive(Default, Clone)]
struct Totals {
    tokens: u64,
    decode: Duration,
    prefill: Duration,
    spec: SpecStats,
    same_as_none: usize,
    by_kind: std::collections::BTreeMap<String, (u64, Duration)>,
}

/// Reads a prompt file `{"prompts": [{"kind": ..., "text": ...}, ...]}` as (kind, text) pairs.
pub fn read_prompts(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&raw).with_context(|| format!("{}: not JSON", path.display()))?;
    json["prompts"]
        .as_array()
        .with_context(|| format!("{}: no `prompts` array", path.display()))?
        .iter()
        .map(|p| {
            let kind = p["kind"].as_str().unwrap_or("prompt").to_string();
            let text = p["text"].as_str().context("a prompt without `text`")?;
            Ok((kind, text.to_string()))
        })
        .collect()
}

/// Loads and warms up the target, with its tokenizer and chat template (the benchmarks send
/// every prompt as a user message).
pub fn load_chat_target(
    args: &ModelArgs,
) -> anyhow::Result<(model::LoadedModel, model::Tokenizer, ChatTemplate)> {
    let target = args.load()?;
    target.model.warm_up()?;
    let tokenizer = target
        .tokenizer
        .clone()
        .context("the target has no tokenizer")?;
    let template = ChatTemplate::new(
        target
            .chat_template
            .as_deref()
            .context("the target ships no chat template")?,
        tokenizer.bos_token(),
        tokenizer.eos_token(),
    )?;
    Ok((target, tokenizer, template))
}

/// The given draft model, or the fetched default.
fn draft_or_default(path: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match path {
        Some(p) => p.clone(),
        None => model::default_model(model::DEFAULT_DRAFT_FILE)?,
    })
}

/// Where the benchmarks' drafters come from.
pub struct DrafterFiles<'a> {
    /// The draft model (default: the fetched one).
    pub draft: Option<&'a PathBuf>,
    /// Keep only this many rows of the draft model's head (0: all).
    pub draft_head: usize,
    /// The GLIDE drafter (default with the default target: the one found).
    pub glide: Option<&'a PathBuf>,
    pub default_target: bool,
}

/// The draft model and the GLIDE drafter, each loaded only when one of `methods` drafts with
/// it.
pub fn load_drafters(
    methods: &[Method],
    files: &DrafterFiles<'_>,
    target: &model::LoadedModel,
    tokenizer: &model::Tokenizer,
) -> anyhow::Result<(Option<DraftModelProposer>, Option<GlideProposer>)> {
    let draft = if methods.contains(&Method::Draft) {
        let path = draft_or_default(files.draft)?;
        Some(load_drafter(&path, files.draft_head, target, tokenizer)?)
    } else {
        None
    };
    let glide = if methods.iter().any(|m| m.needs_glide()) {
        let path = glide_path(files.glide, files.default_target)?;
        Some(load_glide(&path, target)?)
    } else {
        None
    };
    Ok((draft, glide))
}

/// Renders `text` as the user message of the target's chat template, ready for generation,
/// and encodes it.
pub fn encode_user_prompt(
    template: &ChatTemplate,
    tokenizer: &model::Tokenizer,
    text: &str,
) -> anyhow::Result<Vec<u32>> {
    let prompt = template.render(&[Message::new("user", text)], true)?;
    Ok(tokenizer.encode(&prompt, true)?)
}

/// The target, with its tokenizer and chat template, and the drafters that the methods
/// generate with. (The fields drop in order: the drafters before the target.)
struct Models {
    ngram: NgramProposer,
    glide: Option<GlideProposer>,
    draft: Option<DraftModelProposer>,
    template: ChatTemplate,
    tokenizer: model::Tokenizer,
    target: model::LoadedModel,
}

impl Models {
    /// Loads and warms up the target, then the drafters that `methods` draft with.
    fn load(args: &BenchSpecArgs, methods: &[Mode]) -> anyhow::Result<Self> {
        let (target, tokenizer, template) = load_chat_target(&args.model)?;
        let kinds: Vec<Method> = methods.iter().map(|m| m.method).collect();
        let files = DrafterFiles {
            draft: args.draft.as_ref(),
            draft_head: args.draft_head,
            glide: args.glide.as_ref(),
            default_target: args.model.model.is_none(),
        };
        let (draft, glide) = load_drafters(&kinds, &files, &target, &tokenizer)?;
        Ok(Self {
            ngram: NgramProposer::default(),
            glide,
            draft,
            template,
            tokenizer,
            target,
        })
    }

    /// The proposer that method `m` drafts with (none for target-only decoding).
    fn proposer(&self, m: Method) -> Option<&dyn Proposer> {
        match m {
            Method::None => None,
            Method::Draft => self.draft.as_ref().map(|d| d as &dyn Proposer),
            Method::Ngram => Some(&self.ngram),
            Method::Glide => self.glide.as_ref().map(|g| g as &dyn Proposer),
            Method::GlideNgram => self.glide.as_ref().map(|g| g.with_ngram() as &dyn Proposer),
        }
    }

    /// Generates `req` with method `mode` (prompt `pi`, of kind `kind`) and reports the run on
    /// stderr.
    fn generate(
        &self,
        mode: &Mode,
        req: &GenerateRequest,
        pi: usize,
        kind: &str,
    ) -> anyhow::Result<GenerateOutput> {
        let stats = || self.target.model.gpu_stats();
        let glide_stats = || match mode.method {
            Method::Glide | Method::GlideNgram => {
                self.glide.as_ref().and_then(|g| g.model().gpu_stats())
            }
            _ => None,
        };
        let before = stats();
        let glide_before = glide_stats();
        let out = generate_speculative(
            &self.target.model,
            &self.tokenizer,
            self.proposer(mode.method),
            mode.policy,
            req,
            |_| {},
        )?;
        let graphs = gpu_note("target", before, stats());
        let drafter = gpu_note("GLIDE", glide_before, glide_stats());
        eprintln!(
            "prompt {pi:2} ({kind}) {:<18} {:4} tokens {:6.2} tok/s  accept {:5.1}%  mean len {:.2}{graphs}{drafter}",
            mode.label,
            out.tokens.len(),
            out.tokens.len() as f64 / out.decode_time.as_secs_f64().max(1e-9),
            100.0 * out.speculation.acceptance_rate(),
            out.speculation.mean_accepted_length(),
        );
        Ok(out)
    }
}

/// On a GPU, the CUDA graphs that model `who` (the target or the GLIDE drafter) captured between
/// `before` and `after` (a capture costs milliseconds: new shapes, not steady decoding), its
/// forwards, and the host's time in each before its launches are queued (metadata, uploads).
/// Unless SPECD_GPU_TIMING=0 also the GPU's time from a forward's first launch to its end. Empty
/// on the CPU.
fn gpu_note(who: &str, before: Option<model::GpuStats>, after: Option<model::GpuStats>) -> String {
    let (Some(b), Some(a)) = (before, after) else {
        return String::new();
    };
    let per = |us: u64| us as f64 / (a.forwards - b.forwards).max(1) as f64;
    let gpu = match a.gpu_us - b.gpu_us {
        0 => String::new(),
        us => format!(", GPU {:.1} µs", per(us)),
    };
    format!(
        "  {who} graphs captured {}, {} forwards, host {:.1} µs a forward{gpu}",
        a.captures - b.captures,
        a.forwards - b.forwards,
        per(a.host_us - b.host_us),
    )
}

impl Totals {
    /// Adds one generation, of a prompt of kind `kind`.
    fn add(&mut self, kind: &str, out: &GenerateOutput) {
        self.tokens += out.tokens.len() as u64;
        self.decode += out.decode_time;
        self.prefill += out.prefill_time;
        self.spec.add(&out.speculation);
        let e = self.by_kind.entry(kind.to_string()).or_default();
        e.0 += out.tokens.len() as u64;
        e.1 += out.decode_time;
    }
}

/// The generation request of prompt `pi`: `text` as the user message of the target's chat
/// template, sampled with seed `--seed` + `pi`.
fn prompt_request(
    args: &BenchSpecArgs,
    models: &Models,
    pi: usize,
    text: &str,
) -> anyhow::Result<GenerateRequest> {
    Ok(GenerateRequest {
        prompt: encode_user_prompt(&models.template, &models.tokenizer, text)?,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            seed: args.seed + pi as u64,
            ..SamplingParams::default()
        },
        stop: Vec::new(),
        ignore_eos: false,
    })
}

/// Runs every method on prompt `pi` (of kind `kind`), starting from method `pi` so that the
/// order rotates from prompt to prompt; adds each run to its method's totals, and counts the
/// methods whose output is target-only decoding's.
fn bench_prompt(
    models: &Models,
    methods: &[Mode],
    req: &GenerateRequest,
    pi: usize,
    kind: &str,
    totals: &mut [Totals],
) -> anyhow::Result<()> {
    let mut outputs: Vec<Option<Vec<u32>>> = vec![None; methods.len()];
    for j in 0..methods.len() {
        let mi = (j + pi) % methods.len();
        let out = models.generate(&methods[mi], req, pi, kind)?;
        totals[mi].add(kind, &out);
        outputs[mi] = Some(out.tokens);
    }
    let none = methods.iter().position(|m| m.method == Method::None);
    for (mi, o) in outputs.iter().enumerate() {
        if none.is_some_and(|n| outputs[n] == *o) {
            totals[mi].same_as_none += 1;
        }
    }
    Ok(())
}

/// Prints the markdown table: a row for each method, over `prompts` prompts; `sampled` when
/// the temperature is above 0 (outputs then do not compare).
fn print_table(methods: &[Mode], totals: &[Totals], sampled: bool, prompts: usize) {
    let base = methods
        .iter()
        .position(|m| m.method == Method::None)
        .map(|i| totals[i].tokens as f64 / totals[i].decode.as_secs_f64());
    let kinds: Vec<String> = totals[0].by_kind.keys().cloned().collect();
    println!(
        "| method | decode tok/s | vs none | {} | acceptance | mean accepted length | lookup drafts | draft s | verify s | other s | output = none |",
        kinds.iter().map(|k| format!("{k} tok/s")).collect::<Vec<_>>().join(" | ")
    );
    println!(
        "|---|---|---|{}---|---|---|---|---|---|---|",
        "---|".repeat(kinds.len())
    );
    for (m, t) in methods.iter().zip(totals) {
        let same_as_none = if sampled {
            "sampled".to_string()
        } else {
            format!("{}/{}", t.same_as_none, prompts)
        };
        println!("{}", table_row(m, t, base, &kinds, &same_as_none));
    }
}

/// One method's row of the table: `base` is target-only decoding's tok/s where it ran,
/// `kinds` the prompt kinds of the per-kind columns, `same_as_none` the last column.
fn table_row(
    m: &Mode,
    t: &Totals,
    base: Option<f64>,
    kinds: &[String],
    same_as_none: &str,
) -> String {
    let tps = t.tokens as f64 / t.decode.as_secs_f64();
    let by_kind: Vec<String> = kinds
        .iter()
        .map(|k| {
            let (n, d) = t.by_kind[k];
            format!("{:.2}", n as f64 / d.as_secs_f64())
        })
        .collect();
    format!(
        "| {} | {:.2} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} |",
        m.label,
        tps,
        base.map_or("-".into(), |b| format!("{:.2}×", tps / b)),
        by_kind.join(" | "),
        if m.method != Method::None {
            format!("{:.1}%", 100.0 * t.spec.acceptance_rate())
        } else {
            "-".into()
        },
        if m.method != Method::None {
            format!("{:.2}", t.spec.mean_accepted_length())
        } else {
            "1".into()
        },
        // The share of drafts taken from prompt lookup (all of n-gram's; glide+ngram's
        // n-gram choices).
        if t.spec.drafts > 0 {
            format!(
                "{:.0}%",
                100.0 * t.spec.lookup_drafts as f64 / t.spec.drafts as f64
            )
        } else {
            "-".into()
        },
        t.spec.draft_time.as_secs_f64(),
        t.spec.verify_time.as_secs_f64(),
        // The rest of decoding: acceptance, KV rollback, detokenization and stop strings
        // between the steps (the target waits for it).
        (t.decode
            .saturating_sub(t.spec.draft_time + t.spec.verify_time))
        .as_secs_f64(),
        same_as_none,
    )
}

pub fn run(args: BenchSpecArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.temperature.is_finite() && args.temperature >= 0.0,
        "--temperature must be a number ≥ 0 (0: greedy), not {}",
        args.temperature
    );
    let methods = parse_methods(&args.methods)?;
    let mut prompts = read_prompts(&args.prompts)?;
    if let Some(n) = args.limit {
        prompts.truncate(n);
    }
    let models = Models::load(&args, &methods)?;
    let mut totals = vec![Totals::default(); methods.len()];
    for (pi, (kind, text)) in prompts.iter().enumerate() {
        let req = prompt_request(&args, &models, pi, text)?;
        bench_prompt(&models, &methods, &req, pi, kind, &mut totals)?;
    }
    print_table(&methods, &totals, args.temperature > 0.0, prompts.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_into_the_engine_method_and_a_policy() {
        let m = parse_methods(
            "none, draft:4,ngram:adaptive:6,glide:3,glide:adaptive:5,glide+ngram:4,\
             glide+ngram:adaptive:6",
        )
        .unwrap();
        let got: Vec<(Method, usize, bool)> = m
            .iter()
            .map(|m| (m.method, m.policy.max_draft, m.policy.adaptive))
            .collect();
        assert!(m.iter().all(|m| m.policy.confidence.is_none()));
        let gated = parse_methods("glide:6:c0.3,glide+ngram:adaptive:6:c0.25").unwrap();
        let with_confidence: Vec<(Method, usize, bool, Option<f32>)> = gated
            .iter()
            .map(|m| {
                let p = &m.policy;
                (m.method, p.max_draft, p.adaptive, p.confidence)
            })
            .collect();
        assert_eq!(
            with_confidence,
            [
                (Method::Glide, 6, false, Some(0.3)),
                (Method::GlideNgram, 6, true, Some(0.25))
            ]
        );
        assert_eq!(
            got,
            [
                (Method::None, 0, false),
                (Method::Draft, 4, false),
                (Method::Ngram, 6, true),
                (Method::Glide, 3, false),
                (Method::Glide, 5, true),
                (Method::GlideNgram, 4, false),
                (Method::GlideNgram, 6, true)
            ]
        );
        for bad in [
            "none:3",
            "warp:4",
            "draft",
            "draft:0",
            "draft:x",
            "ngram:fast:4",
            "glide",
            "glide+ngram",
            "glide+ngram:adaptive",
            "glide:c0.5",
            "glide:4:c1.5",
            "glide:4:cx",
            "none:c0.5",
            "",
        ] {
            assert!(parse_methods(bad).is_err(), "`{bad}` was accepted");
        }
    }
}
