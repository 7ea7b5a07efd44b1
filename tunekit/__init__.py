"""tunekit: fine-tune an open language model on your own data, and prove it helped."""

__version__ = "0.1.0"
