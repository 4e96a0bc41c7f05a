#!/usr/bin/env python3
"""tandem serve against the official OpenAI Python client (run by api_test's OpenAIPythonClient).

Usage: openai_client_test.py --base-url http://127.0.0.1:PORT/v1 --model NAME
Exits 0 when every check passes; prints what failed otherwise.
"""
import argparse
import sys

import openai


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=60)

    models = client.models.list()
    assert [m.id for m in models.data] == [args.model], models

    c = client.completions.create(model=args.model, prompt="The sky is", max_tokens=5,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert c.choices[0].finish_reason == "length", c
    assert c.usage.completion_tokens == 5, c.usage

    chat = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": "Hello"}],
        max_completion_tokens=4, temperature=0, n=2, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True})
    assert len(chat.choices) == 2, chat
    assert chat.choices[0].message.role == "assistant", chat
    assert len(chat.choices[0].logprobs.content) == 4, chat.choices[0].logprobs
    assert chat.usage.completion_tokens == 8, chat.usage

    stream = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert finish == "length", finish
    assert usage is not None and usage.completion_tokens == 4, usage

    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    try:
        client.completions.create(model=args.model, prompt="x", max_tokens=-3)
        raise AssertionError("negative max_tokens accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "max_tokens", e.body
    print("openai client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
