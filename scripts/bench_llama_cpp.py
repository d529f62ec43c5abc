"""llama.cpp side of `attune-bench sampling`: N samples of one prompt with llama-cpp-python.

Reads one JSON request from stdin and prints one JSON line per N:
  {"model": PATH, "prompt": TEXT, "ns": [1, 4, 16], "max_tokens": 64, "temperature": 0.8,
   "top_p": 0.95, "threads": 2, "seed": 0}
  → {"n": 4, "tokens": 256, "seconds": 3.9, "tokens_per_s": 65.6, "prompt_tokens": 31}

The high-level API decodes one sequence at a time (llama.cpp's multi-sequence batching is not
exposed there), so N samples are N generations, each with its own seed; the prompt's KV cache is
reused between them (llama-cpp-python keeps the common prefix).
Also prints {"system_info": ...} first: the SIMD features the build uses.
"""
import json
import sys
import time

import llama_cpp

req = json.loads(sys.stdin.readline())
print(json.dumps({"system_info": llama_cpp.llama_print_system_info().decode(), "version": llama_cpp.__version__}), flush=True)
llm = llama_cpp.Llama(
    model_path=req["model"],
    n_ctx=1024,
    n_threads=req["threads"],
    n_threads_batch=req["threads"],
    seed=req["seed"],
    verbose=False,
)
prompt_tokens = len(llm.tokenize(req["prompt"].encode(), add_bos=False, special=True))
# Warm-up: one short generation, as on the Attune side.
llm.create_completion(req["prompt"], max_tokens=4, temperature=0.0)
for n in req["ns"]:
    tokens = 0
    t0 = time.perf_counter()
    for i in range(n):
        out = llm.create_completion(
            req["prompt"],
            max_tokens=req["max_tokens"],
            temperature=req["temperature"],
            top_p=req["top_p"],
            top_k=0,
            seed=req["seed"] + i,
        )
        tokens += out["usage"]["completion_tokens"]
    dt = time.perf_counter() - t0
    print(json.dumps({"n": n, "tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt,
                      "prompt_tokens": prompt_tokens}), flush=True)
