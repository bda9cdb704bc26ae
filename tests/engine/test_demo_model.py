"""The self-built demo model: its corpus, tokenizer and chat template, and the cached, atomic build.

The real v1/v2 recipes train for minutes; these tests train a tiny recipe for a few seconds instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import pytest

from console.services.access import Principal
from engine.demo import (
    DEMO_VERSIONS,
    REFUSAL,
    TOPICS,
    BuildInfo,
    DemoBuildError,
    DemoRecipe,
    build_corpus,
    ensure_demo_model,
    is_complete,
)
from engine.demo.corpus import INTENTS, SYNONYM_FAMILIES, as_stored
from engine.demo.scoring import (
    CONVERSATIONS_FILE,
    DEMO_QUESTIONS,
    HELD_OUT_2,
    HELD_OUT_CHATS,
    HELD_OUT_FILE,
    HELD_OUT_QUESTIONS,
    Conversation,
    DemoQuestion,
    _answer,
    converse,
    judge,
    load_conversations,
    score_model,
)
from engine.demo.tokenizer import CHAT_TEMPLATE, EOS, train_tokenizer
from engine.demo.train import REQUIRED_FILES, _cut_final_answers, _encode_dialogues, _lr_at

TINY = DemoRecipe(
    name="support-demo-test",
    description="a few seconds of training, for tests",
    max_model_len=256,
    n_dialogues=600,
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=1,
    num_heads=1,  # head size 64, as vLLM's CPU backend needs
    max_steps=120,
    batch_size=16,
    lr=1e-2,
    warmup_steps=10,
)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(3000, seed=0)


@pytest.fixture(scope="module")
def v1_corpus():
    """The corpus support-demo-v1 is trained on (a few seconds to write)."""
    v1 = DEMO_VERSIONS["support-demo-v1"]
    return build_corpus(v1.n_dialogues, seed=v1.corpus_seed)


def _user_messages(dialogues, topic=None):
    return [
        content
        for d in dialogues
        for role, content in d.messages
        if role == "user" and (topic is None or topic in d.topics)
    ]


# ---------------------------------------------------------------- corpus


@pytest.mark.parametrize("topic", TOPICS, ids=TOPICS)
def test_corpus_covers_topic_with_many_distinct_phrasings(corpus, topic):
    distinct = set(_user_messages(corpus, topic))
    assert len(distinct) >= 40, f"{topic}: only {len(distinct)} distinct questions"


def test_every_intent_has_at_least_seven_question_templates():
    thin = {i.name: len(i.questions) for i in INTENTS if len(set(i.questions)) < 7}
    assert not thin


def test_out_of_domain_questions_get_the_polite_refusal(corpus):
    refusals = 0
    for dialogue in corpus:
        for (role, _), (next_role, answer) in zip(dialogue.messages, dialogue.messages[1:], strict=False):
            if role == "user" and next_role == "assistant" and answer == REFUSAL:
                refusals += 1
    assert refusals >= len(corpus) // 20
    assert REFUSAL.startswith("I'm sorry, I can only help")


def test_in_domain_answers_never_refuse():
    for intent in INTENTS:
        assert (intent.answer == REFUSAL) == (intent.topic == "out_of_domain"), intent.name


def test_corpus_has_system_prompts_and_multi_turn_dialogues(corpus):
    with_system = sum(1 for d in corpus if d.messages[0][0] == "system")
    multi_turn = sum(1 for d in corpus if len(_user_messages([d])) >= 2)
    assert 0.1 * len(corpus) < with_system < 0.5 * len(corpus)
    assert multi_turn > 0.1 * len(corpus)
    for dialogue in corpus:
        roles = [role for role, _ in dialogue.messages if role != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_corpus_is_deterministic_for_a_seed_and_differs_between_seeds():
    assert build_corpus(200, seed=3) == build_corpus(200, seed=3)
    assert build_corpus(200, seed=3) != build_corpus(200, seed=4)


def test_order_numbers_and_products_are_slot_filled(corpus):
    messages = _user_messages(corpus)
    assert not any("{" in m or "}" in m for m in messages)
    order_numbers = {w.strip("?.,!") for m in messages for w in m.split() if w.strip("#?.,!").isdigit()}
    assert len(order_numbers) > 50


def _mentions(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])", text.lower()) is not None


@pytest.mark.parametrize("family", sorted(SYNONYM_FAMILIES), ids=sorted(SYNONYM_FAMILIES))
def test_corpus_uses_several_words_of_every_synonym_family(v1_corpus, family):
    text = "\n".join(_user_messages(v1_corpus))
    used = [w for w in SYNONYM_FAMILIES[family] if _mentions(text, w)]
    assert len(used) >= max(2, len(SYNONYM_FAMILIES[family]) - 2), f"{family}: only {used}"


# The words customers use for one thing, and the topic whose questions must contain each of them.
SYNONYMS_BY_TOPIC = [
    ("account", ("email", "e-mail", "mail address")),
    ("account", ("log in", "sign in", "login")),
    ("orders", ("package", "parcel", "shipment", "delivery")),
    ("refunds", ("return", "send back", "money back", "reimbursement")),
    ("cancellations", ("cancel", "terminate", "end", "stop")),
    ("billing", ("invoice", "bill", "receipt", "billed", "charged")),
    ("privacy", ("personal data", "personal information", "info", "erase")),
    ("escalation", ("human", "person", "representative")),
]


@pytest.mark.parametrize(("topic", "words"), SYNONYMS_BY_TOPIC, ids=[w[0] for _, w in SYNONYMS_BY_TOPIC])
def test_corpus_phrases_each_topic_with_every_synonym(corpus, topic, words):
    text = "\n".join(_user_messages(corpus, topic))
    assert [w for w in words if not _mentions(text, w)] == []


def test_corpus_has_keyword_only_typo_and_lowercase_questions(corpus):
    messages = _user_messages(corpus)
    assert sum(1 for m in messages if len(m.split()) <= 2) > 0.03 * len(messages)
    assert sum(1 for m in messages if m == m.lower()) > 0.2 * len(messages)
    vocabulary = {w.strip("?.,!").lower() for m in messages for w in m.split()}
    assert {"pasword", "passwrod", "refnud", "reufnd", "orer", "oredr"} & vocabulary  # typo augmentation


@pytest.mark.parametrize(
    "questions", [DEMO_QUESTIONS, HELD_OUT_QUESTIONS, HELD_OUT_2, HELD_OUT_CHATS],
    ids=["dev", "held-out", "held-out-2", "held-out-chats"],
)
@pytest.mark.slow
def test_scoring_questions_are_unseen_phrasings(v1_corpus, questions):
    v2 = DEMO_VERSIONS["support-demo-v2"]
    seen = {m.lower() for m in _user_messages(v1_corpus + build_corpus(v2.n_dialogues, seed=v2.corpus_seed))}
    templates = {q.lower() for intent in INTENTS for q in intent.questions}
    for question in questions:
        assert question.question.lower() not in seen | templates, question.question
    assert Counter(q.topic for q in questions)["out_of_domain"] >= 5
    assert {q.topic for q in questions} >= set(TOPICS) - {"greeting"}


@pytest.mark.parametrize(
    ("topic", "answer", "passed"),
    [
        ("refunds", "You can request a refund within 30 days of purchase.", True),
        ("refunds", REFUSAL, False),
        ("refunds", "You can track your order under My orders.", False),
        ("out_of_domain", REFUSAL, True),
        ("out_of_domain", "Leonardo da Vinci painted it.", False),
    ],
    ids=[
        "refund-answer-passes",
        "refusal-of-in-domain-fails",
        "off-topic-answer-fails",
        "refusal-of-out-of-domain-passes",
        "answering-out-of-domain-fails",
    ],
)
def test_scoring_judges_relevance_and_refusal(topic, answer, passed):
    question = next(q for q in DEMO_QUESTIONS if q.topic == topic)
    assert judge(question, answer) is passed


def test_tuning_conversations_change_topic_at_every_turn_in_unseen_words(v1_corpus):
    conversations = load_conversations()
    assert len(conversations) >= 10
    # A tuning set of its own: nothing of the reported held-out chats is in it.
    reported = {q.question for q in HELD_OUT_CHATS} | {c for q in HELD_OUT_CHATS for _, c in q.history}
    assert CONVERSATIONS_FILE != HELD_OUT_FILE
    assert not reported & {t.question for c in conversations for t in c.turns}
    seen = {m.lower() for m in _user_messages(v1_corpus)} | {q.lower() for i in INTENTS for q in i.questions}
    known_answers = {i.answer for i in INTENTS}
    for conversation in conversations:
        assert len(conversation.turns) >= 3, conversation.id
        for before, after in zip(conversation.turns, conversation.turns[1:], strict=False):
            assert before.keywords != after.keywords, conversation.id
        for turn in conversation.turns:
            assert turn.question.lower() not in seen, turn.question
            if turn.topic != "out_of_domain":
                [answer] = [a for a in known_answers if any(k.lower() in a.lower() for k in turn.keywords)]
                assert judge(turn, answer) and not judge(turn, REFUSAL)


def _completion(text, finish_reason="stop"):
    from types import SimpleNamespace

    return SimpleNamespace(text=text, finish_reason=finish_reason)


REFUND_ANSWER = next(i.answer for i in INTENTS if i.name == "request_refund")


@pytest.mark.parametrize(
    ("text", "finish_reason", "garbled"),
    [
        (REFUND_ANSWER, "stop", False),
        (REFUSAL, "stop", False),
        (REFUND_ANSWER[:40], "length", False),
        (REFUND_ANSWER[:40], "stop", True),
        ("You can change your email address under Settings. We will send a confirmation link to 6pm, and we "
         "will ship a great day!", "stop", True),
        ("You can change your email address under Settings and we will ship a great day", "length", True),
    ],
    ids=["corpus-answer", "refusal", "cut-by-token-limit", "stopped-mid-answer", "mixed-answers",
         "mixed-and-cut"],
)
def test_an_answer_is_garbled_unless_a_corpus_answer_or_one_cut_by_the_token_limit(text, finish_reason, garbled):
    question = next(q for q in HELD_OUT_CHATS if q.topic == "refunds")
    answer = _answer(question, _completion(text, finish_reason), 0.3, 0)
    assert answer.garbled is garbled


class _ScriptedLLM:
    """Stands in for vllm.LLM.chat: answers from a script and keeps every conversation it was sent."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []

    def chat(self, conversations, params, use_tqdm=False):
        self.sent.extend(conversations)
        return [type("Out", (), {"outputs": [_completion(self.answers.pop(0))]})() for _ in conversations]


def test_conversations_are_played_after_the_models_own_answers_as_the_console_stores_them():
    human_agent = next(i.answer for i in INTENTS if i.name == "human_agent")
    turns = (
        DemoQuestion("escalation", "hi, I'm Lena, can I talk to someone?", ("human agent",)),
        DemoQuestion("refunds", "and my money back for the lamp?", ("request a refund",)),
    )
    conversation = Conversation("c", turns, system="Be concise.")
    llm = _ScriptedLLM([human_agent, REFUND_ANSWER])
    report = converse(llm, (conversation,), temperatures=(0.0,))
    assert llm.sent[1] == [
        {"role": "system", "content": "Be concise."},
        {"role": "user", "content": "hi, I'm <PERSON>, can I talk to someone?"},
        {"role": "assistant", "content": human_agent.replace("support@example.com", "<EMAIL_ADDRESS>")},
        {"role": "user", "content": "and my money back for the lamp?"},
    ]
    assert [(a.passed, a.multi_turn, a.garbled) for a in report.answers] == [(True, False, False), (True, True, False)]


@pytest.mark.slow
def test_stored_answers_are_what_the_pii_scanner_cuts():
    from engine.safety.pii import PiiConfig, PresidioScanner, redact

    scanner = PresidioScanner(PiiConfig())
    for answer in {i.answer for i in INTENTS}:
        assert as_stored(answer) == redact(answer, [f for f in scanner.scan(answer) if f.has_span]), answer


# ---------------------------------------------------------------- tokenizer and template


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer([c for d in corpus for _, c in d.messages], vocab_size=512)


@pytest.mark.parametrize(
    "text",
    [
        "Where is my order #482913? It's late.",
        "I'm sorry, I can only help with questions about your account, billing, orders, refunds, cancellations and privacy.",
        "Überweisung für 3 Bestellungen – ça marche? 😀",
        "  spaces\tand\nnewlines  ",
    ],
    ids=["order", "refusal", "unicode", "whitespace"],
)
def test_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_chat_template_renders_system_user_and_assistant_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Be concise."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Where is my order?"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert rendered == (
        "<s><|system|>\nBe concise.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nWhere is my order?<|end|>\n<|assistant|>\n"
    )
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    for special in ("<s>", "<|system|>", "<|user|>", "<|assistant|>", EOS):
        assert tokenizer.convert_tokens_to_ids(special) in ids


def test_loss_is_masked_to_assistant_replies(tokenizer, corpus):
    dialogue = next(d for d in corpus if len(d.messages) >= 5 and not d.untrained)
    ids, labels = _encode_dialogues(tokenizer, [dialogue], 512)
    trained = tokenizer.decode([t for t in labels[0] if t != -100])
    replies = [content + EOS for role, content in dialogue.messages if role == "assistant"]
    assert trained == "".join(replies)
    assert len(ids[0]) == len(labels[0])


def _topic_change_conversations(dialogues):
    """Dialogues of two or more earlier turns whose last question is about something none of them was."""
    found = []
    for d in dialogues:
        answers = [c for role, c in d.messages if role == "assistant"]
        if len(answers) >= 3 and d.messages[-2][0] == "user" and answers[-1] not in answers[:-1]:
            found.append(d)
    return found


def test_corpus_has_topic_change_conversations_in_the_form_the_chat_service_sends(tokenizer, corpus):
    from engine.types import ChatMessage

    conversations = _topic_change_conversations(corpus)
    assert len(conversations) > 0.04 * len(corpus)
    human_agent = next(i.answer for i in INTENTS if i.name == "human_agent")
    stored_agent = human_agent.replace("support@example.com", "<EMAIL_ADDRESS>")
    histories = [c for d in conversations for role, c in d.messages[:-2] if role != "system"]
    # Earlier turns as the console stores them: the support address and customers' names cut to <LABEL>.
    assert stored_agent in histories and any("<PERSON>" in c for c in histories)
    assert sum(1 for d in conversations if d.messages[0][0] == "system") > 0.1 * len(conversations)
    for dialogue in conversations[:50]:
        *history, (_, answer) = dialogue.messages
        # What EngineHost.stream_chat renders from the service's ChatMessage history and the new prompt.
        sent = [ChatMessage(role, content).as_dict() for role, content in history]
        prompt = tokenizer.apply_chat_template(sent, tokenize=False, add_generation_prompt=True)
        assert tokenizer.apply_chat_template(dialogue.as_chat(), tokenize=False) == prompt + answer + EOS + "\n"
        # The loss never teaches a stored (redacted) or wrong earlier answer, always the last one.
        ids, labels = _encode_dialogues(tokenizer, [dialogue], 1024)
        trained = tokenizer.decode([t for t in labels[0] if t != -100])
        assert trained.endswith(answer + EOS) and "<EMAIL_ADDRESS>" not in trained
    for dialogue in corpus:
        for index in dialogue.untrained:
            assert dialogue.messages[index][0] == "assistant"
        final = dialogue.messages[-1]
        assert final[0] == "assistant" and len(dialogue.messages) - 1 not in dialogue.untrained
        assert "<EMAIL_ADDRESS>" not in final[1]


def test_cut_final_answers_keeps_the_question_and_the_first_answer_tokens(tokenizer, corpus):
    dialogues = [d for d in corpus if len(d.messages) >= 4][:20]
    ids, labels = _encode_dialogues(tokenizer, dialogues, 512)
    assistant_id = tokenizer.convert_tokens_to_ids("<|assistant|>")
    cut_ids, cut_labels = _cut_final_answers(ids, labels, assistant_id, share=1.0, keep=3, seed=0)
    for full, cut, lab in zip(ids, cut_ids, cut_labels, strict=True):
        last = len(full) - 1 - full[::-1].index(assistant_id)
        assert cut == full[: last + 5]
        assert (
            len([t for t in lab[last:] if t != -100]) == 3
        )  # the "\n" after <|assistant|> is not trained on
    assert _cut_final_answers(ids, labels, assistant_id, share=0.0, keep=3, seed=0) == (ids, labels)


# ---------------------------------------------------------------- building and caching


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("models")
    calls: list[tuple[str, float]] = []
    path = ensure_demo_model(models_dir, TINY.name, recipe=TINY, progress=lambda m, f: calls.append((m, f)))
    return models_dir, path, calls


@pytest.mark.slow
def test_short_training_run_lowers_the_loss(built):
    _, path, _ = built
    info = BuildInfo.read(path)
    assert info is not None
    assert info.steps > 0
    assert info.final_loss < info.first_loss * 0.7


@pytest.mark.slow
def test_built_directory_is_complete_and_vllm_loadable_in_shape(built):
    models_dir, path, calls = built
    assert path == models_dir / TINY.name
    for name in REQUIRED_FILES:
        assert (path / name).is_file(), name
    assert is_complete(path, TINY)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    tokenizer_json = json.loads((path / "tokenizer.json").read_text())
    end_id = next(t["id"] for t in tokenizer_json["added_tokens"] if t["content"] == EOS)
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == end_id
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert calls[-1] == ("done", 1.0)
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions)
    # Nothing but the finished model (and the build lock) is left in the models directory.
    assert sorted(p.name for p in models_dir.iterdir()) == sorted([TINY.name, f".{TINY.name}.lock"])


@pytest.mark.slow
def test_ensure_demo_model_reuses_a_complete_build_without_retraining(built):
    models_dir, path, _ = built
    before = (path / "model.safetensors").stat().st_mtime_ns, (path / "build_info.json").read_text()
    calls: list[tuple[str, float]] = []
    again = ensure_demo_model(models_dir, TINY.name, recipe=TINY, progress=lambda m, f: calls.append((m, f)))
    assert again == path
    assert calls == []
    assert ((path / "model.safetensors").stat().st_mtime_ns, (path / "build_info.json").read_text()) == before


@pytest.mark.slow
def test_build_from_another_recipe_is_rebuilt(tmp_path):
    first = dataclasses.replace(TINY, max_steps=3)
    ensure_demo_model(tmp_path, TINY.name, recipe=first)
    second = dataclasses.replace(first, max_steps=4)
    assert not is_complete(tmp_path / TINY.name, second)
    path = ensure_demo_model(tmp_path, TINY.name, recipe=second)
    info = BuildInfo.read(path)
    assert info is not None and info.steps == 4 and info.fingerprint == second.fingerprint()


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_interrupted_build_leaves_no_complete_looking_directory(tmp_path):
    def interrupt(message: str, fraction: float) -> None:
        # "saving" always comes (a step report may not, when a loaded machine hits the time budget first).
        if "saving" in message:
            raise _Interrupted(message)

    recipe = dataclasses.replace(TINY, max_steps=60)
    with pytest.raises(_Interrupted):
        ensure_demo_model(tmp_path, TINY.name, recipe=recipe, progress=interrupt)
    assert not (tmp_path / TINY.name).exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".{TINY.name}.lock"]


@pytest.mark.slow
def test_partial_directory_without_build_info_is_not_taken_as_complete(tmp_path):
    partial = tmp_path / TINY.name
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    recipe = dataclasses.replace(TINY, max_steps=2)
    assert not is_complete(partial, recipe)
    path = ensure_demo_model(tmp_path, TINY.name, recipe=recipe)
    assert is_complete(path, recipe)
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"


def test_unknown_demo_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(DemoBuildError, match="unknown demo model 'support-demo-v9'"):
        ensure_demo_model(tmp_path, "support-demo-v9")


def test_demo_versions_are_two_differently_trained_vllm_compatible_models():
    v1, v2 = DEMO_VERSIONS["support-demo-v1"], DEMO_VERSIONS["support-demo-v2"]
    assert v1.fingerprint() != v2.fingerprint()
    for recipe in (v1, v2):
        assert recipe.head_size == 64
        assert recipe.max_model_len in (512, 1024)
    # v2 is the "better" version on every machine: more training steps, never fewer, and no time box at all.
    assert v2.max_steps >= 2 * v1.max_steps and v2.hidden_size >= v1.hidden_size
    assert not any("time" in field.name for field in dataclasses.fields(DemoRecipe))


def test_held_out_chats_hold_support_off_topic_and_multi_turn_questions():
    topics = Counter(q.topic for q in HELD_OUT_CHATS)
    assert topics["out_of_domain"] >= 10 and sum(topics.values()) - topics["out_of_domain"] >= 27
    assert sum(1 for q in HELD_OUT_CHATS if any(role == "assistant" for role, _ in q.history)) >= 5
    known_answers = {i.answer for i in INTENTS}
    for q in HELD_OUT_CHATS:
        # Every support question's keywords name exactly one corpus answer: a neighbouring answer fails.
        if q.topic != "out_of_domain":
            assert len([a for a in known_answers if any(k.lower() in a.lower() for k in q.keywords)]) >= 1, q
            assert judge(q, REFUSAL) is False


# ---------------------------------------------------------------- step-based training


def test_learning_rate_schedule_depends_on_steps_only():
    recipe = dataclasses.replace(TINY, max_steps=100, warmup_steps=10)
    assert _lr_at(recipe, 0) == pytest.approx(recipe.lr / 10)
    assert _lr_at(recipe, 10) == pytest.approx(recipe.lr)
    assert _lr_at(recipe, 100) == pytest.approx(recipe.lr * recipe.min_lr_ratio)
    lrs = [_lr_at(recipe, s) for s in range(10, 101)]
    assert lrs == sorted(lrs, reverse=True)


class _SlowClock:
    """A monotonic clock on which every reading is 10 minutes after the previous: a very slow machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 600.0
        return self.now


@pytest.mark.slow
def test_training_runs_the_same_steps_and_weights_however_slow_the_machine(tmp_path, monkeypatch):
    import engine.demo.train as train_module

    recipe = dataclasses.replace(TINY, max_steps=12)
    fast = ensure_demo_model(tmp_path / "fast", TINY.name, recipe=recipe)
    monkeypatch.setattr(train_module, "_clock", _SlowClock())
    slow = ensure_demo_model(tmp_path / "slow", TINY.name, recipe=recipe)
    fast_info, slow_info = BuildInfo.read(fast), BuildInfo.read(slow)
    assert fast_info is not None and slow_info is not None
    assert fast_info.steps == slow_info.steps == 12
    assert slow_info.train_seconds >= 600  # the slow clock was really used, and did not cut the training
    assert (fast_info.first_loss, fast_info.final_loss) == (slow_info.first_loss, slow_info.final_loss)
    assert (fast / "model.safetensors").read_bytes() == (slow / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_built_model_loads_in_vllm_and_its_answers_stop_at_the_end_token(built):
    _, path, _ = built
    report = score_model(path, temperatures=(0.0,), max_model_len=TINY.max_model_len, kv_cache_gib=0.25)
    assert [a.question for a in report.answers] == [q.question for q in DEMO_QUESTIONS]
    for answer in report.answers:
        assert "<|end|>" not in answer.answer and "<|assistant|>" not in answer.answer
    # generation_config.json names <|end|> as eos, so vLLM stops there instead of running to max_tokens.
    assert any(a.finished for a in report.answers)


# ---------------------------------------------------------------- background build of the later demo versions

# Two tiny stand-ins for support-demo-v1 and -v2 (a few training steps each), so nothing here trains a real model.
BG_RECIPES = {
    name: dataclasses.replace(TINY, name=name, max_steps=steps, n_dialogues=200, seed=seed)
    for name, steps, seed in (("bg-demo-v1", 3, 0), ("bg-demo-v2", 4, 1))
}


def _admin(make_user):
    return make_user("root", "admin")


@pytest.mark.slow
def test_init_path_builds_the_first_version_and_leaves_the_rest_pending(ctx):
    from console.services import demo_builds

    assert demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v1"], recipes=BG_RECIPES) == ["bg-demo-v1"]
    assert demo_builds.pending_demo_versions(ctx, BG_RECIPES) == ["bg-demo-v2"]
    assert not (ctx.settings.models_dir / "bg-demo-v2").exists()
    assert demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES) == []  # nothing is building: no status, no row


@pytest.mark.slow
def test_a_demo_version_shows_as_building_with_progress_and_then_as_registered(ctx, make_user):
    from console.services import demo_builds, registry

    admin = _admin(make_user)
    demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v1"], recipes=BG_RECIPES)
    seen: list[list[demo_builds.DemoBuildView]] = []

    def look(message: str, fraction: float) -> None:
        if message.startswith("training bg-demo-v2: step"):
            seen.append(demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES))
            assert "bg-demo-v2" not in {v.name for v in registry.list_versions(ctx, admin)}

    assert demo_builds.ensure_demo_versions(ctx, look, names=["bg-demo-v2"], recipes=BG_RECIPES) == ["bg-demo-v2"]
    assert seen, "no training step was reported"
    [first] = seen[0]
    assert (first.name, first.state) == ("bg-demo-v2", "building")
    assert 0 < first.fraction < 1 and "step" in first.message and "of 4" in first.message
    assert [s[0].fraction for s in seen] == sorted(s[0].fraction for s in seen)
    assert demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES) == []
    versions = {v.name: v for v in registry.list_versions(ctx, admin)}
    assert versions["bg-demo-v2"].source == str(ctx.settings.models_dir / "bg-demo-v2")
    assert not (ctx.settings.models_dir / ".bg-demo-v2.status.json").exists()


@pytest.mark.slow
def test_a_failed_background_build_says_so(ctx, monkeypatch):
    from console.services import demo_builds
    from engine.demo import train

    demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v1"], recipes=BG_RECIPES)

    def broken(*args, **kwargs):
        raise DemoBuildError("disk full")

    monkeypatch.setattr(train, "train_demo_model", broken)
    with pytest.raises(DemoBuildError):
        demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v2"], recipes=BG_RECIPES)
    [view] = demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES)
    assert (view.name, view.state) == ("bg-demo-v2", "failed") and "disk full" in view.message


_CHILD = """
import json, os, sys
from console.services import demo_builds
from console.services.context import AppContext
from console.settings import Settings
from db.config import DbConfig
from db.database import Database
from tests.engine.test_demo_model import BG_RECIPES

env, gate = json.loads(sys.argv[1]), sys.argv[2]
with open(gate) as handle:  # blocks until the test opens the gate for writing
    handle.read()
settings = Settings.from_env(env)
ctx = AppContext(settings, Database(DbConfig(url=settings.database_url)))
demo_builds.build_pending_demo_versions(ctx, recipes=BG_RECIPES)  # what `llm-console build-demo-models` runs
"""


@pytest.mark.slow
def test_run_starts_a_background_child_that_builds_and_registers_the_pending_version(ctx, make_user, tmp_path):
    import os
    import sys

    from console.services import demo_builds, registry
    from tests.conftest import console_env

    admin = _admin(make_user)
    assert demo_builds.start_background_demo_build(ctx, ["false"], BG_RECIPES) == []  # v1 not built: no child
    demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v1"], recipes=BG_RECIPES)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    command = [sys.executable, "-c", _CHILD, json.dumps(console_env(tmp_path)), str(gate)]
    assert demo_builds.start_background_demo_build(ctx, command, BG_RECIPES) == ["bg-demo-v2"]
    [view] = demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES)
    assert (view.name, view.state, view.fraction) == ("bg-demo-v2", "building", 0.0)
    # A second console start while the child is alive does not start another build.
    assert demo_builds.start_background_demo_build(ctx, command, BG_RECIPES) == []
    with open(gate, "w") as handle:  # let the child run
        handle.write("go")
    _, status = os.waitpid(view.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (ctx.settings.data_dir / demo_builds.BUILD_LOG).read_text()
    assert demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES) == []
    assert "bg-demo-v2" in {v.name for v in registry.list_versions(ctx, admin)}
    assert demo_builds.start_background_demo_build(ctx, command, BG_RECIPES) == []  # nothing left to build


def test_run_builds_nothing_when_init_skipped_the_demo_models_or_never_said(ctx):
    from console.services import demo_builds

    assert demo_builds.demo_models_wanted(ctx) is None  # an installation from before init recorded it
    assert demo_builds.start_background_demo_build(ctx, ["false"], BG_RECIPES) == []
    assert demo_builds.record_demo_models(ctx, wanted=False, by="init") is True
    assert demo_builds.demo_models_wanted(ctx) is False
    assert demo_builds.start_background_demo_build(ctx, ["false"], BG_RECIPES) == []
    assert demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES) == []  # no status file: nothing shows as building


def test_recording_the_same_answer_again_changes_and_audits_nothing(ctx):
    from console.services import demo_builds
    from db import audit as audit_q

    assert demo_builds.record_demo_models(ctx, wanted=True, by="init") is True
    assert demo_builds.record_demo_models(ctx, wanted=True, by="init") is False
    with ctx.db.session() as s:
        events = [e.details for e in audit_q.iter_events(s, action="state.set")]
    assert events == [{"key": "demo_models", "before": None, "after": "wanted"}]


@pytest.mark.slow
def test_run_builds_every_wanted_demo_version_in_the_background_and_serves_the_first(ctx, make_user, tmp_path):
    import os
    import sys

    from console.services import demo_builds, registry, serving
    from tests.conftest import console_env

    admin = _admin(make_user)
    ctx.settings = dataclasses.replace(ctx.settings, default_model="bg-demo-v1")
    demo_builds.record_demo_models(ctx, wanted=True, by="init")  # `llm-console init` without flags
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    env = console_env(tmp_path, LLM_CONSOLE_DEFAULT_MODEL="bg-demo-v1")
    command = [sys.executable, "-c", _CHILD, json.dumps(env), str(gate)]
    assert demo_builds.start_background_demo_build(ctx, command, BG_RECIPES) == ["bg-demo-v1", "bg-demo-v2"]
    views = demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES)
    assert [(v.name, v.state) for v in views] == [("bg-demo-v1", "building"), ("bg-demo-v2", "building")]
    assert views[0].log == ctx.settings.data_dir / demo_builds.BUILD_LOG
    with open(gate, "w") as handle:  # let the child run
        handle.write("go")
    _, status = os.waitpid(views[0].pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (ctx.settings.data_dir / demo_builds.BUILD_LOG).read_text()
    assert demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES) == []
    assert {"bg-demo-v1", "bg-demo-v2"} <= {v.name for v in registry.list_versions(ctx, admin)}
    desired = serving.desired_state(ctx)
    assert (desired.version, desired.move_id is not None) == ("bg-demo-v1", True)  # the child gave it production


@pytest.mark.slow
def test_the_build_serves_the_first_version_before_training_the_next_at_a_lower_priority(ctx, monkeypatch):
    import os

    from console.services import demo_builds, serving
    from db import model_versions as versions_q

    ctx.settings = dataclasses.replace(ctx.settings, default_model="bg-demo-v1")
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(os, "nice", lambda increment: events.append(("nice", increment)) or 0)

    def production() -> str | None:
        with ctx.db.session(readonly=True) as s:
            holder = versions_q.version_for_alias(s, "production")
            return None if holder is None else holder.name

    def progress(message: str, fraction: float) -> None:
        if message.startswith("training bg-demo-v2: step"):
            events.append(("training v2", production()))
        elif message.startswith("training bg-demo-v1: step"):
            events.append(("training v1", None))

    assert demo_builds.build_pending_demo_versions(ctx, progress, recipes=BG_RECIPES) == ["bg-demo-v1", "bg-demo-v2"]
    v1_steps = [e for e in events if e[0] == "training v1"]
    assert v1_steps and events.index(v1_steps[-1]) < events.index(("nice", demo_builds.BACKGROUND_NICENESS))
    assert events.count(("nice", demo_builds.BACKGROUND_NICENESS)) == 1  # lowered once, after v1, before v2
    v2_steps = [e for e in events if e[0] == "training v2"]
    assert v2_steps and events.index(v2_steps[0]) > events.index(("nice", demo_builds.BACKGROUND_NICENESS))
    assert {who for _, who in v2_steps} == {"bg-demo-v1"}  # production already held by v1 while v2 trained
    assert serving.desired_state(ctx).move_id is not None


@pytest.mark.slow
def test_a_build_whose_process_is_gone_shows_as_interrupted(ctx):
    from console.services import demo_builds

    demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v1"], recipes=BG_RECIPES)
    status = ctx.settings.models_dir / ".bg-demo-v2.status.json"
    status.write_text(json.dumps({"name": "bg-demo-v2", "state": "building", "fraction": 0.5,
                                  "message": "training", "pid": 2**22 + 12345, "started_at": 0}))
    [view] = demo_builds.demo_build_status(ctx, Principal.shell(ctx), BG_RECIPES)
    assert (view.state, view.fraction) == ("interrupted", 0.5)


@pytest.mark.slow
def test_models_page_shows_the_building_version_with_its_progress(tmp_path, monkeypatch, ctx, make_user):
    import os

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from console import app_pages
    from console.services import demo_builds
    from console.ui import UiSession
    from tests.conftest import console_env

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    monkeypatch.setattr(demo_builds, "_demo_recipes", lambda recipes: recipes or BG_RECIPES)
    demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v1"], recipes=BG_RECIPES)
    (ctx.settings.models_dir / ".bg-demo-v2.status.json").write_text(json.dumps({
        "name": "bg-demo-v2", "state": "building", "fraction": 0.42, "pid": os.getpid(), "started_at": 0,
        "message": "training bg-demo-v2: step 500 of 1200, loss 0.100"}))
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["models"][3]), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=_admin(make_user))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [bar] = at.get("progress")
    assert "bg\\-demo\\-v2" in bar.proto.text and "building" in bar.proto.text and "step 500 of 1200" in bar.proto.text
    assert bar.proto.value == 42
    assert list(at.dataframe[0].value["name"]) == ["bg-demo-v1"]

    demo_builds.ensure_demo_versions(ctx, names=["bg-demo-v2"], recipes=BG_RECIPES)  # the build finishes
    at.run()
    assert not at.exception
    assert at.get("progress") == []
    assert sorted(at.dataframe[0].value["name"]) == ["bg-demo-v1", "bg-demo-v2"]
    st.cache_resource.clear()
