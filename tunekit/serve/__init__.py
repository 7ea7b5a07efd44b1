"""Using a model: streaming generation (engine), `tunekit chat` (chat) and `tunekit generate` (batch)."""
