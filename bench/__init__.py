"""Benchmarks: this package measures and seeds, it never serves.

- ``bench.engine``: output tokens/s through the engine host versus vLLM's own ``LLM.generate``.
- ``bench.safety``: latency of the safety scanners on prompt- and answer-sized texts.
- ``bench.review``: the review queue's first page and "take next" over a seeded queue of 100,000 items.

``bench`` may import ``console``, ``engine`` and ``db``; nothing there imports ``bench`` except the CLI's
``llm-console bench`` commands, lazily. Seeding here writes rows in bulk, past the audit log, into a
throwaway database of its own: never point it at a real one.
"""
