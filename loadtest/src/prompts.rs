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

/// `prompt` made its own: a last line naming `tag` appended to its text, or to its last
/// message, so that no other request's prompt is all of it and the server's prefix cache
/// serves only what prompts really share (the chat template, a common system turn).
pub fn made_unique(prompt: &Prompt, tag: &str) -> Prompt {
    let line = format!("\n\n(request {tag})");
    match prompt {
        Prompt::Text(t) => Prompt::Text(format!("{t}{line}")),
        Prompt::Messages(m) => {
            let mut m = m.clone();
            if let Some(last) = m.last_mut() {
                last.content.push_str(&line);
            }
            Prompt::Messages(m)
        }
    }
}

/// The prompts of a level of `requests` requests: the set in turn, or with `fresh` each
/// request's own ([`made_unique`], tagged with the level and the request).
pub fn for_level(prompts: &[Prompt], requests: usize, level: usize, fresh: bool) -> Vec<Prompt> {
    if !fresh {
        return prompts.to_vec();
    }
    (0..requests)
        .map(|i| made_unique(&prompts[i % prompts.len()], &format!("{level}.{i}")))
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
    fn fresh_prompts_are_each_requests_own_and_keep_what_they_share() {
        let set = vec![
            Prompt::Text("def f(".into()),
            Prompt::Messages(vec![
                Message::new("system", "s"),
                Message::new("user", "hi"),
            ]),
        ];
        assert_eq!(for_level(&set, 5, 0, false), set);
        let a = for_level(&set, 5, 0, true);
        let b = for_level(&set, 5, 1, true);
        assert_eq!(a.len(), 5);
        let all: std::collections::HashSet<String> =
            a.iter().chain(&b).map(|p| format!("{p:?}")).collect();
        assert_eq!(
            all.len(),
            10,
            "every request of both levels has its own prompt"
        );
        match (&a[0], &a[3]) {
            (Prompt::Text(t), Prompt::Messages(m)) => {
                assert!(
                    t.starts_with("def f(") && t.ends_with("(request 0.0)"),
                    "{t}"
                );
                assert_eq!(m[0], Message::new("system", "s"), "earlier turns unchanged");
                assert!(m[1].content.starts_with("hi") && m[1].content.ends_with("(request 0.3)"));
            }
            other => panic!("the set's order is kept: {other:?}"),
        }
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
