import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama + tokenizer saved as a plain HF folder, built once per session."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")
