"""A plain `vllm serve` behind the gateway (deploy/vllm): same prompt, a response rerankd can read.

The chat template must produce, character for character, the prompt rerankd itself builds
(rerankd.engine.prompt), or a vLLM upstream and a rerankd replica would score the same pair differently
and the gateway's failover/splitting across them would mix two scales. It is rendered the way vLLM
renders it: through transformers' chat-template renderer, with messages [{role: query}, {role: document}].
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from rerankd.engine.prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_pair
from rerankd.protocol import RerankResponse

VLLM = Path(__file__).resolve().parents[2] / "deploy" / "vllm"
TEMPLATE = (VLLM / "qwen3_reranker.jinja").read_text()


def _render(query: str, document: str, system: str | None = None, **kwargs: str) -> str:
    messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=TEMPLATE, **kwargs)
    return rendered[0]


@pytest.mark.parametrize(("query", "document"), [
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("多行\n查询", "Document with {{ braces }}, <tags>, trailing spaces  \nand a final newline\n"),
    ("q", ""),
])
def test_template_renders_rerankds_prompt_with_the_default_instruction(query: str, document: str) -> None:
    assert _render(query, document) == PREFIX + format_pair(query, document) + SUFFIX
    assert DEFAULT_INSTRUCTION in _render(query, document)


def test_template_takes_the_instruction_from_a_variable_or_a_system_message() -> None:
    expected = PREFIX + format_pair("find it", "doc", "Retrieve code") + SUFFIX
    assert _render("find it", "doc", instruction="Retrieve code") == expected
    assert _render("find it", "doc", system="Retrieve code") == expected
    # The variable wins over a system message, as in vLLM's own example template.
    assert _render("find it", "doc", system="other", instruction="Retrieve code") == expected


def test_template_keeps_the_final_blank_line_of_the_suffix() -> None:
    """Jinja drops a template's last newline; the suffix must still end in "</think>\\n\\n"."""
    assert _render("q", "d").endswith("</think>\n\n")
    assert SUFFIX.endswith("</think>\n\n")


def test_serve_script_runs_the_documented_vllm_command() -> None:
    script = (VLLM / "serve.sh").read_text()
    command = shlex.split(script[script.index("exec vllm serve"):].replace("\\\n", " "))
    assert command[1:3] == ["vllm", "serve"]
    assert command[command.index("--runner") + 1] == "pooling"  # vLLM 0.32 rejects the older --task score
    overrides = json.loads(command[command.index("--hf-overrides") + 1])
    assert overrides == {"architectures": ["Qwen3ForSequenceClassification"],
                         "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}
    template = command[command.index("--chat-template") + 1]
    assert template == "$here/qwen3_reranker.jinja" and (VLLM / "qwen3_reranker.jinja").is_file()
    readme = (VLLM / "README.md").read_text()
    assert json.dumps(overrides, separators=(",", ":")) in readme


# A /v1/rerank answer as vLLM's RerankResponse serializes it (vllm/entrypoints/pooling/score/protocol.py):
# usage has only total_tokens, every result carries its document, plus a null multi_modal field.
VLLM_RERANK_RESPONSE = {
    "id": "rerank-5f0c2a8e9b1d4c6f",
    "model": "Qwen/Qwen3-Reranker-0.6B",
    "usage": {"total_tokens": 142},
    "results": [
        {"index": 0, "document": {"text": "The capital of China is Beijing.", "multi_modal": None},
         "relevance_score": 0.9987},
        {"index": 1, "document": {"text": "Gravity is a force.", "multi_modal": None},
         "relevance_score": 0.0004},
    ],
}


def test_vllm_rerank_response_parses_as_rerankds_response() -> None:
    parsed = RerankResponse.model_validate(VLLM_RERANK_RESPONSE)
    assert [r.index for r in parsed.results] == [0, 1]
    assert parsed.results[0].document is not None
    assert parsed.results[0].document["text"] == "The capital of China is Beijing."
    assert parsed.usage.total_tokens == 142
    # The difference the README documents: vLLM reports no prompt_tokens, so it reads as 0.
    assert parsed.usage.prompt_tokens == 0


def test_readme_states_how_the_gateway_treats_a_vllm_upstream() -> None:
    readme = (VLLM / "README.md").read_text()
    for topic in ("instruction", "/ready", "prompt_tokens", "max_tokens_per_doc"):
        assert re.search(re.escape(topic), readme), f"deploy/vllm/README.md does not discuss {topic}"
