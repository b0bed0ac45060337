#!/usr/bin/env python3
"""Writes specd.json, the Grafana dashboard for specd, next to this script (`--check`: only
checks that the committed file is what it would write).

The dashboard is kept as this program rather than edited by hand so that every panel is
declared the same way: run it after changing a panel and commit both files. Every PromQL
expression reads metrics declared in engine/src/metrics.rs; tests/observability.rs asks a real
Prometheus for each of them, and dashboards/check validates the JSON against Grafana's schema.
"""

import json
import sys
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SEL = 'instance=~"$instance"'
METHOD = 'instance=~"$instance", method=~"$method"'

panels = []


def panel(title, unit, targets, kind="timeseries", description="", w=12, h=8, stack=False):
    """Appends a panel; `targets` are (legend, expr) pairs. Panels fill rows two at a time."""
    i = len(panels)
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    p = {
        "id": i + 1,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": (i % 2) * 12, "y": (i // 2) * h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom if kind == "timeseries" else {}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}} if kind == "timeseries" else
                   {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {"refId": chr(ord("A") + j), "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}
            for j, (legend, expr) in enumerate(targets)
        ],
    }
    panels.append(p)


def quantiles(metric, by=""):
    group = f"le{', ' + by if by else ''}"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        (f"p{q}{suffix}", f"histogram_quantile(0.{q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))")
        for q in (50, 95, 99)
    ]


panel("Generated tokens/s", "short",
      [("tokens/s", f"sum(rate(specd_generated_tokens_total{{{SEL}}}[{RATE}]))"),
       ("prompt tokens/s", f"sum(rate(specd_prompt_tokens_total{{{SEL}}}[{RATE}]))")],
      description="Tokens streamed to clients, and prompt tokens admitted.")
panel("Requests/s by outcome", "reqps",
      [("{{finish_reason}} {{error_code}}",
        f"sum by (finish_reason, error_code) (rate(specd_requests_total{{{SEL}}}[{RATE}]))")],
      description="Requests the engine ended: finish reason, and the error code of those that failed.", stack=True)
panel("Acceptance rate by method", "percentunit",
      [("{{method}}", f"sum by (method) (rate(specd_spec_accepted_tokens_total{{{METHOD}}}[{RATE}])) / "
                      f"sum by (method) (rate(specd_spec_draft_tokens_total{{{METHOD}}}[{RATE}]))")],
      description="Drafted tokens the target accepted.")
panel("Mean accepted length", "short",
      [("{{method}}", f"sum by (method) (rate(specd_accepted_length_sum{{{METHOD}}}[{RATE}])) / "
                      f"sum by (method) (rate(specd_accepted_length_count{{{METHOD}}}[{RATE}]))")],
      description="Tokens kept per verification: accepted drafts plus the target's own.")
panel("Acceptance by draft position", "percentunit",
      [("position {{position}}",
        f"sum by (position) (rate(specd_spec_accepted_tokens_per_position_total{{{METHOD}}}[{RATE}])) / "
        f"sum by (position) (rate(specd_spec_draft_tokens_per_position_total{{{METHOD}}}[{RATE}]))")],
      description="Of the tokens drafted at position i, the share the target accepted.")
panel("Share of output from drafts (all methods)", "percentunit",
      [("from drafts", f"sum(rate(specd_spec_accepted_tokens_total{{{SEL}}}[{RATE}])) / "
                       f"sum(rate(specd_generated_tokens_total{{{SEL}}}[{RATE}]))"),
       ("from prompt lookup", f"sum(rate(specd_spec_lookup_accepted_tokens_total{{{SEL}}}[{RATE}])) / "
                              f"sum(rate(specd_generated_tokens_total{{{SEL}}}[{RATE}]))")],
      description="Generated tokens that were accepted drafts (and those drafted by prompt lookup), over "
                  "every method: generated tokens are not counted by method, so the method filter does not apply.")
panel("KV cache utilization", "percentunit",
      [("{{model}}", f"specd_kv_cache_utilization_ratio{{{SEL}}}")],
      description="KV blocks held by sequences over the pool.")
panel("KV cache blocks", "short",
      [("used {{model}}", f"specd_kv_cache_blocks_used{{{SEL}}}"),
       ("parked {{model}}", f"specd_kv_cache_blocks_parked{{{SEL}}}"),
       ("total {{model}}", f"specd_kv_cache_blocks_total{{{SEL}}}")],
      description="Blocks held by sequences; parked: held by none, kept for the prompt prefix they cache "
                  "until new positions need them (counted free).")
panel("Prompt tokens from the prefix cache", "percentunit",
      [("from the cache", f"sum(rate(specd_prefix_cache_hit_tokens_total{{{SEL}}}[{RATE}])) / "
                          f"sum(rate(specd_prompt_tokens_total{{{SEL}}}[{RATE}]))")],
      description="Prompt tokens whose keys and values the target's prefix cache held (a shared system turn, "
                  "a conversation's history), over prompt tokens admitted: prefill they did not need.")
panel("Preemptions/s", "short",
      [("preemptions", f"sum(rate(specd_preemptions_total{{{SEL}}}[{RATE}]))")],
      description="Sequences preempted when KV blocks ran out.")
panel("Running and waiting sequences", "short",
      [("running", f"sum(specd_running_sequences{{{SEL}}})"),
       ("waiting", f"sum(specd_waiting_sequences{{{SEL}}})")])
panel("Time to first token", "s", quantiles("specd_time_to_first_token_seconds"))
panel("Inter-token latency", "s", quantiles("specd_inter_token_latency_seconds"),
      description="Time between a request's chunks, divided over each chunk's tokens.")
panel("Request duration", "s", quantiles("specd_request_duration_seconds"))
panel("Prompt tokens a step", "short", quantiles("specd_step_prompt_tokens"),
      description="Prompt tokens the target read in a step that read any: chunks riding along with the "
                  "decoding sequences, and prompts prefilled on their own (what chunked prefill admits a step).")
panel("Step time by phase (p50)", "s",
      [("{{phase}}", f"histogram_quantile(0.5, sum by (le, phase) (rate(specd_step_duration_seconds_bucket{{{SEL}}}[{RATE}])))")],
      description="Each actor's handler in a token step, the mailbox time between them (messaging), and the whole step.")
panel("Step time by phase (mean)", "s",
      [("{{phase}}", f"sum by (phase) (rate(specd_step_duration_seconds_sum{{{SEL}}}[{RATE}])) / "
                     f"sum by (phase) (rate(specd_step_duration_seconds_count{{{SEL}}}[{RATE}]))")])
panel("WebSocket connections", "short",
      [("connections", f"sum(specd_websocket_connections{{{SEL}}})")])


def query_variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "sort": 1,
    }


dashboard = {
    "uid": "specd",
    "title": "specd",
    "description": "specd: throughput, outcomes, speculation (acceptance by method and draft position), KV cache, latency and step phases.",
    "tags": ["specd", "llm", "speculative-decoding"],
    "editable": True,
    "graphTooltip": 1,
    "refresh": "5s",
    "schemaVersion": 39,
    "time": {"from": "now-15m", "to": "now"},
    "timezone": "browser",
    "annotations": {"list": []},
    "links": [],
    "templating": {
        "list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {"text": "default", "value": "default"}, "hide": 0, "refresh": 1, "options": []},
            query_variable("instance", "Instance", "label_values(specd_generated_tokens_total, instance)"),
            query_variable("method", "Method", "label_values(specd_accepted_length_count, method)"),
        ]
    },
    "panels": panels,
}

out = Path(__file__).with_name("specd.json")
text = json.dumps(dashboard, indent=2) + "\n"
if sys.argv[1:] == ["--check"]:
    # scripts/test: the committed JSON is this program's output.
    if out.read_text() != text:
        sys.exit(f"{out} is not what {Path(__file__).name} writes: run it and commit both")
    print(f"{out}: up to date ({len(panels)} panels)")
else:
    out.write_text(text)
    print(f"wrote {out} ({len(panels)} panels)")
