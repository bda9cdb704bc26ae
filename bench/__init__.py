"""Benchmarks: this package measures and seeds, it never serves.

- ``bench.engine``: output tokens/s through the engine host versus vLLM's own ``LLM.generate``.
- ``bench.safety``: latency of the safety scanners on prompt- and answer-sized texts.
- ``bench.review``: the review queue's first page and "take next" over a seeded queue of 100,000 items.
- ``bench.switch``, ``bench.audit``, ``bench.latency``: a switch under load, the audit log's appends, verify and
  export, the Latency page over 1,000,000 exchanges.
- ``bench.cli``: the ``llm-console bench ...`` commands.

``bench`` may import ``console``, ``engine`` and ``db``; nothing there imports ``bench``. The ``llm-console bench``
commands are this package's own (``bench.cli``), added to the console's command line through the
``llm_console.commands`` entry point in pyproject.toml. Seeding here writes rows in bulk, past the audit log, into a
throwaway database of its own: never point it at a real one.
"""
