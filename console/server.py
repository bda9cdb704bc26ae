"""The console's server process: Streamlit running ``console/app.py``, with the model preloaded at start.

``st.cache_resource`` objects are process-wide, so building the engine host (and its reconciler) and starting
the scanners' load here, before the first browser connects, gives the pages the same objects later. Without
this, the model would start loading only when someone first opens a page.

Run as ``python -m console.server [streamlit run options]`` (``llm-console run`` does).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"


def _preload() -> None:
    try:
        from console import resources

        resources.safety_loader()
        host = resources.engine_host()
        logger.info("preloading at server start: %s", "model loading" if host is not None else "no engine")
    except Exception:  # the pages show what failed; the server must start regardless
        logger.exception("preloading the model and scanners at server start failed")


def main(argv: list[str] | None = None) -> None:
    """Start Streamlit on the console's app with ``argv`` as extra ``streamlit run`` options."""
    from streamlit.web import cli as streamlit_cli

    threading.Thread(target=_preload, name="preload", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    streamlit_cli.main()


if __name__ == "__main__":
    main()
