"""Does real llama.cpp read a tunekit GGUF the way tunekit does? (Not part of the test suite:
it needs a llama.cpp build, which the machines running CI do not have.)

For the first N held-out questions of a run it compares the prompt's token ids from
`llama-tokenize` with tunekit's, and `llama-simple`'s greedy answer with the adapter model's.

    cmake -B build -DLLAMA_CURL=OFF && cmake --build build -j --target llama-simple llama-tokenize
    python bench/gguf_in_llamacpp.py --llama-bin path/to/llama.cpp/build/bin --run runs/support-demo \
        --gguf runs/support-demo/export/model.gguf [--questions 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from tunekit.data.template import prompt_ids, render
from tunekit.infer.greedy import greedy_answers
from tunekit.export.run import ANSWER_TOKENS, check_questions
from tunekit.models.tuned import load_target, resolve_target


def llama(bin_dir: Path, tool: str, *args: str) -> str:
    return subprocess.run([str(bin_dir / tool), *args], capture_output=True, text=True, check=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-simple and llama-tokenize")
    ap.add_argument("--run", required=True, help="the run the GGUF was exported from")
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--questions", type=int, default=8)
    args = ap.parse_args()
    target = resolve_target(args.run)
    model, tok = load_target(target)
    questions = check_questions(target, args.questions)
    reference = greedy_answers(model, tok, questions, ANSWER_TOKENS, len(questions), "adapter")
    same_ids = same_answers = 0
    for q, want in zip(questions, reference, strict=True):
        text = render(tok, q, add_generation_prompt=True)
        ids = json.loads(llama(args.llama_bin, "llama-tokenize", "-m", args.gguf, "-p", text, "--ids", "--log-disable")
                         .strip().splitlines()[-1])
        same_ids += ids == prompt_ids(tok, q)
        # llama-simple prints the prompt, then the greedy continuation up to an end-of-generation token.
        out = llama(args.llama_bin, "llama-simple", "-m", args.gguf, "-n", str(ANSWER_TOKENS), text)
        got = out[out.rfind(text[-20:]) + 20:].replace(tok.eos_token, "").strip() if text[-20:] in out else out.strip()
        same_answers += got == want
        if got != want:
            print(f"differs:\n  adapter:   {want!r}\n  llama.cpp: {got!r}")
    print(f"{args.gguf}: prompt ids identical {same_ids}/{len(questions)}, greedy answers identical {same_answers}/{len(questions)}")


if __name__ == "__main__":
    main()
