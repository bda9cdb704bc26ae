"""``llm-console bench ...``: the benchmarks' own commands, registered through the ``llm_console.commands`` entry
point (pyproject.toml), so the console never imports this package.

Every benchmark seeds and measures a throwaway database or model of its own; ``bench engine --model NAME`` alone
reads the console's database (the version's files), as the shell principal like any other command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from console.cli_support import CliError, Parser, positive, print_result, shell_context
from engine.types import ModelSpec, ServerOptions

if TYPE_CHECKING:
    from console.settings import Settings

# Why a benchmark runs without the shell principal (tests/access/test_shell_principal.py reads it).
THROWAWAY = "measures on a throwaway database and model of its own; touches no console data"


def cmd_engine(args: argparse.Namespace, settings: Settings) -> int:
    from engine.errors import EngineError

    if args.backend != "server" and (args.url or args.server_model):
        raise CliError("--url and --server-model are for --backend server")
    if args.url and not args.server_model:
        raise CliError("--url needs --server-model: the model name that server serves")
    if args.server_model and not args.url:
        raise CliError("--server-model needs --url: the server to measure")
    if args.url and args.model:
        raise CliError("give --url (a running server) or --model (a registered version), not both")
    spec: ModelSpec | Path | None = None
    if args.model:
        from console.services import registry

        ctx, _shell = shell_context(args, settings)
        spec = registry.loadable_spec(ctx, args.model)
    elif not args.url:
        from engine.demo.tiny import build_tiny_model

        spec = build_tiny_model(settings.models_dir / "tiny-bench")
    try:
        if args.backend == "server":
            from bench.engine import run_server_bench

            url, server_model = args.url, args.server_model
            if isinstance(spec, ModelSpec) and spec.backend == "server":  # a registered server version
                url, server_model, spec = spec.server_urls[0], spec.model_on_server, None
            api_key = settings.server_api_key_value() if url else None
            result = run_server_bench(spec, url=url, server_model=server_model, api_key=api_key,
                                      concurrency=args.concurrency, max_tokens=args.max_tokens,
                                      kv_cache_gib=settings.kv_cache_gib, rounds=args.rounds,
                                      options=ServerOptions(start_timeout_s=settings.server_start_seconds))
        else:
            from bench.engine import run_engine_bench

            assert spec is not None
            result = run_engine_bench(spec, concurrency=args.concurrency, max_tokens=args.max_tokens,
                                      kv_cache_gib=settings.kv_cache_gib, rounds=args.rounds)
    except (EngineError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print_result(result, args.json)
    return 0


def cmd_switch(args: argparse.Namespace, settings: Settings) -> int:
    from bench.switch import SWITCH_BACKENDS, run_switch_bench

    backends = SWITCH_BACKENDS if args.backend == "both" else (args.backend,)
    print_result(run_switch_bench(backends=backends, concurrency=args.concurrency), args.json)
    return 0


def cmd_safety(args: argparse.Namespace, settings: Settings) -> int:
    from bench.safety import run_adversarial_bench, run_safety_bench

    if args.adversarial:
        print_result(run_adversarial_bench(), args.json)
        return 0
    print_result(run_safety_bench(iterations=args.iterations, stream_tokens_per_s=args.stream_rate,
                                  stream_iterations=args.exchanges), args.json)
    return 0


def cmd_review(args: argparse.Namespace, settings: Settings) -> int:
    from bench.review import run_review_bench

    print_result(run_review_bench(items=args.items), args.json)
    return 0


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from bench.backtest import run_backtest_bench

    print_result(run_backtest_bench(exchanges=args.exchanges), args.json)
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from bench.audit import run_audit_bench

    postgres_url = args.postgres_url or os.environ.get("LLM_CONSOLE_TEST_POSTGRES_URL")
    print_result(run_audit_bench(events=args.events, appends=args.appends, postgres_url=postgres_url,
                                 progress=lambda m: print(m, file=sys.stderr, flush=True)), args.json)
    return 0


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from bench.latency import run_latency_bench

    print_result(run_latency_bench(rows=args.rows), args.json)
    return 0


def cmd_canary(args: argparse.Namespace, settings: Settings) -> int:
    from bench.canary import SCENARIOS, run_canary_bench

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()] if args.scenarios else None
    known = {s.name for s in SCENARIOS}
    if names is not None and (not names or set(names) - known):
        raise CliError(f"--scenarios takes names from {', '.join(sorted(known))}")
    print_result(run_canary_bench(seeds=args.seeds, max_per_arm=args.max_per_arm, scenarios=names), args.json)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its subcommands to ``llm-console`` (the ``llm_console.commands`` entry point)."""
    bench = subparsers.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_cmd", required=True,
                                                                             parser_class=Parser)
    s = bench.add_parser("engine", help="engine host vs vLLM's LLM.generate, or (--backend server) the console's "
                                        "server client vs the openai client on one vLLM server: output tokens/s")
    s.add_argument("--json", action="store_true")
    s.add_argument("--backend", choices=("in-process", "server"), default="in-process",
                   help="in-process: the engine host vs LLM.generate (default); server: the console's client vs "
                        "the openai client against one vLLM OpenAI-compatible server (started for the run on the "
                        "model, unless --url names a running one)")
    s.add_argument("--model", help="registered version to use (default: a tiny model built on the spot)")
    s.add_argument("--url", help="with --backend server: base URL of a running vLLM server or router to measure "
                                 "(its API key from LLM_CONSOLE_SERVER_API_KEY or _FILE)")
    s.add_argument("--server-model", help="with --url: the model name that server serves")
    s.add_argument("--concurrency", type=positive, default=16)
    s.add_argument("--max-tokens", type=positive, default=128)
    s.add_argument("--rounds", type=positive, default=9, help="interleaved rounds per side (median ratio)")
    s.set_defaults(func=cmd_engine, unguarded=THROWAWAY + " (with --model: as the shell principal)")
    s = bench.add_parser("switch", help="switch the served version under concurrent chats, in-process and on "
                                        "managed vLLM servers: seconds, failures, the longest wait it caused")
    s.add_argument("--json", action="store_true")
    s.add_argument("--backend", choices=("in-process", "managed-server", "both"), default="both",
                   help="which backend's switch to measure (default both, one after the other)")
    s.add_argument("--concurrency", type=positive, default=8)
    s.set_defaults(func=cmd_switch, unguarded=THROWAWAY)
    s = bench.add_parser("safety", help="time the safety scans add to an exchange (before the first token, after "
                                        "the last), p50/p95, and per scanner")
    s.add_argument("--json", action="store_true")
    s.add_argument("--iterations", type=positive, default=50, help="scans per figure (default 50)")
    s.add_argument("--exchanges", type=positive, default=20,
                   help="streamed exchanges for total_p95_ms (default 20; each streams a 100-word answer)")
    s.add_argument("--stream-rate", type=positive, default=60,
                   help="tokens per second the answer streams at (default 60, the demo model's rate here)")
    s.add_argument("--adversarial", action="store_true",
                   help="instead: one whole scan of 20,000 characters of each adversarial shape (capitalised words, "
                        "'Aa ', digits and spaces, commas...), per scanner and in total")
    s.set_defaults(func=cmd_safety, unguarded=THROWAWAY)
    s = bench.add_parser("review", help="review queue: first page with filters and claim-next, 100,000 items")
    s.add_argument("--json", action="store_true")
    s.add_argument("--items", type=positive, default=100_000)
    s.set_defaults(func=cmd_review, unguarded=THROWAWAY)
    s = bench.add_parser("backtest", help="policy backtest: replay 100,000 stored exchanges through a proposed policy")
    s.add_argument("--json", action="store_true")
    s.add_argument("--exchanges", type=positive, default=100_000)
    s.set_defaults(func=cmd_backtest, unguarded=THROWAWAY)
    s = bench.add_parser("dashboard", help="latency page over 1,000,000 exchanges: 7 and 30 days, store overhead")
    s.add_argument("--json", action="store_true")
    s.add_argument("--rows", type=positive, default=1_000_000)
    s.set_defaults(func=cmd_dashboard, unguarded=THROWAWAY)
    s = bench.add_parser("audit", help="audit log: appends/s, verify and export 1,000,000 events, export memory")
    s.add_argument("--json", action="store_true")
    s.add_argument("--events", type=positive, default=1_000_000)
    s.add_argument("--appends", type=positive, default=4_000, help="events appended, one per transaction")
    s.add_argument("--postgres-url", default=None,
                   help="a PostgreSQL server (a role that may create databases) for append_per_s_4p; default "
                        "LLM_CONSOLE_TEST_POSTGRES_URL; without one it is not measured")
    s.set_defaults(func=cmd_audit, unguarded=THROWAWAY)
    s = bench.add_parser("canary", help="canary decisions on scripted traffic with known answers (equal, worse, "
                                        "slightly better candidates), decided by the real judge: correct decisions "
                                        "and exchanges to decision")
    s.add_argument("--json", action="store_true")
    s.add_argument("--seeds", type=positive, default=5, help="canaries per scenario (default 5)")
    s.add_argument("--max-per-arm", type=positive, default=20_000,
                   help="exchanges per arm when the time box ends undecided (default 20,000)")
    s.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
    s.set_defaults(func=cmd_canary, unguarded=THROWAWAY)
