"""Drives specd with the official OpenAI Python client (run by tests/openai_client.rs).

Usage: openai_client.py BASE_URL API_KEY PROMPT
Prints one JSON object with what was streamed; exits non-zero on any mismatch.
"""
import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, api_key, prompt = sys.argv[1:4]
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)

    models = [m.id for m in client.models.list()]
    assert len(models) == 1, models
    model = models[0]

    # A completion, streamed and whole: the same greedy text.
    pieces, finish, usage = [], None, None
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=32, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for event in stream:
        if event.usage is not None:
            usage = event.usage
        for choice in event.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=32, temperature=0)
    completion = "".join(pieces)
    assert completion == whole.choices[0].text, (completion, whole.choices[0].text)
    assert len([p for p in pieces if p]) > 1, "the completion was not streamed in pieces"
    assert finish == whole.choices[0].finish_reason, (finish, whole.choices[0].finish_reason)
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens

    # A chat completion, streamed and whole.
    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    deltas, chat_finish, roles = [], None, []
    for event in client.chat.completions.create(
        model=model, messages=messages, max_tokens=32, temperature=0, stream=True
    ):
        for choice in event.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                deltas.append(choice.delta.content)
            chat_finish = choice.finish_reason or chat_finish
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=32, temperature=0
    )
    assert roles == ["assistant"], roles
    assert "".join(deltas) == chat.choices[0].message.content
    assert chat_finish == chat.choices[0].finish_reason

    # Errors arrive as the client's own exception types, with specd's codes.
    try:
        client.completions.create(model=model, prompt=prompt, max_tokens=-1)
        raise AssertionError("max_tokens=-1 was accepted")
    except openai.BadRequestError as e:
        assert e.code == "invalid_request" and e.param == "max_tokens", (e.code, e.param)
    try:
        OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.code == "unauthorized", e.code
    try:
        client.completions.create(model="gpt-4", prompt=prompt, max_tokens=4)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.code == "not_found", e.code

    print(json.dumps({
        "model": model,
        "completion": completion,
        "completion_finish": finish,
        "chat": chat.choices[0].message.content,
        "chat_finish": chat_finish,
        "openai_version": openai.__version__,
    }))


if __name__ == "__main__":
    main()
