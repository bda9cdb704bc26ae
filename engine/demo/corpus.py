"""The demo model's training corpus: templated customer-support dialogues written by the project itself.

Every intent has many question phrasings (slot-filled with order numbers, products, plans, dates, names) and
one fixed, self-contained answer, so a model of ~1M parameters trained for a minute or two learns to map the
many phrasings onto the right answer. Out-of-domain questions (weather, sports, maths, recipes, code...) all
get the same polite refusal. Some dialogues carry a system prompt, some have several turns.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Bump when the templates change: it is part of the build hash, so cached models are rebuilt.
CORPUS_VERSION = "4"

REFUSAL = (
    "I'm sorry, I can only help with questions about your account, billing, orders, refunds, "
    "cancellations and privacy."
)

TOPICS = (
    "greeting",
    "account",
    "billing",
    "orders",
    "refunds",
    "cancellations",
    "privacy",
    "escalation",
    "out_of_domain",
)

SYSTEM_PROMPTS = (
    "You are a helpful customer support assistant.",
    "You are the support assistant of Acme Store. Answer briefly and politely.",
    "You are a friendly support agent. Only answer questions about the customer's account, billing, orders, "
    "refunds, cancellations and privacy.",
    "Be concise.",
    "You help customers of an online shop.",
    "You are a support bot. Stay polite.",
)

_SLOTS: dict[str, tuple[str, ...]] = {
    "product": (
        "laptop", "phone", "headphones", "coffee machine", "jacket", "pair of shoes", "backpack", "monitor",
        "keyboard", "blender", "watch", "camera", "desk lamp", "tablet", "vacuum cleaner", "printer",
        "sofa", "bike helmet", "speaker", "charger",
    ),
    "plan": ("Basic", "Plus", "Premium", "Pro", "Family", "Business", "Starter", "Team"),
    "month": (
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December",
    ),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "yesterday", "last week"),
    "name": ("Anna", "Ben", "Carlos", "Diana", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena"),
    "city": ("Paris", "London", "Tokyo", "Berlin", "New York", "Madrid", "Rome", "Sydney", "Cairo", "Toronto"),
    "team": ("Real Madrid", "the Lakers", "Arsenal", "the Yankees", "Bayern", "the Bulls", "Juventus"),
    "dish": ("lasagna", "pancakes", "sushi", "chocolate cake", "curry", "pizza dough", "banana bread"),
    "lang": ("Python", "JavaScript", "Java", "Rust", "C++", "Go", "SQL"),
    "country": ("France", "Japan", "Brazil", "Canada", "Egypt", "Italy", "India", "Mexico"),
}


def _order_number(rng: random.Random) -> str:
    style = rng.randrange(3)
    digits = str(rng.randrange(100000, 999999))
    return ("#" + digits, "A-" + digits, digits)[style]


def _amount(rng: random.Random) -> str:
    return f"${rng.randrange(5, 400)}.{rng.randrange(0, 100):02d}"


def _small_number(rng: random.Random) -> str:
    return str(rng.randrange(2, 100))


@dataclass(frozen=True)
class Intent:
    """One thing a customer may ask: its topic, many question templates and the single answer."""

    name: str
    topic: str
    questions: tuple[str, ...]
    answer: str


INTENTS: tuple[Intent, ...] = (
    # greeting
    Intent("hello", "greeting", (
        "Hi", "Hello", "Hey", "Hi there", "Hello there", "Good morning", "Good afternoon", "Good evening",
        "Hey, is anyone there?", "Hi, I need some help", "Hello, can you help me?", "Hi, my name is {name}",
        "Hello, this is {name}", "Hey there, I have a question", "Greetings", "Yo", "Hiya",
        "Good morning, I need assistance", "Is this customer support?", "Hi support team",
        "Hello, is someone there to help?", "Hi! Can anyone help me?", "hey, anyone around?", "Hello, I need help",
        "Hi, can I ask something?", "Good day", "Hello, are you there?", "Hi, is this the help desk?",
        "Hello! Anyone there?", "hi, anybody available?", "Hey! Could someone help me?", "Hello, can somebody assist me?",
        "Hi! I have a question for support", "Hello again", "Hey, can you help me out?",
    ), "Hello! I'm the support assistant. I can help with your account, billing, orders, refunds, "
       "cancellations and privacy. What can I do for you?"),
    Intent("thanks", "greeting", (
        "Thanks", "Thank you", "Thanks a lot", "Thank you so much", "Great, thanks", "That helped, thank you",
        "Perfect, thanks for your help", "Cheers", "Thanks, that answers my question", "Awesome, thank you",
        "OK thanks", "Many thanks", "Thank you for the quick answer", "Got it, thanks",
    ), "You're welcome! Is there anything else I can help you with?"),
    Intent("goodbye", "greeting", (
        "Bye", "Goodbye", "See you", "That's all, bye", "Nothing else, goodbye", "Have a nice day, bye",
        "I'm done, thanks and bye", "Bye for now", "No, that is all", "That's everything, goodbye",
    ), "Goodbye, and thank you for contacting support. Have a great day!"),
    # account
    Intent("reset_password", "account", (
        "I forgot my password", "How do I reset my password?", "I can't remember my password",
        "My password doesn't work anymore", "I can't log in, I think I forgot my password",
        "How can I change my password?", "Reset my password please", "I need a new password",
        "I lost my password, what do I do?", "The password I use is not accepted",
        "How do I recover my account password?", "Can you help me reset the password for my account?",
        "I want to change the password of my account", "Forgot password", "password reset",
        "I typed my password wrong and now I can't sign in", "Where do I reset my password?",
        "I haven't logged in since {month} and forgot my password", "My login password is wrong",
        "I need to set a new password for my account",
    ), "To reset your password, click \"Forgot password\" on the sign-in page and enter your account email. "
       "We will send you a reset link that is valid for 24 hours."),
    Intent("locked_account", "account", (
        "My account is locked", "My account has been locked", "I'm locked out of my account",
        "It says my account is locked", "Why is my account locked?", "How do I unlock my account?",
        "I tried to log in too many times and now I'm blocked", "My account got blocked after failed logins",
        "Can you unlock my account?", "I can't access my account, it says locked", "account locked",
        "I've been locked out since {day}", "My account is suspended after too many attempts",
    ), "Your account is locked after too many failed sign-in attempts. Wait 15 minutes and try again, "
       "or reset your password to unlock it right away."),
    Intent("change_email", "account", (
        "How do I change my email address?", "I want to update the email on my account",
        "Can I change the email address I use to log in?", "My email address has changed, how do I update it?",
        "How can I use a different email for my account?", "change email", "Update my email please",
        "I need to change the email linked to my account", "Where can I edit my email address?",
        "My old email no longer works, can I change it?",
    ), "You can change your email address under Settings > Account > Email. We will send a confirmation "
       "link to the new address."),
    Intent("two_factor", "account", (
        "How do I turn on two-factor authentication?", "How can I enable 2FA?", "Do you support two-factor login?",
        "I want to make my account more secure", "How do I set up two-step verification?",
        "Can I use an authenticator app with my account?", "enable 2FA", "How do I secure my account?",
        "I want to add two-factor authentication to my account",
    ), "You can turn on two-factor authentication under Settings > Security. Scan the QR code with your "
       "authenticator app and enter the code to confirm."),
    # billing
    Intent("charged_twice", "billing", (
        "I was charged twice", "I was charged twice for my {plan} plan", "You billed me two times this month",
        "There are two charges of {amount} on my card", "Why was I charged double?",
        "I see a duplicate charge on my credit card", "I got billed twice in {month}",
        "My card was charged {amount} twice", "double charge", "Why did you take the payment twice?",
        "I paid twice for the same invoice", "There is a double payment on my bank statement",
        "You charged my card twice this month", "My credit card was charged twice for one order",
        "I see the same payment two times", "Someone took {amount} from my card two times",
    ), "I'm sorry about the double charge. Duplicate charges are usually pending authorizations that "
       "disappear within 3 to 5 business days. If both charges remain, we will refund the extra one."),
    Intent("update_card", "billing", (
        "How do I update my credit card?", "I need to change my payment method", "My card expired, how do I add a new one?",
        "How can I change the card you charge?", "I want to pay with a different card", "update payment method",
        "My payment failed, how do I update my card details?", "Where do I change my billing details?",
        "Can I switch to a new credit card?", "My card was declined, what should I do?",
        "I got a new bank card, how do I update it?", "I want to use another credit card for my payments",
        "How do I add a new card for payments?", "I have a new credit card, can I pay with it?",
        "Please use my new card from now on", "How do I replace the card on file?",
    ), "You can update your payment method under Settings > Billing > Payment method. The new card is used "
       "from your next invoice."),
    Intent("invoice", "billing", (
        "Where can I find my invoice?", "I need the invoice for {month}", "How do I download my invoices?",
        "Can you send me a copy of my invoice?", "Where are my receipts?", "I need a receipt for my {plan} plan",
        "invoice for {month}", "How can I get an invoice for my last payment?", "I can't find my bill",
        "Where do I see my billing history?", "Please send me the invoice for the payment of {amount}",
    ), "You can download all your invoices under Settings > Billing > Invoices. Each invoice is also "
       "emailed to you when it is issued."),
    Intent("change_plan", "billing", (
        "How do I upgrade to {plan}?", "Can I switch to the {plan} plan?", "I want to downgrade my plan",
        "How much does the {plan} plan cost?", "How do I change my plan?", "upgrade plan",
        "Can I move from {plan} to a cheaper plan?", "What happens to my bill if I upgrade?",
        "I'd like to change my subscription to {plan}", "Is it possible to upgrade my plan mid-month?",
    ), "You can change your plan at any time under Settings > Billing > Plan. Upgrades take effect "
       "immediately and the price difference is prorated."),
    # orders
    Intent("where_is_order", "orders", (
        "Where is my order?", "Where is my order {order}?", "My package hasn't arrived yet",
        "I ordered a {product} on {day} and it's not here", "Can you track my order {order}?",
        "When will my {product} be delivered?", "My order {order} is late", "track order {order}",
        "How long does delivery take?", "My delivery is taking too long", "I'm still waiting for my {product}",
        "What is the status of order {order}?", "Has my order shipped yet?", "When will my parcel arrive?",
        "The tracking for my {product} hasn't updated since {day}", "My order never arrived",
    ), "You can track your order under My orders: open the order to see its tracking link. Orders usually "
       "arrive within 3 to 5 business days after shipping."),
    Intent("damaged_item", "orders", (
        "My {product} arrived damaged", "The {product} I received is broken", "My order {order} came damaged",
        "I got a broken {product}", "The package was damaged and the {product} doesn't work",
        "You sent me the wrong item", "I received the wrong {product}", "The {product} in order {order} is defective",
        "Something is missing from my order", "The box was crushed and my {product} is scratched",
        "My {product} is broken", "The {product} arrived broken", "My new {product} doesn't work",
        "I just got my {product} and it's damaged", "The {product} stopped working on the first day",
    ), "I'm sorry your item arrived damaged or wrong. Please report it under My orders > Report a problem "
       "with a photo, and we will ship a replacement or refund you, whichever you prefer."),
    Intent("change_address", "orders", (
        "Can I change the delivery address?", "I need to change the shipping address for order {order}",
        "I moved, can you deliver my {product} to a new address?", "How do I update my delivery address?",
        "I entered the wrong address for my order", "change shipping address",
        "Can my order {order} be sent somewhere else?", "Wrong address on my order, can you fix it?",
    ), "You can change the delivery address under My orders as long as the order has not shipped yet. "
       "After shipping, please contact the carrier with your tracking number."),
    # refunds
    Intent("request_refund", "refunds", (
        "I want a refund", "I want a refund for my {product}", "How do I get my money back?",
        "Can I get a refund for order {order}?", "I'd like a refund please", "refund my order {order}",
        "I'm not happy with my {product}, can I get a refund?", "How do I ask for a refund?",
        "Please refund the {amount} I paid", "Can you give me my money back for the {product}?",
        "Am I eligible for a refund?", "I want to be reimbursed for my purchase", "refund request",
        "What is your refund policy?", "Can I get a refund on my {plan} subscription?",
        "I'd like my money back for the {product}", "Give me my money back", "I want my money back for order {order}",
        "The {product} I bought was a waste, I want my money back", "Can I be refunded for the {product} I ordered?",
        "I returned the {product}, can I have a refund?",
    ), "You can request a refund within 30 days of purchase under My orders > Request a refund. Once "
       "approved, the refund is sent to your original payment method."),
    Intent("refund_status", "refunds", (
        "When will I get my refund?", "My refund hasn't arrived", "Where is my refund?",
        "I was promised a refund on {day} and I haven't got it", "How long does a refund take?",
        "The refund of {amount} is not on my account yet", "Still waiting for my refund for order {order}",
        "refund status", "Has my refund been processed?", "How many days until I see the refund?",
        "When does the refund show up on my card?", "How long before the refund reaches my bank account?",
        "I still don't see the refund on my statement",
    ), "Refunds are processed within 5 business days after approval. Depending on your bank, it can take "
       "up to 10 days for the refund to appear on your statement."),
    Intent("return_item", "refunds", (
        "How do I return my {product}?", "I want to return an item", "Can I send back the {product}?",
        "How do returns work?", "return order {order}", "I'd like to return my order",
        "Do I have to pay for the return shipping?", "Where do I get a return label?",
        "The {product} doesn't fit, can I return it?", "Can I exchange my {product}?",
    ), "To return an item, open the order under My orders and choose Return. Print the free return label "
       "and drop the package at any post office within 30 days."),
    # cancellations
    Intent("cancel_subscription", "cancellations", (
        "How do I cancel my subscription?", "I want to cancel my {plan} plan", "Cancel my subscription please",
        "Please stop my membership", "How can I end my {plan} subscription?", "cancel subscription",
        "I don't want to renew my plan", "Stop charging me every month", "I want to unsubscribe from the {plan} plan",
        "How do I stop my subscription from renewing?", "I'd like to cancel before the next billing date",
        "Can I cancel my plan at any time?", "I want to end my membership in {month}",
        "Please cancel my {plan} plan", "Close my {plan} subscription", "I no longer want the {plan} plan, cancel it",
        "Stop my {plan} membership please",
    ), "You can cancel your subscription under Settings > Billing > Cancel subscription. You keep access "
       "until the end of the current billing period and will not be charged again."),
    Intent("cancel_order", "cancellations", (
        "Can I cancel my order?", "I want to cancel order {order}", "Please cancel my order for the {product}",
        "cancel order {order}", "I ordered the {product} by mistake, can I cancel?", "How do I cancel an order?",
        "I changed my mind about my order, can I cancel it?", "Stop my order {order}", "Cancel my purchase",
    ), "You can cancel an order under My orders as long as it has not shipped yet. If it has already "
       "shipped, you can return it for a refund once it arrives."),
    # privacy
    Intent("delete_data", "privacy", (
        "How do I delete my account?", "I want you to delete all my data", "Please erase my personal data",
        "Can I close my account and remove my information?", "delete my account", "How do I remove my data?",
        "I want my account and data gone", "What happens to my data if I delete my account?",
        "Right to be forgotten request", "Please remove everything you store about me",
        "Erase all the information you have about me", "Remove my personal information from your systems",
        "Forget everything about me", "I want my personal data deleted", "Delete all my personal details please",
    ), "You can delete your account under Settings > Privacy > Delete account. We erase your personal data "
       "within 30 days, except what we must keep by law."),
    Intent("data_use", "privacy", (
        "What do you do with my personal data?", "Do you sell my data?", "How is my data used?",
        "Who do you share my information with?", "Is my data safe with you?", "privacy policy",
        "Do you give my email to other companies?", "What personal information do you store?",
        "Are you tracking me?", "How do you protect my privacy?", "Do you share my data with advertisers?",
    ), "We use your personal data only to provide and improve our service, and we never sell it. You can "
       "read the details in our privacy policy."),
    Intent("data_export", "privacy", (
        "Can I get a copy of my data?", "How do I download my personal data?", "I want to export my data",
        "Send me all the data you have about me", "export my data", "How can I see what data you have on me?",
        "I'd like a copy of my personal information", "Data access request",
    ), "You can download a copy of your personal data under Settings > Privacy > Export my data. We will "
       "email you a download link within 48 hours."),
    Intent("marketing_emails", "privacy", (
        "How do I stop your marketing emails?", "Stop sending me newsletters", "unsubscribe from emails",
        "I get too many promotional emails", "How do I opt out of marketing?", "Remove me from your mailing list",
        "I don't want any more advertising emails",
    ), "You can stop marketing emails with the Unsubscribe link at the bottom of any newsletter, or under "
       "Settings > Privacy > Email preferences."),
    # escalation
    Intent("human_agent", "escalation", (
        "Can I talk to a real person?", "I want to speak to a human", "Connect me to an agent",
        "Let me talk to a manager", "I need a human agent please", "human please", "agent",
        "Is there a person I can speak with?", "Transfer me to customer service", "Can someone call me?",
        "I want to talk to your supervisor", "You're not helping, get me a human", "How do I contact support by phone?",
        "What is your phone number?", "I'd like to file a complaint", "I want to make a formal complaint",
        "This is unacceptable, I want to speak to someone",
    ), "Of course. I'm passing you to a human agent now. Our team answers Monday to Friday, 9am to 6pm, "
       "and you can also write to support@example.com."),
    # out of domain: all get the refusal
    Intent("weather", "out_of_domain", (
        "What's the weather like in {city}?", "Will it rain tomorrow?", "Is it going to be sunny in {city} on {day}?",
        "What's the temperature today?", "weather forecast for {city}", "Should I bring an umbrella?",
        "How cold is it in {city} in {month}?",
    ), REFUSAL),
    Intent("sports", "out_of_domain", (
        "Who won the game last night?", "Did {team} win yesterday?", "What's the score of the {team} match?",
        "Who is the best football player?", "When does {team} play next?", "Who will win the World Cup?",
        "How many titles has {team} won?",
    ), REFUSAL),
    Intent("math", "out_of_domain", (
        "What is {n} plus {m}?", "What is {n} times {m}?", "Can you solve {n} x + {m} = 0?",
        "What's the square root of {n}?", "Help me with my math homework", "Is {n} a prime number?",
        "Calculate {n} divided by {m}", "What is {n} percent of {m}?", "What is {n} minus {m}?",
        "How much is {n} squared?", "Solve this equation for me", "What's {n} to the power of {m}?",
    ), REFUSAL),
    Intent("recipes", "out_of_domain", (
        "How do I make {dish}?", "Give me a recipe for {dish}", "What should I cook for dinner?",
        "How long do I bake {dish}?", "What's a good vegetarian recipe?", "Recipe for {dish} please",
        "How many eggs go in {dish}?",
    ), REFUSAL),
    Intent("coding", "out_of_domain", (
        "Write a {lang} function that sorts a list", "How do I reverse a string in {lang}?",
        "Fix this {lang} code for me", "What is a closure in {lang}?", "Help me debug my {lang} program",
        "Write me a SQL query to join two tables", "How do I install {lang}?", "Explain recursion",
    ), REFUSAL),
    Intent("general_knowledge", "out_of_domain", (
        "What is the capital of {country}?", "Who was the first president of the United States?",
        "How tall is Mount Everest?", "Tell me a joke", "Write me a poem about the sea",
        "What is the meaning of life?", "How far is the moon?", "Who wrote Hamlet?",
        "Translate hello into French", "Recommend a good movie", "What's the best stock to buy?",
        "Plan a trip to {country} for me", "What should I name my dog?", "How do I lose weight?",
        "What time is it in {city}?", "What's the population of {country}?", "Can you write my essay?",
        "Tell me about black holes", "Who is the president of {country}?", "What's a good book to read?",
    ), REFUSAL),
)

_PREFIXES = (
    "", "", "", "", "Hi, ", "Hello, ", "Hey, ", "Hi there, ", "Excuse me, ", "Quick question: ",
    "Good morning, ", "Please help: ", "Sorry, ", "Hi, this is {name}. ", "Hello, I'm {name}. ",
)
_SUFFIXES = ("", "", "", "", " Thanks.", " Thank you!", " Please help.", " Thanks in advance.", " ASAP please.")


# Word swaps applied at random to filled questions, so the model sees the same intent in other words.
# Every swap keeps the intent: "broken" stays a damaged item, "sign in" stays an account question.
_SYNONYMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("broken", ("damaged", "smashed", "cracked", "faulty", "not working")),
    ("damaged", ("broken", "smashed", "cracked")),
    ("arrived", ("came", "came in", "got here", "was delivered")),
    ("package", ("parcel", "delivery", "shipment", "box")),
    ("log in", ("sign in", "login", "log on", "get in")),
    ("charged", ("billed",)),
    ("twice", ("two times", "double", "2 times")),
    ("credit card", ("debit card", "Visa card", "bank card", "card")),
    ("subscription", ("membership",)),
    ("human", ("person", "real person", "human being", "live agent")),
    ("agent", ("person", "human", "representative")),
    ("delete", ("erase", "remove", "wipe")),
    ("personal data", ("personal information", "data", "information")),
    ("I want", ("I would like", "I'd like", "I need", "I wish")),
    ("how do I", ("how can I", "how should I", "what's the way to")),
    ("can I", ("could I", "may I")),
    ("receipt", ("invoice", "bill")),
    ("money back", ("money returned", "refund")),
    ("help", ("assist", "support")),
    ("cancel", ("stop", "end", "terminate", "close")),
    ("store", ("keep", "hold", "have")),
    ("bought", ("purchased", "ordered", "got")),
    ("hello", ("hi", "hey", "hello there")),
    ("anyone", ("anybody", "someone", "somebody")),
)


def _swap_synonyms(text: str, rng: random.Random, rate: float = 0.35) -> str:
    for word, options in _SYNONYMS:
        start = text.lower().find(word.lower())
        if start < 0 or rng.random() >= rate:
            continue
        end = start + len(word)
        # Whole words only ("agent" must not hit "agents", "help" not "helpful").
        if (start and text[start - 1].isalnum()) or (end < len(text) and text[end].isalnum()):
            continue
        choice = rng.choice(options)
        if text[start].isupper():
            choice = choice[0].upper() + choice[1:]
        text = text[:start] + choice + text[end:]
    return text


@dataclass(frozen=True)
class Dialogue:
    """One training conversation: ``messages`` alternate user/assistant, optionally after a system message."""

    topics: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, content)

    def as_chat(self) -> list[dict[str, str]]:
        """The messages in the ``[{"role": ..., "content": ...}]`` shape chat templates take."""
        return [{"role": role, "content": content} for role, content in self.messages]


def _fill(template: str, rng: random.Random) -> str:
    values = {key: rng.choice(options) for key, options in _SLOTS.items()}
    values["order"] = _order_number(rng)
    values["amount"] = _amount(rng)
    values["n"] = _small_number(rng)
    values["m"] = _small_number(rng)
    return template.format(**values)


def phrase_question(intent: Intent, rng: random.Random) -> str:
    """One phrasing of ``intent``'s question: a template with slots filled, a greeting/politeness wrapper and casing noise."""
    core = _swap_synonyms(_fill(rng.choice(intent.questions), rng), rng)
    if intent.topic == "greeting":
        return _vary_case(core + rng.choice(("", "", "!", ".", "!!")) if core[-1].isalnum() else core, rng)
    prefix = _fill(rng.choice(_PREFIXES), rng)
    suffix = rng.choice(_SUFFIXES)
    if suffix and core[-1] not in ".?!":
        core += "."
    if prefix and core[:1].isupper() and not core.startswith("I ") and not core.startswith("I'"):
        core = core[0].lower() + core[1:]
    return _vary_case(prefix + core + suffix, rng)


def _vary_case(text: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.12:
        return text.lower()
    if roll < 0.2:
        return text.rstrip("?.!")
    return text


def build_corpus(n_dialogues: int, *, seed: int = 0, system_share: float = 0.25, multi_turn_share: float = 0.15) -> list[Dialogue]:
    """Write ``n_dialogues`` deterministic support dialogues (same seed, same corpus).

    Every intent is drawn about equally often, out-of-domain refusals included; ``system_share`` of the
    dialogues start with a system prompt and ``multi_turn_share`` have two or three user turns.
    """
    rng = random.Random(seed)
    non_greeting = [i for i in INTENTS if i.topic != "greeting"]
    by_name = {i.name: i for i in INTENTS}
    dialogues: list[Dialogue] = []
    for index in range(n_dialogues):
        messages: list[tuple[str, str]] = []
        if rng.random() < system_share:
            messages.append(("system", rng.choice(SYSTEM_PROMPTS)))
        # Round-robin over intents so even a small corpus covers every one of them.
        first = INTENTS[index % len(INTENTS)]
        turns = [first]
        if first.name not in ("thanks", "goodbye") and rng.random() < multi_turn_share:
            turns.append(rng.choice(non_greeting))
            if rng.random() < 0.5:
                turns.append(by_name[rng.choice(("thanks", "goodbye"))])
        for intent in turns:
            messages.append(("user", phrase_question(intent, rng)))
            messages.append(("assistant", intent.answer))
        dialogues.append(Dialogue(tuple(dict.fromkeys(i.topic for i in turns)), tuple(messages)))
    rng.shuffle(dialogues)
    logger.debug("built %s dialogues (seed %s)", len(dialogues), seed)
    return dialogues


def corpus_fingerprint() -> str:
    """A hash of the templates and answers, so a build can tell whether its corpus is still current."""
    digest = hashlib.sha256(CORPUS_VERSION.encode())
    for intent in INTENTS:
        digest.update(repr((intent.name, intent.topic, intent.questions, intent.answer)).encode())
    digest.update(repr((_PREFIXES, _SUFFIXES, _SYNONYMS, SYSTEM_PROMPTS, sorted(_SLOTS.items()))).encode())
    return digest.hexdigest()[:16]
