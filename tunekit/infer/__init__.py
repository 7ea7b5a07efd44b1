"""The one inference engine: eval, chat, generate, the export checks and the server all answer
through it, so a model gives the same answer everywhere.

  cache.py      preallocated KV cache (slabs) whose rows can leave and join
  decode.py     the decode loop: Batch (prefill, step, extend), per-row stop/length/sampling/adapter
  greedy.py     greedy answers to many conversations in batches (eval, generate, export, replay)
  sampling.py   Sampling settings and the per-row sampler (temperature, top-p, seed)
  stream.py     one answer streamed as text (tunekit chat)
  load.py       loading a run, adapter or model to answer with, in its eval's dtype and precision
  adapters.py   many LoRA adapters on one base: loaded on first use, kept (LRU), mixed in one batch
  scheduler.py  concurrent requests gathered into batches per base model (continuous batching)
  pool.py       the engines a server answers with: one per base model, a name -> (engine, adapter, tokenizer)

The OpenAI chat completions shape over it is tunekit/serve/completions.py.
"""
