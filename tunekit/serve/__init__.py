"""Using a model from outside: `tunekit chat` (chat.py) and `tunekit generate` (batch.py) over the
inference engine in tunekit/infer, and `tunekit serve` (app.py), the OpenAI-compatible Files,
Fine-tuning, Models and Chat completions API with its job queue (store, files, jobs, scheduler,
worker), keys and dashboard."""
