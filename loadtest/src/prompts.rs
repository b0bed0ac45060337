//! What the load tester sends: a prompt set from a JSONL file or the built-in code prompts.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use specd_protocol::Message;

/// bench-spec's twenty code prompts (ten ask for new code, ten for an edit of given code).
const BUILT_IN: &str = include_str!("../../scripts/bench/code_prompts.json");

/// One prompt: raw text, or chat messages rendered with the server's chat template.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

/// A line of a JSONL prompt file: `{"prompt": "..."}` or `{"messages": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
}

#[derive(Deserialize)]
struct BuiltIn {
    prompts: Vec<BuiltInPrompt>,
}

#[derive(Deserialize)]
struct BuiltInPrompt {
    text: String,
}

/// The built-in code prompts, each sent as the user message of a chat.
pub fn built_in() -> Vec<Prompt> {
    let set: BuiltIn = serde_json::from_str(BUILT_IN).expect("the built-in prompt set is JSON");
    set.prompts
        .into_iter()
        .map(|p| Prompt::Messages(vec![Message::new("user", &p.text)]))
        .collect()
}

/// Prompts from a JSONL file, one object per line (blank lines skipped).
pub fn from_jsonl(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the prompt file {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let l: Line = serde_json::from_str(line).with_context(at)?;
        prompts.push(match (l.prompt, l.messages) {
            (Some(p), None) => Prompt::Text(p),
            (None, Some(m)) if !m.is_empty() => Prompt::Messages(m),
            _ => bail!("{}: give exactly one of `prompt` and `messages`", at()),
        });
    }
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_set_has_the_twenty_code_prompts() {
        let p = built_in();
        assert_eq!(p.len(), 20);
        assert!(
            matches!(&p[0], Prompt::Messages(m) if m[0].role == "user" && m[0].content.contains("Fibonacci"))
        );
    }

    #[test]
    fn jsonl_lines_are_prompts_or_chats_and_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("specd-loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(&good, "{\"prompt\": \"def f(\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n").unwrap();
        let p = from_jsonl(&good).unwrap();
        assert_eq!(p[0], Prompt::Text("def f(".into()));
        assert_eq!(p[1], Prompt::Messages(vec![Message::new("user", "hi")]));
        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"prompt\": \"a\"}\n{\"prompt\": \"a\", \"messages\": []}\n",
        )
        .unwrap();
        let e = format!("{:#}", from_jsonl(&bad).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&bad, "{\"promt\": \"a\"}\n").unwrap();
        let e = format!("{:#}", from_jsonl(&bad).unwrap_err());
        assert!(e.contains("line 1") && e.contains("promt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
