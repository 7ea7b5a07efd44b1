"""tunekit: fine-tune an open language model on your own data, and prove it helped.

`tunekit.run(config)` runs every stage; `tunekit.prepare`, `tunekit.evaluate` and
`tunekit.report` run one. They, `tunekit.api.train` and `tunekit.api.export` live in
tunekit/api.py (see its docstring). They load on first use, so `import tunekit` stays cheap:
no torch, no transformers.
"""

__version__ = "0.1.0"

# `train` and `export` are not here: those names are the tunekit.train and tunekit.export packages.
_API = ("run", "prepare", "evaluate", "report", "load", "run_dir")


def __getattr__(name: str):
    if name in _API:
        from tunekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
