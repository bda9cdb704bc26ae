"""The demo model's training corpus: templated customer-support dialogues written by the project itself.

Every intent has many question phrasings (slot-filled with order numbers, products, plans, dates, names) and
one fixed, self-contained answer, so a model of ~1M parameters trained for a minute or two learns to map the
many phrasings onto the right answer. Out-of-domain questions (weather, sports, maths, recipes, code, general
knowledge on broad subjects...) all get the same polite refusal. Some dialogues carry a system prompt, some have
several turns.

Because console users type questions nobody wrote a template for, each phrasing is varied further: words are
swapped within synonym families (e-mail/mail, parcel/shipment, send back/return, terminate/cancel...), the
question is wrapped in greetings, context ("I bought a lamp last week and ...") and sign-offs, and typing noise
is added (typos, dropped little words, lower case, no punctuation). Short keyword-only queries are templates too.

Conversations on the chat page change topic: a customer asks about a refund, then about shipping, then how to reach
someone. Some dialogues are such conversations, in the form the chat service sends them: one to three earlier
turns as it stores them (personal data cut to ``<LABEL>``, now and then an earlier answer that was wrong), then a
question about something else; the loss sees only the answers that are the corpus answer to their question.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)

# Bump when the templates change: it is part of the build hash, so cached models are rebuilt.
CORPUS_VERSION = "6"

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
        "sofa", "bike helmet", "speaker", "charger", "t-shirt", "dress", "sunglasses", "mattress", "kettle",
        "toaster", "router", "smartwatch", "drone", "fridge", "rug", "suitcase", "hoodie", "jeans", "sandals",
        "frying pan", "office chair", "game console", "e-reader", "stroller", "perfume", "wallet", "tent",
        "scarf", "earbuds", "bed sheets", "dining table", "mug", "coat", "hair dryer",
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
    "when": (
        "yesterday", "last week", "two weeks ago", "3 days ago", "on Monday", "last month", "a few days ago",
        "on Friday", "10 days ago", "this morning",
    ),
    # Out-of-domain material: broad subjects, so the refusal is tied to "not about the shop", not to a few words.
    "subject": (
        "the French Revolution", "quantum physics", "photosynthesis", "climate change", "jazz", "the Roman Empire",
        "machine learning", "black holes", "the stock market", "ancient Egypt", "volcanoes", "democracy",
        "the human brain", "electric cars", "dinosaurs", "the solar system", "World War II", "philosophy",
        "vaccines", "the internet", "impressionism", "blockchain", "evolution", "the Olympics",
    ),
    "activity": (
        "running", "painting", "public speaking", "gardening", "photography", "swimming", "learning Spanish",
        "sleeping better", "meditation", "chess", "writing a novel", "drawing", "yoga", "skiing", "fishing",
        "studying for exams", "making friends", "baking", "camping", "dancing",
    ),
    "media": ("book", "podcast", "TV series", "video game", "song", "documentary", "board game", "anime"),
    "form": ("poem", "short story", "song", "limerick", "speech", "rap verse", "bedtime story"),
    "theme": ("love", "the ocean", "my cat", "winter", "friendship", "the moon", "a rainy day", "space"),
    "person": ("Albert Einstein", "Shakespeare", "Napoleon", "Cleopatra", "Mozart", "Frida Kahlo", "Gandhi"),
    "gadget": ("a car engine", "a microwave", "GPS", "a fridge", "wifi", "a rocket", "solar panels"),
    "entity": (
        "elephants", "bananas", "the Eiffel Tower", "penguins", "the Amazon river", "Mars", "honey", "sharks",
        "the Great Wall of China", "green tea", "tigers", "the pyramids", "cheese", "octopuses", "rainbows",
        "coffee beans", "owls", "glaciers", "the Beatles", "the Sahara", "tomatoes", "whales", "diamonds", "Venice",
        "the Nile", "mushrooms", "kangaroos", "lightning", "the Titanic", "bees", "oak trees", "Jupiter", "salmon",
    ),
    "aspect": (
        "history", "origin", "size", "weight", "price", "age", "color", "speed", "lifespan", "meaning",
        "average temperature", "best season", "biggest fact",
    ),
    "adjective": ("big", "old", "fast", "heavy", "expensive", "healthy", "dangerous", "smart", "rare", "popular"),
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


_BASE_INTENTS: tuple[Intent, ...] = (
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
    # Open-ended trivia about anything: unfamiliar words alone must not pull a question into the domain.
    Intent("trivia", "out_of_domain", (
        "What is the {aspect} of {entity}?", "How {adjective} are {entity}?", "Tell me something about {entity}",
        "Why are {entity} so {adjective}?", "fun facts about {entity}", "How many {entity} are there in the world?",
        "Are {entity} {adjective}?", "Is it true that {entity} are {adjective}?", "What do you think of {entity}?",
        "{entity}?", "Where do {entity} come from?", "{aspect} of {entity}", "I'm curious about {entity}",
    ), REFUSAL),
)

# More phrasings per intent: short keyword-only queries, casual and formal registers, questions told as a story.
_EXTRA_QUESTIONS: dict[str, tuple[str, ...]] = {
    "hello": (
        "hey hey", "hello support", "hi team", "morning!", "evening, anyone on the chat?", "hi is the chat working",
        "Hello, is this the right place to ask a question?", "Hi, are you a bot?", "howdy", "hi, got a minute?",
        "Hello, I'm a customer and need a hand", "Dear support team,", "Good afternoon, I'd like some assistance",
    ),
    "thanks": (
        "thx", "ty", "thanks mate", "ok great", "nice, thank you", "perfect", "that's helpful", "I appreciate your help",
        "brilliant, cheers", "super, thanks a bunch", "thank u", "great, that solves it", "awesome",
    ),
    "goodbye": (
        "cya", "ok bye", "that's it for today", "all good now, bye", "take care", "later", "have a good one",
        "nothing more, bye bye",
    ),
    "reset_password": (
        "can't remember my login details", "pw reset", "password not working", "new password please",
        "lost access, forgot the password", "what's my password?", "I need to recover my login",
        "help, can't log in, wrong password", "my password isn't accepted anymore", "how to reset password",
        "I got a new computer and don't know my password", "forgotten password", "I need to reset my pass",
    ),
    "locked_account": (
        "account blocked", "it says my account is disabled", "my profile is frozen",
        "too many login attempts, now I'm locked", "I'm blocked from my account", "the app says my account is locked",
        "unlock account pls", "account suspended?", "I entered the wrong password 5 times and got locked out",
        "locked out", "why is my account blocked", "my account was frozen after I tried to log in",
    ),
    "change_email": (
        "new email address", "update email", "my email is wrong on my profile", "I want to use my work email instead",
        "switch my login email", "how to edit my email", "can you change the email on file",
        "I no longer use that email, please change it", "change the email I log in with",
        "put my new email address on my account", "replace the email address on my profile",
        "my email changed, update my account please", "I'd like a different email address on my account",
    ),
    "two_factor": (
        "2fa", "two factor", "set up two-step verification", "how do I get login codes on my phone",
        "can I add extra security to my login", "turn on two-factor", "security codes when I log in?",
        "does my account have two-step login?", "I want login codes from an app", "extra login protection",
        "enable two-step login", "secure my login with my phone",
    ),
    "charged_twice": (
        "charged 2x", "duplicate payment", "two identical charges from you", "I see {amount} taken twice",
        "you billed me twice for {month}", "the same charge appears twice on my statement", "I was billed twice",
        "why are there 2 payments for one purchase", "double billing", "I paid {amount} two times by mistake",
        "{amount} was taken from my account twice", "you charged me double for order {order}",
    ),
    "update_card": (
        "new card", "card expired", "change card", "update billing info", "my payment didn't go through",
        "how do I put in my new card details", "replace my expired card", "the card on my account is old",
        "payment declined", "I want to pay with my other card", "my credit card expires next month, update it",
        "how do I change the card I pay with", "update my card",
    ),
    "invoice": (
        "invoice", "receipt please", "download invoice", "I need a bill for my company", "copy of my bill",
        "where's my receipt for {month}", "I need a VAT invoice", "billing history",
        "send me the receipt for order {order}", "I need proof of payment", "where do I find my invoices",
        "can I get an invoice for my {plan} plan", "I need my bills from {month} for my taxes",
    ),
    "change_plan": (
        "upgrade", "downgrade", "switch plan", "move me to {plan}", "what does {plan} cost", "I want a bigger plan",
        "switch from {plan} to another plan", "is {plan} cheaper", "plan prices", "how do I go up to the {plan} plan",
        "I'd like a cheaper plan", "change my plan to {plan}", "how does upgrading to {plan} work",
    ),
    "where_is_order": (
        "where's my stuff", "order status", "tracking number?", "when does my {product} arrive",
        "parcel hasn't come", "it's been {n} days and no delivery", "delivery status for {order}",
        "did you ship my {product} yet", "my package is lost", "still no package", "package not delivered",
        "I bought a {product} {when} and it hasn't arrived", "I ordered {when} and nothing has come yet",
        "where is my delivery", "tracking info for my {product}", "my parcel is late",
    ),
    "damaged_item": (
        "item broken", "arrived damaged", "my {product} has a crack", "the {product} is scratched",
        "received the wrong size", "wrong item delivered", "part missing from my {product}", "the {product} is faulty",
        "it came broken", "the {product} won't turn on", "I got the wrong color", "the {product} is defective",
        "I bought a {product} {when} and it's already broken", "the screen of my {product} is cracked",
    ),
    "change_address": (
        "wrong address", "update delivery address", "deliver to my work address instead",
        "new shipping address for my order", "I gave you my old address", "can I redirect my package",
        "ship to a different address", "I'm moving, change the address on order {order}",
        "send my {product} to another address", "the address on my order is wrong",
        "please deliver order {order} to my office", "I need my package sent to my new home",
    ),
    "request_refund": (
        "refund", "refund please", "I want a refund for order {order}", "can I get reimbursed",
        "how do I claim a refund", "I want my money back", "I deserve a refund", "refund for the {product}",
        "not satisfied, refund me", "return my money", "I bought a {product} {when}, I want a refund",
        "the {product} is not what I expected, money back please", "can I have a reimbursement",
    ),
    "refund_status": (
        "refund not received", "where's my money", "still no refund", "when is my refund coming",
        "refund pending for {n} days", "you said you refunded me but nothing arrived", "refund taking too long",
        "how long for the refund to reach my card", "my refund was approved but I don't have the money",
        "the refund is not on my bank statement yet", "when will the money be back on my card",
        "refund approved {when} and still nothing",
    ),
    "return_item": (
        "return", "return label", "how to return", "send back {product}", "I want to return the {product}, it's too big",
        "return policy", "can I ship the {product} back", "how do I send the item back", "I need to send back an item",
        "exchange for a different size", "the {product} is too small, can I send it back",
        "how can I give back the {product}", "returns", "I don't like the {product}, how do I return it",
    ),
    "cancel_subscription": (
        "cancel membership", "end subscription", "stop my subscription", "unsubscribe me from {plan}",
        "I don't want to be charged next month", "terminate my plan", "don't renew", "turn off auto-renew",
        "stop auto renewal", "quit my {plan} plan", "I want to end my {plan} membership",
        "please end my subscription at the end of the month", "how do I get out of my subscription",
    ),
    "cancel_order": (
        "cancel order", "cancel my purchase of the {product}", "I don't want the {product} anymore, cancel the order",
        "ordered the wrong {product}, cancel please", "stop the shipment of order {order}", "undo my order",
        "I placed an order by accident", "please don't ship my order", "I ordered twice by mistake, cancel one",
        "can you stop order {order} before it ships", "I ordered a {product} {when} and want to cancel it",
    ),
    "delete_data": (
        "delete account", "close my account permanently", "remove my account", "erase my data",
        "GDPR deletion request", "I want to leave and have my data deleted", "wipe my profile",
        "shut down my account and delete my info", "get rid of my account", "delete my profile and everything in it",
    ),
    "data_use": (
        "do you sell my info", "what happens with my data", "is my personal info shared", "who sees my data",
        "do you share data with third parties", "privacy?", "data sharing", "do you use cookies to track me",
        "what do you collect about me", "is my information sold to advertisers", "how private is my data",
    ),
    "data_export": (
        "download my data", "GDPR data request", "I want all my data", "copy of my info", "export account data",
        "what info do you have on me, send it", "get my data", "can I have a file with all my personal data",
        "send me a copy of everything you store about me", "data portability request",
    ),
    "marketing_emails": (
        "unsubscribe", "stop emails", "no more newsletters", "stop spamming me", "too many emails from you",
        "opt out of promotions", "turn off promo emails", "take me off your email list",
        "I don't want your offers by email", "stop the marketing emails", "how do I stop getting newsletters",
    ),
    "human_agent": (
        "human", "real person", "speak to agent", "call me", "customer service phone number",
        "can I chat with a person", "I don't want a bot", "live chat with a human", "representative please",
        "operator", "put me through to a person", "is there someone I can call", "I want to talk to a person",
    ),
    "weather": (
        "weather today?", "is it hot in {city} right now", "do I need a coat tomorrow", "forecast for the weekend",
        "will there be a storm in {city}",
    ),
    "sports": (
        "football scores", "who is playing tonight", "best tennis player ever?", "{team} game results",
        "when is the next marathon", "who won the race on {day}",
    ),
    "math": (
        "{n} + {m}", "what's {n}*{m}", "help with algebra", "solve for x: {n}x = {m}", "what is the derivative of x squared",
    ),
    "recipes": (
        "dinner ideas", "how long to boil an egg", "what can I cook with rice and beans", "best {dish} recipe",
        "how do I make a smoothie", "is it safe to eat raw cookie dough",
    ),
    "coding": (
        "my {lang} code has a bug", "how do I center a div", "what is an API", "teach me {lang}",
        "why does my program crash", "explain git rebase",
    ),
    "general_knowledge": (
        "Tell me about {subject}", "Explain {subject} in simple words", "What do you know about {subject}?",
        "Give me a summary of {subject}", "I need tips for {activity}", "How do I get better at {activity}?",
        "What's the best way to start {activity}?", "Can you recommend a {media}?", "Write a {form} about {theme}",
        "Who was {person}?", "How does {gadget} work?", "what's the news today", "Is coffee bad for you?",
        "What should I wear to a wedding?", "How do I unclog a sink?", "Which smartphone should I buy?",
        "How much is a flight to {city}?", "Find me a hotel in {city}", "What's the speed of light?",
        "Can you help me with my homework?", "Should I buy bitcoin?", "hi, can you tell me about {subject}?",
        "Write an email to my boss asking for a day off", "How do I return a serve in tennis?",
        "what's your favorite color", "do you like {media}s?", "I'm bored, entertain me", "Where should I travel in {month}?",
        "give me advice on {activity}", "how old is the universe", "What language do they speak in {country}?",
    ),
}

INTENTS: tuple[Intent, ...] = tuple(
    replace(intent, questions=intent.questions + _EXTRA_QUESTIONS.get(intent.name, ())) for intent in _BASE_INTENTS
)

# The open-ended out-of-domain intents come up twice per round: "everything else" needs more examples than
# any one support intent, or an unfamiliar question gets whichever answer its words are nearest to.
_SCHEDULE: tuple[Intent, ...] = INTENTS + tuple(i for i in INTENTS if i.name in ("general_knowledge", "trivia"))

_PREFIXES = (
    "", "", "", "", "", "", "Hi, ", "Hello, ", "Hey, ", "Hi there, ", "Excuse me, ", "Quick question: ",
    "Good morning, ", "Please help: ", "Sorry, ", "Hi, this is {name}. ", "Hello, I'm {name}. ", "hey ",
    "Dear support, ", "Hello team, ", "Sorry to bother you, ", "Question: ", "Urgent: ", "Good afternoon. ",
    "hi there ", "So, ", "Quick one - ", "Hope you can help. ",
)
# Context before the question, as customers tell it: in-domain only (it is still the same question).
_CONTEXTS = (
    "I bought a {product} {when} and ", "I ordered a {product} {when}. ", "I'm a {plan} customer. ",
    "I've been a customer for years. ", "Long story short, ", "My name is {name} and ",
    "I placed order {order} {when}. ", "I have the {plan} plan. ", "I'm writing about my account. ",
    "This is my second message about this. ", "I got an email from you {when}. ",
)
_SUFFIXES = (
    "", "", "", "", "", "", " Thanks.", " Thank you!", " Please help.", " Thanks in advance.", " ASAP please.",
    " thx", " pls", " Kind regards, {name}", " Many thanks.", " Cheers", " It's urgent.", " I'm getting frustrated.",
    " Can you help?", " What should I do?", "??", " Best, {name}",
)


# Families of interchangeable words: any member found in a question may be swapped for any other, so the model
# sees each intent in many words. Every swap keeps the intent ("parcel" stays an order, "sign in" an account).
SYNONYM_FAMILIES: dict[str, tuple[str, ...]] = {
    "email": ("email", "e-mail", "mail", "email address", "e-mail address", "mail address"),
    "parcel": ("package", "parcel", "shipment", "delivery", "order", "item"),
    "return": ("return", "send back", "ship back", "give back", "bring back"),
    "refund": ("refund", "money back", "reimbursement", "refund of my money"),
    "cancel": ("cancel", "terminate", "end", "stop", "discontinue"),
    "bill": ("invoice", "bill", "receipt", "billing statement"),
    "charged": ("charged", "billed", "debited"),
    "charge": ("charge", "payment", "debit", "transaction"),
    "log in": ("log in", "sign in", "login", "log on", "get in", "sign on"),
    "logged in": ("logged in", "signed in", "logged on"),
    "password": ("password", "passcode", "pw", "pass word", "login password"),
    "subscription": ("subscription", "membership", "plan", "sub", "contract"),
    "human": ("human", "person", "real person", "human being", "live agent", "representative", "staff member"),
    "agent": ("agent", "human", "representative", "operator", "rep"),
    "personal data": ("personal data", "personal information", "personal info", "personal details", "data", "info"),
    "delete": ("delete", "erase", "remove", "wipe", "get rid of"),
    "broken": ("broken", "damaged", "smashed", "cracked", "faulty", "defective", "busted"),
    "arrived": ("arrived", "came", "got here", "was delivered", "showed up", "turned up"),
    "credit card": ("credit card", "debit card", "Visa card", "bank card", "card", "Mastercard"),
    "locked": ("locked", "blocked", "suspended", "frozen", "disabled"),
    "late": ("late", "delayed", "overdue"),
    "newsletters": ("newsletters", "promo emails", "promotional emails", "marketing emails", "advertising emails"),
    "two-factor authentication": (
        "two-factor authentication", "2FA", "two-step verification", "2-step verification",
        "multi-factor authentication", "MFA", "two factor auth",
    ),
    "I want": ("I want", "I would like", "I'd like", "I need", "I wish", "I wanna"),
    "how do I": ("how do I", "how can I", "how should I", "how to", "how would I", "what's the way to"),
    "can I": ("can I", "could I", "may I", "is it possible to"),
    "please": ("please", "pls", "plz", "kindly"),
    "thanks": ("thanks", "thank you", "thx", "ty", "cheers"),
    "help": ("help", "assist", "support"),
    "bought": ("bought", "purchased", "ordered", "got"),
    "store": ("store", "keep", "hold", "have"),
    "anyone": ("anyone", "anybody", "someone", "somebody"),
    "hello": ("hello", "hi", "hey", "hello there"),
}
# Members that are written but never replaced: elsewhere they mean something else ("at the end of the month",
# "stop sending me newsletters", "I have a new card").
_WRITE_ONLY = frozenset(("end", "stop", "have", "hold", "keep", "get in", "got"))
_FAMILY_OF = {
    word.lower(): family
    for family, words in SYNONYM_FAMILIES.items()
    for word in words
    if word.lower() not in _WRITE_ONLY
}
# Longest first, so "email address" wins over "email" and "personal data" over "data".
_SYNONYM_RE = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(_FAMILY_OF, key=len, reverse=True)) + r")(?![\w-])",
    re.IGNORECASE,
)


def _swap_synonyms(text: str, rng: random.Random, rate: float = 0.5) -> str:
    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        if rng.random() >= rate:
            return word
        choice = rng.choice(SYNONYM_FAMILIES[_FAMILY_OF[word.lower()]])
        if word[0].isupper() and choice[0].islower():
            choice = choice[0].upper() + choice[1:]
        return choice

    return _SYNONYM_RE.sub(swap, text)


# Words customers leave out when they type in a hurry ("where is my order" -> "where order").
_DROPPABLE = frozenset(("the", "a", "an", "my", "to", "is", "do", "can", "you", "please", "for", "of", "it", "i", "me"))
_KEYBOARD_NEIGHBOURS = {
    "a": "sq", "e": "wr", "i": "uo", "o": "ip", "u": "yi", "s": "ad", "r": "et", "t": "ry", "n": "bm", "d": "sf",
    "l": "k", "c": "xv", "m": "n", "p": "o", "h": "gj", "g": "fh",
}


def _typo(word: str, rng: random.Random) -> str:
    pos = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:  # dropped letter
        return word[:pos] + word[pos + 1 :]
    if kind == 1:  # swapped letters
        return word[: pos - 1] + word[pos] + word[pos - 1] + word[pos + 1 :]
    if kind == 2:  # doubled letter
        return word[:pos] + word[pos] + word[pos:]
    near = _KEYBOARD_NEIGHBOURS.get(word[pos].lower())
    return word[:pos] + rng.choice(near) + word[pos + 1 :] if near else word


def _add_noise(text: str, rng: random.Random) -> str:
    """Typing noise: a typo or two, dropped little words, lower case, missing punctuation."""
    words = text.split(" ")
    if len(words) > 3 and rng.random() < 0.15:
        words = [w for w in words if w.lower().strip(",.?!") not in _DROPPABLE or rng.random() < 0.5] or words
    if rng.random() < 0.2:
        for _ in range(rng.choice((1, 1, 2))):
            candidates = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
            if candidates:
                i = rng.choice(candidates)
                words[i] = _typo(words[i], rng)
    text = " ".join(words)
    roll = rng.random()
    if roll < 0.3:
        text = text.lower()
    roll = rng.random()
    if roll < 0.2:
        text = text.rstrip("?.!")
    elif roll < 0.27:
        text = re.sub(r"[?.!,:]", "", text)
    return text


# Paraphrase slots: what a customer wants to do ("cancel my subscription") and what went wrong ("my parcel is
# late"), each put into many sentence frames. Out-of-domain wishes and problems go through the same frames, so
# "how do I ..." or "can you help me ..." says nothing about the topic: only the rest of the question does.
_ACTIONS: dict[str, tuple[str, ...]] = {
    "reset_password": ("reset my password", "change my password", "get a new password", "recover my password"),
    "locked_account": ("unlock my account", "get back into my locked account", "get my account unblocked"),
    "change_email": (
        "change my email address", "update my email", "use a new email address", "edit the email on my account",
    ),
    "two_factor": (
        "turn on two-factor authentication", "set up 2FA", "enable two-step verification", "add login codes to my account",
    ),
    "charged_twice": ("get a double charge fixed", "sort out a duplicate charge", "dispute being charged twice"),
    "update_card": ("update my credit card", "change my payment method", "add a new card", "replace my expired card"),
    "invoice": ("download my invoice", "get a receipt", "find my bills", "get a copy of my invoice"),
    "change_plan": ("upgrade my plan", "downgrade my plan", "switch to the {plan} plan", "change my plan"),
    "where_is_order": (
        "track my order", "find out where my package is", "check my delivery status", "locate my parcel",
    ),
    "damaged_item": (
        "report a damaged item", "report a broken {product}", "get a replacement for a broken {product}",
        "complain about a wrong item",
    ),
    "change_address": (
        "change my delivery address", "update the shipping address", "send my order to a different address",
        "fix the address on my order",
    ),
    "request_refund": ("get a refund", "get my money back", "ask for a refund", "get reimbursed for my {product}"),
    "refund_status": ("check my refund status", "find out when my refund arrives", "see where my refund is"),
    "return_item": ("return my {product}", "send back an item", "get a return label", "return an order"),
    "cancel_subscription": (
        "cancel my subscription", "end my membership", "stop my plan from renewing", "cancel my {plan} plan",
    ),
    "cancel_order": ("cancel my order", "cancel order {order}", "stop an order before it ships", "undo a purchase"),
    "delete_data": ("delete my account", "erase my personal data", "close my account and remove my data"),
    "data_use": ("know what you do with my data", "find out who you share my data with", "understand your privacy policy"),
    "data_export": ("export my data", "download a copy of my personal data", "get all the data you have on me"),
    "marketing_emails": ("stop marketing emails", "unsubscribe from newsletters", "opt out of promotional emails"),
    "human_agent": ("talk to a human", "speak to an agent", "reach a real person", "call customer service"),
    "general_knowledge": (
        "learn to cook", "plan a vacation", "write a cover letter", "fix my car", "book a table at a restaurant",
        "learn {lang}", "get better at {activity}", "lose weight", "train my dog", "learn to draw", "build a website",
        "grow tomatoes", "start a business", "meet new people", "write a {form} about {theme}",
        "understand {subject}", "find a job", "improve my sleep", "choose a new laptop", "fix my wifi",
        "learn about {subject}", "get fit", "speak {country}'s language",
    ),
}
_PROBLEMS: dict[str, tuple[str, ...]] = {
    "reset_password": ("I forgot my password", "my password doesn't work"),
    "locked_account": ("my account is locked", "I'm locked out of my account"),
    "charged_twice": ("I was charged twice", "I see a double charge of {amount}"),
    "update_card": ("my card expired", "my payment was declined"),
    "where_is_order": (
        "my {product} hasn't arrived", "my package is late", "my order {order} is still not here",
        "my delivery never came", "I ordered a {product} {when} and it's still not delivered",
    ),
    "damaged_item": (
        "my {product} arrived broken", "the {product} I got is damaged", "I received the wrong item",
        "my {product} came scratched",
    ),
    "change_address": ("I entered the wrong address", "I moved to a new address"),
    "request_refund": ("I'm not happy with my {product}", "I'm disappointed with the {product} I bought"),
    "refund_status": ("my refund hasn't arrived", "I'm still waiting for my refund"),
    "marketing_emails": ("I get too many newsletters", "your promo emails are spamming me"),
    "human_agent": ("the bot isn't helping", "I need a real person"),
    "general_knowledge": (
        "my dog won't stop barking", "I can't sleep at night", "my plants keep dying", "my car won't start",
        "my computer is slow", "my team lost again", "I failed my exam", "my neighbour is noisy",
        "I have a headache", "my phone battery drains fast", "I'm stuck on a crossword",
    ),
}
_ACTION_FRAMES = (
    "how do I {a}?", "how can I {a}?", "I want to {a}", "I'd like to {a}", "I need to {a}", "can you help me {a}?",
    "please help me {a}", "is it possible to {a}?", "I'm trying to {a}", "what's the way to {a}?", "where can I {a}?",
    "can I {a}?", "help me {a}", "I would like to {a}, please", "what do I do to {a}?", "how to {a}",
    "any idea how to {a}?", "I've been trying to {a} for ages", "tell me how to {a}",
)
_PROBLEM_FRAMES = (
    "{p}", "{p}. what can I do?", "{p}, what now?", "{p}. help!", "{p} and I need help", "hi, {p}",
    "{p}, can you help?", "so {p}...", "{p}. what are my options?", "ugh, {p}", "{p}. what should I do?",
    "hello, {p}. any advice?",
)


def _framed_question(intent: Intent, rng: random.Random) -> str | None:
    """A question built from ``intent``'s paraphrase slots and a sentence frame, or None when it has none."""
    actions, problems = _ACTIONS.get(intent.name, ()), _PROBLEMS.get(intent.name, ())
    if not actions and not problems:
        return None
    if problems and (not actions or rng.random() < 0.4):
        text = rng.choice(_PROBLEM_FRAMES).format(p=rng.choice(problems))
    else:
        text = rng.choice(_ACTION_FRAMES).format(a=rng.choice(actions))
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class Dialogue:
    """One training conversation: ``messages`` alternate user/assistant, optionally after a system message."""

    topics: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, content)
    # Indices of assistant messages that are history only: shown to the model, never trained on (an answer as
    # the console stores it, with personal data cut, or an earlier wrong answer).
    untrained: tuple[int, ...] = ()

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
    """One phrasing of ``intent``'s question: a filled template, synonyms swapped, wrapped, with typing noise."""
    framed = _framed_question(intent, rng) if rng.random() < 0.35 else None
    core = _swap_synonyms(_fill(framed or rng.choice(intent.questions), rng), rng)
    if intent.topic == "greeting":
        return _add_noise(core + rng.choice(("", "", "!", ".", "!!")) if core[-1].isalnum() else core, rng)
    roll = rng.random()
    if intent.topic != "out_of_domain" and roll < 0.15:
        prefix = _fill(rng.choice(_CONTEXTS), rng)
    else:
        prefix = _fill(rng.choice(_PREFIXES), rng)
    suffix = _fill(rng.choice(_SUFFIXES), rng)
    if suffix and core[-1] not in ".?!":
        core += rng.choice((".", "?", ""))
    if prefix and core[:1].isupper() and not core.startswith("I ") and not core.startswith("I'"):
        core = core[0].lower() + core[1:]
    return _add_noise(prefix + core + suffix, rng)


# What the console stores of a text, and sends back as the history of later turns: every PII span is replaced by
# ``<LABEL>`` (console.services.moderation; Presidio labels). The only PII in the corpus answers is the support
# address; in questions, the customers' names.
STORED_ANSWER_REDACTIONS = (("support@example.com", "<EMAIL_ADDRESS>"),)
_NAME_RE = re.compile(r"\b(" + "|".join(_SLOTS["name"]) + r")\b")


def as_stored(text: str, *, question: bool = False) -> str:
    """``text`` as the chat service keeps it for the conversation's history: personal data cut to ``<LABEL>``."""
    for plain, label in STORED_ANSWER_REDACTIONS:
        text = text.replace(plain, label)
    return _NAME_RE.sub("<PERSON>", text) if question else text


def _conversation(
    final: Intent, rng: random.Random, earlier_pool: list[Intent], hello: Intent
) -> tuple[list[tuple[str, str]], list[int], list[Intent]]:
    """A chat-page conversation ending in ``final``: one to three earlier turns on other intents, as stored.

    Returns the messages (no system prompt), the indices (within them) of untrained answers, and the intents.
    """
    n_earlier = rng.choice((1, 1, 2, 2, 3))
    earlier: list[Intent] = [hello] if rng.random() < 0.2 else []
    while len(earlier) < n_earlier:
        intent = rng.choice(earlier_pool)
        if intent.name != final.name and all(intent.name != e.name for e in earlier):
            earlier.append(intent)
    messages: list[tuple[str, str]] = []
    untrained: list[int] = []
    for intent in earlier:
        messages.append(("user", as_stored(phrase_question(intent, rng), question=True)))
        answer = intent.answer
        if rng.random() < 0.1:  # the model answered this one wrongly: its answer stays in the history
            answer = rng.choice([i.answer for i in earlier_pool if i.answer != intent.answer])
        stored = as_stored(answer)
        if stored != intent.answer:
            untrained.append(len(messages))
        messages.append(("assistant", stored))
    messages.append(("user", phrase_question(final, rng)))
    messages.append(("assistant", final.answer))
    return messages, untrained, [*earlier, final]


def build_corpus(
    n_dialogues: int,
    *,
    seed: int = 0,
    system_share: float = 0.25,
    multi_turn_share: float = 0.05,
    conversation_share: float = 0.1,
) -> list[Dialogue]:
    """Write ``n_dialogues`` deterministic support dialogues (same seed, same corpus).

    Every intent is drawn about equally often, out-of-domain refusals included; ``system_share`` of the
    dialogues start with a system prompt, ``multi_turn_share`` have two or three user turns (all answers
    trained), and ``conversation_share`` are chat-page conversations that change topic (see ``_conversation``).
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
        first = _SCHEDULE[index % len(_SCHEDULE)]
        roll = rng.random()
        if first.name != "hello" and roll < conversation_share:
            # The scheduled intent is the one asked last, after a change of topic.
            turns_messages, untrained, turns = _conversation(first, rng, non_greeting, by_name["hello"])
            offset = len(messages)
            messages.extend(turns_messages)
            dialogues.append(Dialogue(tuple(dict.fromkeys(i.topic for i in turns)), tuple(messages),
                                      tuple(offset + u for u in untrained)))
            continue
        turns = [first]
        if first.name not in ("thanks", "goodbye") and roll < conversation_share + multi_turn_share:
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
    """A hash of the templates, answers and augmentation tables, so a build can tell whether its corpus is current."""
    digest = hashlib.sha256(CORPUS_VERSION.encode())
    for intent in INTENTS:
        digest.update(repr((intent.name, intent.topic, intent.questions, intent.answer)).encode())
    digest.update(
        repr(
            (
                _PREFIXES, _CONTEXTS, _SUFFIXES, sorted(_ACTIONS.items()), sorted(_PROBLEMS.items()),
                _ACTION_FRAMES, _PROBLEM_FRAMES, [i.name for i in _SCHEDULE], sorted(SYNONYM_FAMILIES.items()), sorted(_WRITE_ONLY), sorted(_DROPPABLE),
                sorted(_KEYBOARD_NEIGHBOURS.items()), SYSTEM_PROMPTS, sorted(_SLOTS.items()), STORED_ANSWER_REDACTIONS,
            )
        ).encode()
    )
    return digest.hexdigest()[:16]
