# ruff: noqa: E501 (the chat templates are kept verbatim, one Jinja statement per line)
"""Chat templates of two tool-calling families, a character-level tokenizer for them, a tiny random
Llama, and a scripted sampler: what the agent tests share.

QWEN25_TEMPLATE is Qwen2.5-Instruct's chat template (tokenizer_config.json), the format contract of
the ``qwen`` tool-call parser. LLAMA3_TEMPLATE is a compact template in Llama 3.1's JSON tool-calling
format (tools listed in the system turn, a call is the assistant turn's JSON object with
"parameters", results in an ``ipython`` turn), the ``llama3`` parser's contract.
"""

from __future__ import annotations

import functools
import string
from typing import Callable, Optional

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from grpo_lightning.policy.causal_lm import CausalLMPolicy
from tests.signals import RANDOM_MODEL_SEED

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3_TEMPLATE = """{{- '<|begin_of_text|>' }}
{%- if tools %}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\nRespond with a JSON {"name": function name, "parameters": arguments} to call one of:\\n' }}
    {%- for tool in tools %}{{- tool | tojson }}{{- '\\n' }}{%- endfor %}
    {{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'assistant' and message.tool_calls %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- set call = message.tool_calls[0].function %}
        {{- '{"name": "' + call.name + '", "parameters": ' + (call.arguments | tojson) + '}' }}
        {{- '<|eot_id|>' }}
    {%- elif message.role == 'tool' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

NO_TOOLS_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL = (
    "<pad>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
WORDS = ("<tool_call>", "</tool_call>")  # one token each when text is encoded; a model may also spell them


def chat_tokenizer(template: str = QWEN25_TEMPLATE, eos: str = "<|im_end|>") -> PreTrainedTokenizerFast:
    """Characters of string.printable, the chat markers as special tokens, <tool_call> as words."""
    vocab = {token: i for i, token in enumerate((*SPECIAL, *WORDS, *dict.fromkeys(string.printable)))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in WORDS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token=eos,
        unk_token="<unk>",
        chat_template=template,
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_policy(tokenizer: PreTrainedTokenizerFast) -> CausalLMPolicy:
    """A random two-layer Llama over ``tokenizer``'s vocabulary."""
    torch.manual_seed(RANDOM_MODEL_SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    policy = CausalLMPolicy(LlamaForCausalLM(config), tokenizer)
    policy.add_special_tokens = False
    return policy


Script = Callable[[str], str | list[int]]


def script_sampler(policy: CausalLMPolicy, script: Script) -> list[list[int]]:
    """Make ``policy`` sample by ``script``: context text (special tokens kept) -> the next turn, as
    text (encoded character by character, then the EOS id) or as exact ids (no EOS added). Returns
    the list every sampled turn's ids are appended to. The sampler's log-probs are the model's own
    of those ids (a forward pass), so corrections and log-prob checks still see real numbers."""
    turns: list[list[int]] = []
    policy.sample_with_logprobs = functools.partial(scripted_sample, policy, script=script, turns=turns)
    return turns


def scripted_sample(policy, prompt_ids, prompt_mask, sampling, *, script: Script, turns: Optional[list] = None):
    """``sample_with_logprobs`` of ``policy`` by ``script`` (see script_sampler)."""
    tokenizer = policy.tokenizer
    rows = []
    for ids, mask in zip(prompt_ids.tolist(), prompt_mask.tolist()):
        context = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
        turn = script(context)
        if isinstance(turn, str):
            turn = [tokenizer.convert_tokens_to_ids(ch) for ch in turn] + [tokenizer.eos_token_id]
        if turns is not None:
            turns.append(list(turn))
        rows.append(turn[: sampling.max_new_tokens])
    width = max(len(r) for r in rows)
    completion = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    logprobs = None
    if sampling.record_logprobs:
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        attention = torch.cat([prompt_mask, mask], 1)
        with torch.no_grad():
            logits = policy.model(
                input_ids=torch.cat([prompt_ids, completion], 1),
                attention_mask=attention,
                position_ids=(attention.cumsum(1) - 1).clamp(min=0),
            ).logits[:, prompt_ids.size(1) - 1 : -1]
        logprobs = torch.log_softmax(logits.float() / sampling.temperature, -1).gather(-1, completion[..., None])[
            ..., 0
        ]
    return completion, logprobs
