//! The OpenAI-compatible endpoints with streaming (Server-Sent Events), timed as a client of
//! `/v1/completions` (text prompts) or `/v1/chat/completions` (chats) sees them.

use std::time::Instant;

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use specd_protocol::ErrorCode;

use crate::client::{RequestRecord, RequestTemplate, Target, FRAME_TIMEOUT};
use crate::prompts::Prompt;

/// The request body: the template's settings, streamed, with usage in the last event.
fn body(prompt: &Prompt, template: &RequestTemplate) -> (&'static str, Value) {
    // No `model`: specd serves one and takes a body without it.
    let mut body = json!({
        "max_tokens": template.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let path = match prompt {
        Prompt::Text(t) => {
            body["prompt"] = json!(t);
            "/v1/completions"
        }
        Prompt::Messages(m) => {
            body["messages"] = json!(m);
            "/v1/chat/completions"
        }
    };
    if let Some(t) = template.temperature {
        body["temperature"] = json!(t);
    }
    if template.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    if template.method.is_some() || template.max_draft.is_some() {
        let mut s = json!({});
        if let Some(m) = template.method {
            s["method"] = json!(m);
        }
        if let Some(k) = template.max_draft {
            s["max_draft"] = json!(k);
        }
        body["speculation"] = s;
    }
    (path, body)
}

/// The text of a stream event's first choice (`text`, or chat's `delta.content`).
fn event_text(v: &Value) -> Option<&str> {
    let c = v["choices"].get(0)?;
    c["text"]
        .as_str()
        .or_else(|| c["delta"]["content"].as_str())
}

/// Sends one streamed request and reads it to `[DONE]`. An HTTP error is a record with its
/// code; a server that cannot be reached is an error. Times count from `arrived`, or from
/// sending when `None`. Output tokens are the last event's usage; the speculation figures of
/// these requests come only from `/metrics`.
pub async fn run_sse(
    http: &reqwest::Client,
    target: &Target,
    prompt: &Prompt,
    template: &RequestTemplate,
    level_start: Instant,
    arrived: Option<Instant>,
) -> anyhow::Result<RequestRecord> {
    let (path, body) = body(prompt, template);
    let sent = arrived.unwrap_or_else(Instant::now);
    let mut req = http
        .post(format!("{}{path}", target.http_base()))
        .json(&body);
    if let Some(k) = &target.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.with_context(|| {
        format!(
            "POST {}{path} (is specd serving there?)",
            target.http_base()
        )
    })?;
    let mut rec = RequestRecord::started((sent - level_start).as_secs_f64());
    if !resp.status().is_success() {
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        let code = v["error"]["code"]
            .as_str()
            .and_then(ErrorCode::from_wire)
            .unwrap_or(ErrorCode::Internal);
        rec.error = Some(code);
        rec.error_message = Some(format!("HTTP {status}: {}", v["error"]["message"]));
        rec.e2e_s = sent.elapsed().as_secs_f64();
        return Ok(rec);
    }
    let mut events = resp.bytes_stream().eventsource();
    let mut last_chunk: Option<Instant> = None;
    loop {
        let event = tokio::time::timeout(FRAME_TIMEOUT, events.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("no event from the server for {} s", FRAME_TIMEOUT.as_secs())
            })?
            .context("the stream ended before [DONE]")?
            .context("reading the event stream")?;
        let now = Instant::now();
        if event.data == "[DONE]" {
            rec.e2e_s = (now - sent).as_secs_f64();
            return Ok(rec);
        }
        let v: Value = serde_json::from_str(&event.data)
            .with_context(|| format!("not JSON: {}", event.data))?;
        if let Some(e) = v.get("error") {
            rec.error = Some(
                e["code"]
                    .as_str()
                    .and_then(ErrorCode::from_wire)
                    .unwrap_or(ErrorCode::Internal),
            );
            rec.error_message = Some(e["message"].to_string());
            continue;
        }
        if event_text(&v).is_some_and(|t| !t.is_empty()) {
            rec.ttft_s.get_or_insert((now - sent).as_secs_f64());
            if let Some(t) = last_chunk {
                rec.itl_s.push((now - t).as_secs_f64());
            }
            last_chunk = Some(now);
        }
        if let Some(f) = v["choices"]
            .get(0)
            .and_then(|c| c["finish_reason"].as_str())
        {
            rec.finish_reason = serde_json::from_value(json!(f)).ok();
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            rec.output_tokens = n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use specd_protocol::{Message, Method};

    use super::*;

    #[test]
    fn bodies_follow_the_prompt_kind_and_the_template() {
        let t = RequestTemplate {
            max_tokens: 8,
            method: Some(Method::Ngram),
            ignore_eos: true,
            ..Default::default()
        };
        let (path, b) = body(&Prompt::Text("x".into()), &t);
        assert_eq!(path, "/v1/completions");
        assert_eq!(b["prompt"], "x");
        assert_eq!(b["speculation"], json!({"method": "ngram"}));
        assert_eq!(b["ignore_eos"], true);
        let (path, b) = body(
            &Prompt::Messages(vec![Message::new("user", "hi")]),
            &RequestTemplate::default(),
        );
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(b["messages"][0]["content"], "hi");
        assert!(b.get("speculation").is_none());
        assert_eq!(
            event_text(&json!({"choices": [{"delta": {"content": "a"}}]})),
            Some("a")
        );
        assert_eq!(event_text(&json!({"choices": [], "usage": {}})), None);
    }
}
