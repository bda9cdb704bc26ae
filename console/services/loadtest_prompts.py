"""The prompt sets a load test from the console sends (console/services/loadtest.py).

Each set: a label for the page, the answer length it asks for (``max_tokens``), and its prompts, sent in turn.
The long prompts stay within the demo models' 512-token context (a prompt that does not fit fails as an error).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptSet:
    label: str
    max_tokens: int
    prompts: tuple[str, ...]

_LONG_CONTEXT = (
    "I ordered a winter jacket, two pairs of running shoes and a blender three weeks ago. The jacket arrived "
    "with a broken zip, one pair of shoes was the wrong size and the blender never arrived at all, although the "
    "tracking page has said 'out for delivery' for nine days. I wrote to you twice through the contact form and "
    "got an automatic reply both times saying someone would answer within two working days, but nobody did. "
    "Meanwhile my card was charged for all three items, and then charged a second time for the shoes. I have the "
    "order confirmation, the two bank statements and photos of the zip. "
)

PROMPT_SETS: dict[str, PromptSet] = {
    "support": PromptSet(
        label="Support questions",
        max_tokens=96,
        prompts=(
            "Where is my order? It was supposed to arrive yesterday.",
            "How do I reset my password?",
            "I was charged twice this month, can you help?",
            "Can I return a blender I bought two weeks ago?",
            "How long does a refund take to reach my card?",
            "I'm locked out of my account after several wrong attempts.",
            "Can I change the delivery address of an order that has shipped?",
            "The package arrived damaged, what should I do?",
            "Do you ship to Canada, and how much does it cost?",
            "How do I cancel my subscription?",
        ),
    ),
    "off_topic": PromptSet(
        label="Off-topic questions",
        max_tokens=96,
        prompts=(
            "What is the capital of Australia?",
            "Write a short poem about the sea.",
            "Who won the football world cup in 1998?",
            "Explain how a rainbow forms.",
            "Give me a recipe for pancakes.",
            "What's a good name for a pet turtle?",
            "How far away is the moon?",
            "Tell me a joke about programmers.",
        ),
    ),
    "long": PromptSet(
        label="Long prompts",
        max_tokens=48,
        prompts=(
            _LONG_CONTEXT + "What are my options, and in which order should I deal with them?",
            _LONG_CONTEXT + "Please summarise what went wrong and what you will do about each item.",
            _LONG_CONTEXT + "Can I get a refund for the blender and a replacement jacket at the same time?",
            _LONG_CONTEXT + "Which of these problems should I report first, and to whom?",
        ),
    ),
}
