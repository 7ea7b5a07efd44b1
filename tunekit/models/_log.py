"""Progress lines on stderr, so stdout stays clean for the CLI's own output."""

import sys


def say(msg: str) -> None:
    print(f"tunekit: {msg}", file=sys.stderr, flush=True)
