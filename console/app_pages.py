"""The pages of the console: section, title, icon and script for each page key of ``access.PAGES``."""

from __future__ import annotations

from pathlib import Path

# Not "pages/": Streamlit treats a folder named pages/ beside the entrypoint as an old-style multipage app and
# runs its scripts directly (bypassing this router's sidebar on reruns). Every view still guards itself.
PAGES_DIR = Path(__file__).parent / "views"

# page key -> (section, title, icon, file)
PAGE_TABLE = {
    "chat": ("Operate", "Chat", ":material/chat:", "chat.py"),
    "dashboard": ("Operate", "Latency", ":material/monitoring:", "dashboard.py"),
    "review": ("Safety", "Review queue", ":material/rule:", "review.py"),
    "escalations": ("Safety", "Escalations", ":material/priority_high:", "escalations.py"),
    "models": ("Admin", "Models", ":material/model_training:", "models.py"),
    "promotions": ("Admin", "Promotions", ":material/published_with_changes:", "promotions.py"),
    "evaluations": ("Admin", "Evaluations", ":material/checklist:", "evaluations.py"),
    "compare": ("Admin", "Side by side", ":material/compare:", "compare.py"),
    "users": ("Admin", "Users", ":material/group:", "users.py"),
    "policy": ("Safety", "Policy", ":material/policy:", "policy.py"),
    "audit": ("Compliance", "Audit log", ":material/fact_check:", "audit.py"),
}
