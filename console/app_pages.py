"""The pages of the console: section, title, icon and script for each page key of ``access.PAGES``."""

from __future__ import annotations

from pathlib import Path

# Not "pages/": Streamlit treats a folder named pages/ beside the entrypoint as an old-style multipage app and
# runs its scripts directly (bypassing this router's sidebar on reruns). Every view still guards itself.
PAGES_DIR = Path(__file__).parent / "views"

# page key -> (section, title, icon, file)
PAGE_TABLE = {
    "chat": ("Operate", "Chat", ":material/chat:", "chat.py"),
    "dashboard": ("Operate", "Latency", ":material/monitoring:", "latency.py"),
    "review": ("Safety", "Review queue", ":material/rule:", "review.py"),
    "escalations": ("Safety", "Escalations", ":material/priority_high:", "escalations.py"),
    "review_quality": ("Safety", "Review quality", ":material/query_stats:", "review_quality.py"),
    "models": ("Admin", "Models", ":material/model_training:", "models.py"),
    "promotions": ("Admin", "Promotions", ":material/published_with_changes:", "promotions.py"),
    "evaluations": ("Admin", "Evaluations", ":material/checklist:", "evaluations.py"),
    "compare": ("Admin", "Side by side", ":material/compare:", "compare.py"),
    "users": ("Admin", "Users", ":material/group:", "users.py"),
    "policy": ("Safety", "Policy", ":material/policy:", "policy.py"),
    "audit": ("Compliance", "Audit log", ":material/fact_check:", "audit.py"),
    "alerts": ("Admin", "Alerts", ":material/notifications:", "alerts.py"),
}


def address(title: str) -> str:
    """A page's address is its label: "Review queue" lives at /review-queue."""
    return "-".join(title.lower().split())


# page key -> the page's address (url_path, without the leading slash)
PAGE_PATHS = {key: address(title) for key, (_, title, _, _) in PAGE_TABLE.items()}
# Addresses pages had before they were named after their labels: the server redirects them (bookmarks).
# Pages added later (review_quality, alerts) never had another address: nothing to redirect.
OLD_PATHS = {key: PAGE_PATHS[key] for key in ("dashboard", "review", "compare", "audit")}

# The browser tab's icon, Material Symbols' "shield" (Apache-2.0) drawn inline: Streamlit makes an SVG page_icon a
# data: URL, whereas a ":material/...:" page_icon makes the browser fetch the icon's SVG from fonts.gstatic.com
# on every page (an outside request from a console that must work offline).
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 -960 960 960"><path fill="#31333f" '
           'd="M480-80q-139-35-229.5-159.5T160-516v-244l320-120 320 120v244q0 152-90.5 276.5T480-80Zm0-84'
           'q104-33 172-132t68-220v-189l-240-90-240 90v189q0 121 68 220t172 132Zm0-316Z"/></svg>')
