//! `specd serve`: the network server. Configuration comes from defaults, a TOML file
//! (`--config`), `SPECD_<SECTION>__<KEY>` variables and these flags, in that order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use specd_engine::actors::adapt::{Calibration, PROBE_TOKENS};
use specd_engine::actors::load::assumed_acceptance;
use specd_engine::actors::{
    measure_draft_costs, measure_glide_costs, measure_row_costs, CatchUpPolicy, EngineConfig,
    EngineModels, LoadPolicies, LoadPolicy, Method,
};
use specd_engine::model::{self, LoadOptions};
use specd_engine::speculative::policy::default_confidence;
use specd_engine::speculative::{DraftPolicyConfig, GlideProposer, NgramProposer};
use specd_gateway::{Backend, BackendOptions, Config, Server};

use crate::generate::{
    find_default_glide, glide_path, load_drafter, load_glide, ModelArgs, SpecArgs,
};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Address to bind [default: 127.0.0.1; 0.0.0.0 listens on every interface].
    #[arg(long, env = "SPECD_HOST")]
    host: Option<String>,
    /// Port to bind [default: 8000; 0 picks a free port].
    #[arg(long, env = "SPECD_PORT")]
    port: Option<u16>,
    /// A TOML configuration file (see README).
    #[arg(long, env = "SPECD_CONFIG")]
    config: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics.
    #[arg(long, env = "SPECD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A browser origin allowed to open WebSockets and POST besides the page's own (repeatable).
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// A host name to answer to besides IP addresses and localhost, e.g. behind a reverse
    /// proxy (repeatable; guards against DNS rebinding).
    #[arg(long = "allow-host")]
    allow_hosts: Vec<String>,
    /// The model id clients see [default: the target's file or folder name].
    #[arg(long)]
    name: Option<String>,
    /// Memory for all KV caches (target, draft model, GLIDE), MiB.
    #[arg(long)]
    kv_mib: Option<usize>,
    /// Draft at any load. By default the load policy shortens drafts, then stops drafting, as
    /// more sequences run (drafting costs more than it saves once verification is batched);
    /// this turns it off, for benchmarks that compare the two.
    #[arg(long)]
    no_load_policy: bool,
}

/// The configuration: file and environment, then the flags.
fn config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut c = Config::load(args.config.as_deref()).context("configuration")?;
    let (s, m) = (&mut c.server, &mut c.model);
    if let Some(h) = &args.host {
        s.host = h.clone();
    }
    if let Some(p) = args.port {
        s.port = p;
    }
    if args.api_key.is_some() {
        s.api_key = args.api_key.clone();
    }
    if args.no_load_policy {
        c.engine.load_policy = false;
    }
    s.allowed_origins.extend(args.allow_origins.iter().cloned());
    s.allowed_hosts.extend(args.allow_hosts.iter().cloned());
    let a = &args.spec;
    m.model = args.model.model.clone().or(m.model.take());
    m.tokenizer = args.model.tokenizer.clone().or(m.tokenizer.take());
    m.device = args.model.device.unwrap_or(m.device);
    m.kv_dtype = args.model.kv_dtype.or(m.kv_dtype);
    m.weights = args.model.weights.unwrap_or(m.weights);
    m.draft = a.draft.clone().or(m.draft.take());
    m.glide = a.glide.clone().or(m.glide.take());
    m.name = args.name.clone().or(m.name.take());
    m.speculation = a.speculation.or(m.speculation);
    m.max_draft = a.max_draft.unwrap_or(m.max_draft);
    m.adaptive |= a.adaptive;
    m.confidence = a.confidence.or(m.confidence);
    m.draft_head = a.draft_head.unwrap_or(m.draft_head);
    m.ngram = a.ngram.unwrap_or(m.ngram);
    if let Some(mib) = args.kv_mib {
        c.engine.kv_memory_mib = Some(mib);
    }
    c.validate().map_err(anyhow::Error::msg)?;
    Ok(c)
}

/// The files to load: the target, and the draft model and GLIDE drafter if served.
struct ModelPaths {
    target: PathBuf,
    draft: Option<PathBuf>,
    glide: Option<PathBuf>,
    method: Method,
}

fn model_paths(c: &Config) -> anyhow::Result<ModelPaths> {
    const MISSING: &str = "`specd serve` with no --model serves the default Qwen2.5-Coder \
         pair; download it first with `scripts/fetch-models` (1.6 GB), or pass --model PATH";
    let default_pair = c.model.model.is_none();
    let target = match &c.model.model {
        Some(p) => p.clone(),
        None => model::default_model(model::DEFAULT_TARGET_FILE).context(MISSING)?,
    };
    // With the default target, its GLIDE drafter is served where it is found.
    let default_glide = match &c.model.glide {
        None if default_pair => find_default_glide().ok(),
        _ => None,
    };
    let method = c.model.speculation.unwrap_or(Method::default_with(
        c.model.draft.is_some(),
        c.model.glide.is_some() || default_glide.is_some(),
        default_pair,
    ));
    let draft = match &c.model.draft {
        Some(p) => Some(p.clone()),
        None if default_pair && method.needs_draft_model() => {
            Some(model::default_model(model::DEFAULT_DRAFT_FILE).context(MISSING)?)
        }
        None if method.needs_draft_model() => {
            bail!("--speculation draft needs a draft model: pass --draft PATH")
        }
        // The default pair's draft model is served where it was fetched, for requests that
        // choose `draft`.
        None if default_pair => model::default_model(model::DEFAULT_DRAFT_FILE).ok(),
        None => None,
    };
    let glide = match (&c.model.glide, method) {
        (Some(p), _) => Some(p.clone()),
        (None, m) if m.needs_glide() => Some(glide_path(None, default_pair)?),
        (None, _) => default_glide,
    };
    let given = [Some(&target), draft.as_ref(), c.model.glide.as_ref()];
    for p in given.into_iter().flatten() {
        if !p.exists() {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(ModelPaths {
        target,
        draft,
        glide,
        method,
    })
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .or(path.file_name())
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into())
}

/// The GLIDE drafter of `paths`, loaded for `target` on its device.
fn load_served_glide(
    paths: &ModelPaths,
    target: &model::LoadedModel,
) -> anyhow::Result<Option<Arc<GlideProposer>>> {
    let Some(path) = &paths.glide else {
        return Ok(None);
    };
    Ok(Some(Arc::new(load_glide(path, target)?)))
}

/// Loads the models and starts the engine behind them.
fn load_backend(c: &Config, paths: &ModelPaths) -> anyhow::Result<Backend> {
    let (models, chat_template) = load_models(c, paths)?;
    let glide_name = models
        .glide
        .as_ref()
        .and(paths.glide.as_deref())
        .map(name_of);
    let (engine, confidence) = engine_config(c, &models)?;
    let options = BackendOptions {
        model_name: c
            .model
            .name
            .clone()
            .unwrap_or_else(|| name_of(&paths.target)),
        draft_name: paths.draft.as_deref().map(name_of),
        glide_name,
        chat_template,
        default_method: paths.method,
        default_policy: DraftPolicyConfig {
            max_draft: c.model.max_draft as usize,
            adaptive: c.model.adaptive,
            confidence,
        },
        engine,
    };
    Ok(Backend::start(models, options)?)
}

/// The target (warmed up), its tokenizer and the drafters the paths name, and the target's chat
/// template (the text its file carries, if any).
fn load_models(c: &Config, paths: &ModelPaths) -> anyhow::Result<(EngineModels, Option<String>)> {
    let target = model::load(
        &paths.target,
        &LoadOptions {
            tokenizer: c.model.tokenizer.clone(),
            device: c.model.device,
            kv_dtype: c.model.kv_dtype,
            weights: c.model.weights,
        },
    )?;
    target.model.warm_up()?;
    let tokenizer = target
        .tokenizer
        .clone()
        .context("the model has no tokenizer: pass --tokenizer tokenizer.json")?;
    let draft = match &paths.draft {
        Some(p) => Some(Arc::new(load_drafter(
            p,
            c.model.draft_head,
            &target,
            &tokenizer,
        )?)),
        None => None,
    };
    let glide = load_served_glide(paths, &target)?;
    let chat_template = target.chat_template.clone();
    let models = EngineModels {
        target: Arc::new(target.model),
        tokenizer: Arc::new(tokenizer),
        draft,
        ngram: NgramProposer::new(c.model.ngram as usize, 1)?,
        glide,
    };
    Ok((models, chat_template))
}

/// The engine's settings from the configuration, its load policies calibrated on `models`
/// (unless turned off), and the confidence stop requests default to: the configured one, or
/// one derived from the calibrated cost of a verification row.
fn engine_config(c: &Config, models: &EngineModels) -> anyhow::Result<(EngineConfig, Option<f32>)> {
    let mut engine = EngineConfig {
        max_running: c.engine.max_running,
        max_waiting: c.engine.max_waiting,
        max_batch_tokens: c.engine.max_batch_tokens,
        prefill_chunk: c.engine.prefill_chunk,
        prefix_cache: c.engine.prefix_cache,
        ..EngineConfig::default()
    };
    if !c.engine.load_policy {
        engine.load = LoadPolicies::NEVER;
        engine.catch_up = CatchUpPolicy::ALWAYS;
    } else if c.engine.calibrate {
        println!(
            "{}",
            calibrate(models, c.model.max_draft as usize, &mut engine)?
        );
    }
    let confidence = c.model.confidence.or_else(|| {
        let share = engine.calibration.as_ref()?.target.row_share();
        let derived = default_confidence(share);
        if let Some(v) = derived {
            println!(
                "drafts stop below {:.0} % confidence by default: a verification row costs {:.0} % \
                 of a step here (--confidence 0 drafts on whatever the drafter's confidence)",
                v * 100.0,
                share * 100.0
            );
        }
        derived
    });
    if let Some(mib) = c.engine.kv_memory_mib {
        engine = engine.with_kv_memory(mib << 20, models);
    }
    Ok((engine, confidence))
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let c = config(&args)?;
    // Missing models are reported before anything binds.
    let paths = model_paths(&c)?;
    let server = Server::start(c.clone())
        .with_context(|| format!("cannot listen on {}:{}", c.server.host, c.server.port))?;
    let addr = server.local_addr();
    println!("specd listening on http://{addr}");
    println!("  demo page     http://{addr}/");
    println!("  WebSocket     ws://{addr}/v1/stream");
    println!("  OpenAI API    http://{addr}/v1  (completions, chat/completions, models)");
    println!("  metrics       http://{addr}/metrics   health http://{addr}/health");
    println!("loading {} ...", paths.target.display());
    let backend = load_backend(&c, &paths)?;
    let ready = format!(
        "ready: serving `{}` (speculation: {}{}{})",
        backend.model_name(),
        backend.defaults().0.as_str(),
        backend
            .draft_name()
            .map(|d| format!(", draft model `{d}`"))
            .unwrap_or_default(),
        backend
            .glide_name()
            .map(|g| format!(", GLIDE drafter `{g}`"))
            .unwrap_or_default()
    );
    // Ready means ready: the line is printed once requests are served.
    server.set_backend(backend);
    println!("{ready}");
    wait_for_signal()?;
    // A second signal while draining stops at once.
    std::thread::spawn(|| {
        if wait_for_signal().is_ok() {
            eprintln!("second signal: exiting without waiting for streams");
            std::process::exit(130);
        }
    });
    println!(
        "shutting down: finishing streams in flight (up to {} s) ...",
        c.server.shutdown_timeout_secs
    );
    let cancelled = server.shutdown();
    println!("stopped ({cancelled} streams cancelled)");
    Ok(())
}

/// Blocks until SIGINT (Ctrl-C) or SIGTERM.
fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await
        }
    })?;
    Ok(())
}

/// Times the served models on this machine and sets the engine's load policies and the draft
/// model's catch-up rule from what they cost; returns what it found, for the log.
fn calibrate(models: &EngineModels, k: usize, engine: &mut EngineConfig) -> anyhow::Result<String> {
    let draft = match models.draft.as_ref() {
        Some(d) => Some(measure_draft_costs(&models.target, d.model(), k)?),
        None => None,
    };
    let target = match draft {
        Some(costs) => costs.target,
        None => measure_row_costs(&models.target)?,
    };
    // The policies start at each method's assumed acceptance; the engine derives them again
    // from these costs as it measures acceptance (engine/src/actors/adapt.rs).
    // A GLIDE drafter that cannot be timed drafts under a policy that counts it as free, as
    // before it was timed, rather than keep the server from starting.
    let glide = models
        .glide
        .as_ref()
        .and_then(|g| match measure_glide_costs(&models.target, g.model()) {
            Ok(costs) => Some(costs),
            Err(e) => {
                eprintln!("specd: could not time the GLIDE drafter ({e}); its load policy counts it as free");
                None
            }
        });
    let calibration = Calibration {
        target,
        draft,
        glide,
        k,
        max_batch: engine.max_running,
    };
    (engine.load, engine.catch_up) = calibration.policies(assumed_acceptance);
    let report = calibration_report(&calibration, engine);
    engine.calibration = Some(calibration);
    Ok(report)
}

/// What `calibrate` measured and the load policies it set, in one line for the log.
fn calibration_report(c: &Calibration, engine: &EngineConfig) -> String {
    let target = c.target;
    let mut report = format!(
        "calibrated: target forward {:.1} ms + {:.2} ms a row",
        target.fixed * 1e3,
        target.per_row * 1e3
    );
    if let Some(w) = target.wide {
        report += &format!(
            " ({:.1} ms at {} rows, then {:.3} ms a row)",
            w.at_from * 1e3,
            w.from,
            w.per_row * 1e3
        );
    }
    if let Some(costs) = c.draft {
        let r = engine.catch_up.per_remaining_token;
        let rule = if r > 0.0 {
            format!(
                "the draft model reads a prompt of n tokens when at least {:.2} n tokens are \
                 left to generate",
                1.0 / r
            )
        } else {
            "draft-model requests decode target-only (drafting costs more than it saves here)"
                .to_string()
        };
        report += &format!(
            ", draft model {:.1} ms + {:.2} ms a row, draft prefill {:.2} ms a token: {rule}",
            costs.draft.fixed * 1e3,
            costs.draft.per_row * 1e3,
            costs.catch_up_token * 1e3,
        );
    }
    if let Some(g) = c.glide {
        report += &format!(
            ", GLIDE drafter {:.2} ms + {:.3} ms a sequence a drafted token",
            g.fixed * 1e3,
            g.per_row * 1e3
        );
        if let Some(w) = g.wide {
            report += &format!(" ({:.1} ms at {} sequences)", w.at_from * 1e3, w.from);
        }
    }
    let mut methods = vec![("glide", engine.load.glide), ("ngram", engine.load.ngram)];
    if c.draft.is_some() {
        methods.insert(0, ("draft", engine.load.draft));
    }
    let policies: Vec<String> = methods
        .into_iter()
        .map(|(name, p)| format!("{name} {}", describe(p)))
        .collect();
    report += &format!(
        "; under load (at an assumed {:.0} % acceptance for the draft model, {:.0} % for the \
         others, until measured: each method drafts freely until it has drafted {} tokens, \
         then the policies follow its measured acceptance): {}",
        assumed_acceptance(Method::Draft) * 100.0,
        assumed_acceptance(Method::Glide) * 100.0,
        PROBE_TOKENS,
        policies.join(", ")
    );
    report
}

/// A load policy in words.
fn describe(p: LoadPolicy) -> String {
    let mut parts = Vec::new();
    if p.shorten_at < p.off_at && p.shorten_at != usize::MAX {
        parts.push(format!(
            "at most {} drafts from {} sequences",
            p.shorten_to, p.shorten_at
        ));
    }
    match p.off_at {
        1 => parts.push("never drafts".to_string()),
        usize::MAX => {}
        n => parts.push(format!("none from {n}")),
    }
    if parts.is_empty() {
        "drafts at any load".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_policies_read_as_they_act() {
        assert_eq!(describe(LoadPolicy::NEVER), "drafts at any load");
        let never = LoadPolicy {
            off_at: 1,
            ..LoadPolicy::NEVER
        };
        assert_eq!(describe(never), "never drafts");
        let p = LoadPolicy {
            shorten_at: 2,
            shorten_to: 3,
            off_at: 7,
        };
        assert_eq!(
            describe(p),
            "at most 3 drafts from 2 sequences, none from 7"
        );
        assert_eq!(
            describe(LoadPolicy {
                shorten_at: usize::MAX,
                ..p
            }),
            "none from 7"
        );
    }
}
