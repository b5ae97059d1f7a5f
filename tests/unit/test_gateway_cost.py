"""The gateway's token estimate is an upper bound of what a replica bills, for every body shape, checked
against the real Qwen3 tokenizer and the server's own PromptBuilder (what ``usage.prompt_tokens`` counts)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rerankd.engine.prompt import PREFIX, SUFFIX, PromptBuilder
from rerankd.gateway.cost import TEMPLATE_TOKENS, estimate_prompt_tokens, scoring_tasks, text_bytes
from rerankd.protocol import RerankRequest, RerankTask, ScoreRequest, TEIRerankRequest

# Text that tokenizes badly: CJK, emoji, combining marks, characters NFC lengthens (U+0958, U+0344),
# compatibility ideographs NFC maps to 4-byte code points (U+FA6C), special-token look-alikes, and text
# that costs about a token per byte (hieroglyphs: 3 tokens for 4 bytes; control characters: 1 for 1).
MODEL_LEN = 4096
AWKWARD = ["\U00013000" * 200, "\x00\x01\x02" * 30, "\u0958\u0344\ufa6c", "🦙🦙 ≠ é", "東京都の天気",
           "<|im_end|>\n<|im_start|>", "a\u0301" * 20, "\x00\x01 \t\n", "x" * 500]
INSTRUCTIONS = [None, "Find the passage", "\u0958" * 3, "\U00013000" * 30]


@pytest.fixture(scope="module")
def builder(tiny_model_dir: Path) -> PromptBuilder:
    from transformers import AutoTokenizer

    return PromptBuilder(AutoTokenizer.from_pretrained(str(tiny_model_dir)), max_model_len=MODEL_LEN)


def billed(builder: PromptBuilder, task: RerankTask) -> int:
    return builder.build(task.query, task.documents, task.instruction, task.max_tokens_per_doc,
                         direction=task.truncation_direction, max_prompt_tokens=task.max_prompt_tokens,
                         max_chunks=task.max_chunks_per_doc, chunk_overlap=task.chunk_overlap_tokens).prompt_tokens


def test_template_constant_is_the_tokenizers_count(builder: PromptBuilder) -> None:
    assert len(builder.prefix_ids) + len(builder.suffix_ids) == TEMPLATE_TOKENS
    assert len((PREFIX + SUFFIX).encode()) > TEMPLATE_TOKENS  # hence a constant, not the bytes


def test_nfc_can_lengthen_and_the_bound_counts_after_it() -> None:
    assert text_bytes("\u0958") == 6 > len("\u0958".encode())
    assert text_bytes("abc") == 3


def test_estimate_bounds_the_billed_count(builder: PromptBuilder) -> None:
    """Pair by pair (a sum over many pairs would let one pair's slack hide another's deficit)."""
    rng = random.Random(7)
    alphabet = "abc xyz.,;\n" + "".join(AWKWARD)
    documents = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))) for _ in range(40)] + AWKWARD
    for document in documents:
        task = RerankTask(rng.choice(["q", "capital of France?", AWKWARD[2]]), [document],
                          rng.choice(INSTRUCTIONS), rng.choice([None, None, 1, 16, 300]))
        real = billed(builder, task)
        estimate = estimate_prompt_tokens([task], max_model_len=MODEL_LEN)
        assert real <= estimate, (task, real, estimate)
    many = RerankTask("q", documents, None, None)
    assert billed(builder, many) <= estimate_prompt_tokens([many], max_model_len=MODEL_LEN)


def test_estimate_bounds_chunked_and_prompt_capped_documents(builder: PromptBuilder) -> None:
    """Chunks bill one prompt each (several per document); a whole-prompt cap and a head cut bill less."""
    rng = random.Random(11)
    alphabet = "abc xyz.,;\n" + "".join(AWKWARD)
    documents = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3000))) for _ in range(40)] + AWKWARD
    chunked = 0
    for document in documents:
        max_tokens = rng.choice([None, 40, 300])
        prompt_cap = rng.choice([None, 400, 1000])
        chunks = rng.choice([None, 1, 3, 50])
        overlap = rng.choice([0, 0, 7, 39]) if chunks else 0
        task = RerankTask(rng.choice(["q", "capital of France?"]), [document], rng.choice(INSTRUCTIONS[:3]),
                          max_tokens, truncation_direction=rng.choice(["right", "left"]),
                          max_prompt_tokens=prompt_cap, max_chunks_per_doc=chunks, chunk_overlap_tokens=overlap)
        group = builder.build(task.query, task.documents, task.instruction, task.max_tokens_per_doc,
                              direction=task.truncation_direction, max_prompt_tokens=task.max_prompt_tokens,
                              max_chunks=task.max_chunks_per_doc, chunk_overlap=task.chunk_overlap_tokens)
        chunked += len(group.tails) > 1
        estimate = estimate_prompt_tokens([task], max_model_len=MODEL_LEN)
        assert group.prompt_tokens <= estimate, (task, group.prompt_tokens, estimate)
    assert chunked >= 5  # the draw did chunk documents


def test_chunked_estimate_is_tight_for_long_documents(builder: PromptBuilder) -> None:
    """A document far past its chunk budget: every one of its chunks is a full-length prompt."""
    task = RerankTask("q", ["word " * 5000], None, 100, max_chunks_per_doc=4, chunk_overlap_tokens=10)
    head = len("<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
               "<Query>: q\n<Document>: ")
    assert estimate_prompt_tokens([task], max_model_len=MODEL_LEN) == 4 * (TEMPLATE_TOKENS + head + 100)
    assert billed(builder, task) <= 4 * (TEMPLATE_TOKENS + head + 100)
    short = RerankTask("q", ["word"], None, 100, max_chunks_per_doc=4)
    assert estimate_prompt_tokens([short], max_model_len=MODEL_LEN) == TEMPLATE_TOKENS + head + 4


def test_some_text_costs_a_token_per_byte(builder: PromptBuilder) -> None:
    """The bound cannot be lowered: control characters are billed one token per byte."""
    document = "\x00\x01\x02" * 30
    plain, heavy = (billed(builder, RerankTask("q", [d], None, None)) for d in ("", document))
    assert heavy - plain == text_bytes(document) == 90


def test_estimate_caps_are_tight_for_long_documents(builder: PromptBuilder) -> None:
    long = RerankTask("q", ["word " * 5000], None, None)
    assert estimate_prompt_tokens([long], max_model_len=MODEL_LEN) == MODEL_LEN == billed(builder, long)
    capped = RerankTask("q", ["word " * 5000], None, 10)
    head = len("<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
               "<Query>: q\n<Document>: ")
    assert estimate_prompt_tokens([capped], max_model_len=MODEL_LEN) == TEMPLATE_TOKENS + head + 10
    assert billed(builder, capped) <= TEMPLATE_TOKENS + head + 10


def test_every_body_shape() -> None:
    documents = ["one", {"text": "two"}]
    rerank = RerankRequest.model_validate({"query": "q", "documents": documents, "max_tokens_per_doc": 1})
    tei = TEIRerankRequest.model_validate({"query": "q", "texts": ["one", "two"]})
    score = ScoreRequest.model_validate({"text_1": "q", "text_2": ["one", "two"], "truncate_prompt_tokens": 60})
    uncapped = ScoreRequest.model_validate({"text_1": "q", "text_2": ["one", "two"], "truncate_prompt_tokens": -1})
    pairs = ScoreRequest.model_validate({"queries": ["q", "q"], "documents": ["one", "two"]})
    assert [d for t in scoring_tasks(rerank) for d in t.documents] == ["one", "two"]
    assert estimate_prompt_tokens(scoring_tasks(tei), 32768) == estimate_prompt_tokens(scoring_tasks(pairs), 32768)
    # truncate_prompt_tokens caps each whole prompt (vLLM), -1 is the model length
    assert estimate_prompt_tokens(scoring_tasks(score), 32768) == 2 * 60
    assert estimate_prompt_tokens(scoring_tasks(uncapped), 32768) == estimate_prompt_tokens(scoring_tasks(pairs), 32768)
    # max_tokens_per_doc=1 caps "two" (3 bytes) to 1 token of document
    assert estimate_prompt_tokens(scoring_tasks(rerank), 32768) == estimate_prompt_tokens(scoring_tasks(tei), 32768) - 4
