"""Command line: one subcommand per stage, `run` for all of them, `models` and `data`.

Any TunekitError exits with code 2 and one clear message; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tunekit.errors import TunekitError


def _stage_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument("config", help="the run's YAML config")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values, e.g. train.lr=1e-4")
    p.add_argument("--runs-dir", default="runs", help="where run folders live (default: runs)")
    p.add_argument("--force", action="store_true",
                   help="redo stages even if already done (what they replace is moved to <run>/.previous/); "
                        "also lets this config take over a run folder another config file created")
    return p


def _resume_flags(p: argparse.ArgumentParser) -> None:
    """--resume / --no-resume for stages that train; resuming is the default either way. And
    --nproc-per-node: the same command in N processes on this machine, launched through torchrun."""
    p.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="train in N processes on this machine (one per GPU; on a CPU they share the cores): "
                        "runs this command under torchrun --standalone. Several machines: docs/guide/scaling.md")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint of this config (the default; a killed run ends as an uninterrupted one would)")
    g.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints and train from the start")


def _export_parser(sub) -> None:
    exp = sub.add_parser("export", help="write and verify a run's adapter, merged model, GGUF and Ollama Modelfile")
    exp.add_argument("target", help="a run folder or run name (writes <run>/export), a run's config YAML, an adapter folder, or a model")
    exp.add_argument("overrides", nargs="*", metavar="key.sub=value", help="with a config YAML: override config values")
    exp.add_argument("--format", action="append", default=[], metavar="FORMAT",
                     help="adapter, merged, gguf, ollama; repeat or comma-separate (default: the run's export.formats)")
    exp.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                     help="merged weights (default auto: the base model's dtype); merging itself is always fp32")
    exp.add_argument("--gguf-type", choices=("f16", "bf16", "q8_0"), help="GGUF tensor type (default f16)")
    exp.add_argument("--out", help="output folder (default: <run>/export; required for an adapter or model)")
    exp.add_argument("--base", help="with an adapter folder: its base model (default: the one adapter_config.json records)")
    exp.add_argument("--check-answers", type=int, metavar="N",
                     help="greedy answers to the run's first N held-out questions must match the adapter model's (default 5; 0: off)")
    exp.add_argument("--runs-dir", default="runs", help="where run folders live (default: runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunekit", description="Fine-tune an open language model on your data, and prove it helped.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _resume_flags(_stage_parser(sub, "run", "prepare -> train -> eval -> report (-> export when export.formats is set)"))
    _stage_parser(sub, "prepare", "validate, clean, dedupe and split the data")
    _resume_flags(_stage_parser(sub, "train", "fine-tune (resumes from the last checkpoint)"))
    _stage_parser(sub, "eval", "score base, few-shot and tuned models on held-out data")
    _stage_parser(sub, "report", "write report.md and report.html")
    _export_parser(sub)
    plan = sub.add_parser("plan", help="before training: time a short probe on this machine, predict the run's time and peak memory")
    plan.add_argument("config", help="the run's YAML config")
    plan.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values, e.g. train.batch_size=4")
    plan.add_argument("--runs-dir", default="runs", help="where run folders live (default: runs)")
    plan.add_argument("--curve", action="store_true",
                      help="also train on growing shares of the data and plot the score against examples (one training per share)")
    plan.add_argument("--fractions", default="10,25,50,100", help="percentages of the training data for --curve (default: 10,25,50,100)")
    _serve_parsers(sub)
    _server_parsers(sub)
    doctor = sub.add_parser("doctor", help="what this machine can do: cores, ISA, AMX, measured fp32/bf16 speed, GPUs, versions")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    models = sub.add_parser("models", help="the base-model store").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="registry and cached models").add_argument("--json", action="store_true", help="one JSON object a line")
    models.add_parser("pull", help="fetch a model into the cache").add_argument("name")
    imp = models.add_parser("import", help="add a local HF folder or .gguf file to the cache")
    imp.add_argument("path")
    imp.add_argument("--name", default=None)
    models.add_parser("info", help="architecture, size and source of a model").add_argument("name")

    data = sub.add_parser("data", help="look at a dataset before training").add_subparsers(dest="data_command", required=True)
    ins = data.add_parser("inspect", help="counts, token lengths, supervised tokens, duplicates, system prompts, warnings")
    ins.add_argument("path", nargs="?", help="data file or folder (default: the config's data.train, or each data.mix source)")
    ins.add_argument("--model", help="tokenizer and chat template to measure with (default: the config's, else the default model)")
    ins.add_argument("--config", help="take the model and data settings from this run config")
    ins.add_argument("--format", choices=("auto", "chat", "sharegpt", "alpaca", "prompt_completion", "text"))
    ins.add_argument("--max-length", type=int, help="tokens per example (default: the config's, else 512)")
    ins.add_argument("--train-on", choices=("all_assistant", "last_assistant", "all"), help="which tokens carry loss")
    ins.add_argument("--epochs", type=float, help="for the tokens-per-run figure (default: the config's, else 1)")
    ins.add_argument("--out", help="folder for inspect.json and token_lengths.png "
                                   "(default: runs/inspect/<data or config name>/ under the current folder)")
    ins.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    return parser


@contextlib.contextmanager
def _own_run(run_dir: Path, config_file: str, cfg, force: bool = False) -> Iterator[None]:
    """Hold the run folder's lock, and refuse it when another config file owns it (runfolder.py).

    Under torchrun every process runs the command: rank 0 holds the lock for all of them (the
    others would find it taken), and they learn whether it could (hardware.agree)."""
    from tunekit import hardware, runfolder

    with contextlib.ExitStack() as held:
        def own() -> None:
            held.enter_context(runfolder.locked(run_dir))
            runfolder.claim(run_dir, config_file, cfg, force)

        hardware.agree(own)
        yield


def _launch_torchrun(args, n: int) -> int:
    """This command again, without --nproc-per-node, in `n` processes under torchrun on this machine;
    returns torchrun's exit code (1 when a process failed: its own message says which and why)."""
    import signal
    import subprocess

    from tunekit import hardware
    from tunekit.errors import ConfigError

    if hardware.world_size() > 1:
        raise ConfigError("--nproc-per-node launches torchrun, and this command already runs under it; leave it out")
    gpus = hardware.cuda_device_count()
    if gpus and n > gpus:
        raise ConfigError(f"--nproc-per-node {n}: this machine has {gpus} GPUs; give at most {gpus}, one process each")
    rest = _without_option(args.argv, "--nproc-per-node")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "tunekit", *rest]
    print(f"tunekit: launching {n} processes: {' '.join(cmd[1:])}", file=sys.stderr)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except BaseException:  # SIGTERM here (Ctrl-C reaches torchrun itself): torchrun stops its processes
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE` (or an abbreviation argparse took for it)."""
    out, skip = [], False
    for tok in argv:
        name = tok.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) >= 4 and option.startswith(name):
            skip = "=" not in tok
        else:
            out.append(tok)
    return out


def _cmd_stage(args) -> int:
    from tunekit import pipeline
    from tunekit.config import load_config
    from tunekit.errors import ConfigError
    from tunekit.progress import console

    if getattr(args, "resume", False) and args.force:
        # --force sets aside the checkpoints --resume asks to continue from.
        raise ConfigError("--resume continues from the last checkpoint and --force starts over; give one of them")
    n = getattr(args, "nproc_per_node", None)
    if n is not None and n < 1:
        raise ConfigError(f"--nproc-per-node {n}: give 1 or more processes")
    if n is not None and n > 1:
        load_config(args.config, args.overrides)  # a bad config fails here, once, not in every process
        return _launch_torchrun(args, n)
    _join_ranks()
    from tunekit.hardware import is_main

    cfg = load_config(args.config, args.overrides)
    run_dir = pipeline.run_dir_for(cfg, args.runs_dir)
    resume = not getattr(args, "no_resume", False)
    with _own_run(run_dir, args.config, cfg, args.force):
        if args.command == "run":
            report = pipeline.run_all(cfg, run_dir, force=args.force, resume=resume)
        else:
            result = pipeline.run_stage(cfg, run_dir, args.command, force=args.force, resume=resume)
    if args.command == "run":
        if is_main():  # the other processes of a torchrun job finished after the stages they share
            _print_headline(run_dir, report)
        return 0
    if args.command == "report":
        _print_headline(run_dir, run_dir / "report.md")
    elif result is not None:
        console.print(f"{args.command} done: {run_dir}")
    return 0


def _join_ranks() -> None:
    """Under torchrun: join the process group; only rank 0 prints progress (the others would repeat it)."""
    from tunekit import hardware
    from tunekit.progress import console

    if hardware.join_process_group() and not hardware.is_main():
        console.quiet = True


def _export_settings(saved: dict, chosen: dict):
    """ExportConfig from the run's (or config's) export section with the command line's choices on top."""
    from pydantic import ValidationError

    from tunekit.config import ExportConfig
    from tunekit.errors import ConfigError

    try:
        return ExportConfig.model_validate({**saved, **chosen})
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"export.{first['loc'][0]}: {first['msg']}") from None


def _cmd_export(args) -> int:
    from tunekit import pipeline
    from tunekit.config import load_config
    from tunekit.errors import ConfigError
    from tunekit.export.run import export_target, parse_formats
    from tunekit.models.tuned import resolve_target, run_config

    chosen = {"formats": parse_formats(args.format) if args.format else None, "dtype": args.dtype,
              "gguf_type": args.gguf_type, "check_answers": args.check_answers}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if args.target.endswith((".yaml", ".yml")) and Path(args.target).is_file():
        cfg = load_config(args.target, args.overrides)
        cfg = cfg.model_copy(update={"export": _export_settings(cfg.export.model_dump(), chosen)})
        run_dir = pipeline.run_dir_for(cfg, args.runs_dir)
        with _own_run(run_dir, args.target, cfg):
            pipeline.run_stage(cfg, run_dir, "export", force=True)
        return 0
    if args.overrides:
        raise ConfigError(f"key=value overrides apply to a config YAML, and {args.target} is not one; use the options (--format ...)")
    target = resolve_target(args.target, base=args.base, runs_dir=args.runs_dir)
    # A run's own export settings are the defaults.
    e = _export_settings(run_config(target.run_dir).get("export") or {} if target.run_dir else {}, chosen)
    if not e.formats:
        raise ConfigError("no export format: give --format adapter|merged|gguf|ollama (several allowed)")
    if args.out is None and target.run_dir is None:
        raise ConfigError(f"{args.target} is not a run, so there is no run folder to export into; give --out FOLDER")
    out = Path(args.out) if args.out else target.run_dir / "export"
    from tunekit.runfolder import locked

    with locked(target.run_dir) if target.run_dir else contextlib.nullcontext():
        export_target(target, e.formats, out, e.dtype, e.gguf_type, e.check_answers)
    print(f"export done: {out} (figures in {out / 'export.json'})")
    return 0


def _cmd_plan(args) -> int:
    from tunekit import pipeline
    from tunekit.config import load_config
    from tunekit.plan import run_plan
    from tunekit.plan.curve import parse_fractions

    fractions = parse_fractions(args.fractions)  # a typo fails now, not after the probe
    cfg = load_config(args.config, args.overrides)
    run_dir = pipeline.run_dir_for(cfg, args.runs_dir)
    with _own_run(run_dir, args.config, cfg):
        run_plan(cfg, run_dir, curve=args.curve, fractions=fractions)
    return 0


def _serve_parsers(sub) -> None:
    """`chat` and `generate`: use a run's tuned model, an adapter or any model."""
    chat = sub.add_parser("chat", help="talk with a run's tuned model, an adapter or a model (streaming, multi-turn)")
    gen = sub.add_parser("generate", help="answer every prompt of a JSONL file (greedy, batched)")
    for p in (chat, gen):
        p.add_argument("model", metavar="MODEL_OR_RUN", help="a run folder or name, an adapter folder, or a model name/path/hub id/GGUF")
        p.add_argument("--base", help="base model for an adapter (default: the one its adapter_config.json records)")
        p.add_argument("--system", help="system prompt" + (" for prompts that have none" if p is gen else ""))
        p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default: 256)")
        p.add_argument("--dtype", choices=("float32", "bfloat16"), help="weights' dtype (default: the run's model.dtype, else float32)")
        p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                       help="compute precision (default: the run's train.precision, else auto: bf16 where it measures fast)")
        p.add_argument("--runs-dir", default="runs", help="where run folders live (default: runs)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy, the answers the eval scored; >0 samples")
    chat.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling with --temperature (default: 1, off)")
    chat.add_argument("--seed", type=int, help="make sampled answers repeatable")
    chat.add_argument("--stats", action="store_true", help="after each answer: tokens, first-token latency, tokens/s")
    gen.add_argument("--input", required=True, help='JSONL: {"messages": [...]}, {"prompt": ...} or {"instruction", "input"} a line')
    gen.add_argument("--output", help="where answers go (default: <input stem>.answers.jsonl beside the input)")
    gen.add_argument("--batch-size", type=int, default=16, help="prompts per batch (default: 16)")


def _server_parsers(sub) -> None:
    """`serve` (the OpenAI-compatible API and job queue) and `keys` (who may call it)."""
    srv = sub.add_parser("serve", help="OpenAI-compatible API: upload files, run fine-tuning jobs, list models")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    srv.add_argument("--workers", type=int, default=1, help="jobs that train at the same time (default: 1; others queue)")
    srv.add_argument("--max-upload-mb", type=float, default=512, help="largest upload in MB; larger ones get 413 (default: 512)")
    srv.add_argument("--max-queue", type=int, default=64, help="jobs that may wait; one more gets 429 (default: 64)")
    srv.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                     help="compute precision of chat completions (default: each model's own: a tuned model's run "
                          "precision, else auto). fp32: a request's greedy answer is the same alone or in a batch")
    srv.add_argument("--job-defaults", metavar="YAML",
                     help="a tunekit config without data whose settings every job starts from (LoRA rank, eval, ...)")
    keys = sub.add_parser("keys", help="API keys for `tunekit serve`").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="make a key; it is printed once, alone on the last line")
    create.add_argument("name", help="the key's name (letters, digits, . _ -)")
    create.add_argument("--owner", help="whose files, jobs and models the key sees (default: NAME)")
    keys.add_parser("list", help="names, owners, creation and revocation times (never the keys)")
    keys.add_parser("revoke", help="refuse a key from now on").add_argument("name")


def _cmd_serve(args) -> int:
    from tunekit.serve.server import serve

    serve(args.host, args.port, args.workers, args.max_upload_mb, args.max_queue, args.job_defaults, args.precision)
    return 0


def _cmd_keys(args) -> int:
    import time

    from tunekit.serve import keys, store

    root = store.serve_home()
    if args.keys_command == "create":
        key = keys.create(root, args.name, args.owner)
        print(f"key {args.name!r} for owner {args.owner or args.name!r}; it is shown only now (the server keeps its hash):",
              file=sys.stderr)
        print(key)
    elif args.keys_command == "list":
        rows = keys.list_keys(root)
        when = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""  # noqa: E731
        for k in rows:
            print(f"{k['name']}\towner {k['owner']}\tcreated {when(k['created_at'])}"
                  + (f"\trevoked {when(k['revoked_at'])}" if k["revoked_at"] else ""))
        if not rows:
            print("no keys; create one with `tunekit keys create NAME`", file=sys.stderr)
    else:
        keys.revoke(root, args.name)
        print(f"revoked key {args.name!r}")
    return 0


def _cmd_chat(args) -> int:
    from tunekit.infer.load import open_model
    from tunekit.infer.sampling import Sampling
    from tunekit.models.loading import set_threads
    from tunekit.serve.chat import ChatSession, chat_loop, lines_of, seed_sampling, terminal_read

    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p).check()
    set_threads(None)
    loaded = open_model(args.model, base=args.base, runs_dir=args.runs_dir, dtype=args.dtype, precision=args.precision)
    seed_sampling(args.seed)
    session = ChatSession(loaded, sampling, system=args.system, runs_dir=args.runs_dir, stats=args.stats)
    if sys.stdin.isatty():
        chat_loop(session, terminal_read(), sys.stdout)
    else:  # piped lines: echoed, so the transcript shows what was asked
        chat_loop(session, lines_of(sys.stdin), sys.stdout, echo=True)
    return 0


def _cmd_generate(args) -> int:
    from tunekit.errors import ConfigError
    from tunekit.infer.load import describe, open_model
    from tunekit.infer.sampling import check_sizes
    from tunekit.models.loading import set_threads
    from tunekit.progress import console
    from tunekit.serve.batch import default_output, generate_file, read_prompts

    check_sizes(args.max_new_tokens, args.batch_size)
    source = Path(args.input)
    prompts = read_prompts(source, system=args.system)  # every line checked before the model loads
    output = Path(args.output) if args.output else default_output(source)
    if output.resolve() == source.resolve():
        raise ConfigError(f"--output {output} is the input file; answers would replace the prompts. Name another file")
    set_threads(None)
    loaded = open_model(args.model, base=args.base, runs_dir=args.runs_dir, dtype=args.dtype, precision=args.precision)
    console.print(f"generate: {len(prompts)} prompts, {describe(loaded)}")
    w = generate_file(loaded.model, loaded.tokenizer, prompts, output, loaded.target.label, args.max_new_tokens, args.batch_size)
    print(f"{w.answers} answers, {w.tokens / max(w.seconds, 1e-9):.1f} tokens/s ({w.tokens} tokens in {w.seconds:.1f} s); "
          f"written to {w.path}")
    return 0


def _print_headline(run_dir: Path, report: Path) -> None:
    from tunekit.eval.report import headline
    from tunekit.progress import console

    scores_path = run_dir / "eval" / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    console.rule("[bold]result")
    for line in headline(scores):
        if line:
            console.print(line)
    console.print(f"\nreport: {report}  (and {report.with_suffix('.html')})")


def _cmd_models(args) -> int:
    from tunekit import models

    if args.models_command == "list":
        _print_models(models.list_models(), as_json=args.json)
    elif args.models_command == "pull":
        print(models.pull(args.name))
    elif args.models_command == "import":
        print(models.import_model(args.path, name=args.name))
    elif args.models_command == "info":
        print(json.dumps(models.info(args.name), indent=2, default=str))
    return 0


def _inspect_out(data: Path, out: str | None) -> Path:
    """--out, else runs/inspect/<name>/ under the current folder, created. Never beside the
    data: its folder may be read-only, shared, or a dataset someone else keeps tidy."""
    from tunekit.errors import ConfigError

    folder = Path(out) if out else Path("runs") / "inspect" / (data.stem if data.is_file() else data.resolve().name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write the inspection to {folder} ({e.strerror or e}); "
                          "give --out FOLDER, a folder you can write to") from None
    return folder


def _cmd_data(args) -> int:
    import time

    from tunekit import atomic
    from tunekit.config import load_config
    from tunekit.data.inspect import inspect_data, inspect_sources
    from tunekit.data.inspect_view import histogram_png, render_sources, render_text
    from tunekit.errors import ConfigError
    from tunekit.models import DEFAULT_MODEL, resolve
    from tunekit.models.loading import load_tokenizer
    from tunekit.progress import console

    cfg = load_config(args.config) if args.config else None
    mix = cfg.data.sources() if cfg and cfg.data.mix and not args.path else None
    path = args.path or (cfg.data.train if cfg else None)
    if not path and not mix:
        raise ConfigError("give the data to inspect: `tunekit data inspect PATH`, or --config with data.train or data.mix")
    d, t = (cfg.data, cfg.train) if cfg else (None, None)
    model = args.model or (cfg.model.base if cfg else DEFAULT_MODEL)
    tokenizer = load_tokenizer(resolve(model), cfg.model.chat_template if cfg else "auto")
    last = [time.time()]

    def progress(n: int) -> None:
        if time.time() - last[0] >= 10:
            last[0] = time.time()
            console.print(f"inspect: {n:,} records read")

    settings = dict(
        train_on=args.train_on or (d.train_on if d else "all_assistant"),
        max_length=args.max_length if args.max_length is not None else (d.max_length if d else 512),
        near_dup_threshold=d.near_dup_threshold if d else 0.85,
        epochs=args.epochs if args.epochs is not None else (t.epochs if t else 1.0), seed=cfg.seed if cfg else 0,
        on_progress=progress)
    if mix:  # one report per source, beside the config (the sources may live in different folders)
        report = inspect_sources(mix, tokenizer, fmt=args.format, **settings)
        out = _inspect_out(Path(args.config), args.out)
        pngs = [out / f"token_lengths.{i}.png" for i in range(len(mix))]
        for r, png in zip(report["sources"], pngs):
            r["model"] = model
            histogram_png(r, png)
        report["model"] = model
        text = render_sources(report)
    else:
        report = inspect_data(path, tokenizer, fmt=args.format or (d.format if d else "auto"),
                              columns=d.columns if d else None, **settings)
        report["model"] = model
        out = _inspect_out(Path(path), args.out)
        pngs = [out / "token_lengths.png"]
        histogram_png(report, pngs[0])
        text = render_text(report)
    atomic.write_json(out / "inspect.json", report)
    wrote = f"wrote {out / 'inspect.json'} and {', '.join(map(str, pngs))}"
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        print(wrote, file=sys.stderr)
    else:
        print(text + "\n" + wrote)
    return 0


def _cmd_doctor(args) -> int:
    from tunekit.doctor import doctor_lines, doctor_report

    rep = doctor_report()
    print(json.dumps(rep, indent=2) if args.json else "\n".join(doctor_lines(rep)))
    return 0


def _quiet_libraries() -> None:
    """Our own progress and messages replace the libraries' bars and deprecation chatter."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _print_models(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for m in rows:
            print(json.dumps(m))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "cached", "size", "source", "description", box=None)
    for m in rows:
        size = f"{m['size_bytes'] / 1e6:,.0f} MB" if m.get("size_bytes") else ""
        name = m["name"] + (" (default)" if m.get("default") else "")
        table.add_row(name, "yes" if m["cached"] else "no", size, m.get("source") or ", ".join(m.get("sources", [])), m.get("description") or "")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --nproc-per-node to relaunch the command
    # Prepare tokenises on both cores (100k records: 35-45 s instead of ~58 s). tunekit
    # forks no workers after tokenising, so the tokenizers fork-safety fallback never bites.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    _quiet_libraries()
    import torch  # loaded by the libraries just quieted; named here for its OutOfMemoryError

    from tunekit.stopping import Interrupted, stop_on_signals

    try:
        commands = {"models": _cmd_models, "data": _cmd_data, "plan": _cmd_plan, "export": _cmd_export, "chat": _cmd_chat,
                    "generate": _cmd_generate, "doctor": _cmd_doctor, "serve": _cmd_serve, "keys": _cmd_keys}
        with stop_on_signals():
            return commands.get(args.command, _cmd_stage)(args)
    except Interrupted as e:  # SIGTERM or SIGINT: cleanup has run, and training saved where it stopped
        if args.debug:
            raise
        print(f"tunekit: {e}; rerun the same command to resume", file=sys.stderr)
        return e.exit_code
    except torch.OutOfMemoryError as e:  # training names its estimate itself; any other stage ends here
        if args.debug:
            raise
        from tunekit.hardware import oom_message

        print(f"tunekit: out of memory: {oom_message()} ({str(e).splitlines()[0]})", file=sys.stderr)
        return 2
    except TunekitError as e:
        if args.debug:
            raise
        if not getattr(e, "told_by_rank0", False):  # under torchrun rank 0 says it once for every process
            print(f"tunekit: {e.kind}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunekit: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        from tunekit.hardware import leave_process_group

        leave_process_group()
