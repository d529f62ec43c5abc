"""Token ids of SmolLM2-135M-Instruct's own tokenizer, as llama.cpp computes them, for the test
that checks the tokenizer Attune rebuilds from the GGUF metadata
(engine/tests/llm.rs::real_smollm2_tokenizes_like_llama_cpp).

    $(scripts/llama-cpp-env.sh) scripts/reference/llama_tokens.py \
        ~/.cache/attune/data/llm/SmolLM2-135M-Instruct.Q4_1.gguf > engine/tests/fixtures/smollm2_tokens.json
"""
import json
import sys

import llama_cpp

CASES = [
    "<|im_start|>user\nWhat is 12 + 345?<|im_end|>\n<|im_start|>assistant\n",
    "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    \"\"\" Check if in given list of numbers, are any two numbers closer to each other than\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    \"\"\"\n",
    "Hello world! It's 2024... naïve café, 10,000 items costing $3.50 each 🚀",
    "  leading spaces and\ttabs\n\n\nnewlines   trailing ",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
]

llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
out = {
    "source": f"llama-cpp-python {llama_cpp.__version__}, Llama.tokenize(add_bos=False, special=True)",
    "cases": [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=True)} for t in CASES],
}
print("{\n \"source\": " + json.dumps(out["source"]) + ",\n \"cases\": [\n" + ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in out["cases"]) + "\n ]\n}")
