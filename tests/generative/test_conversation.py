"""TRL's data set formats: `messages` rendered with the chat template (loss on assistant turns
only) and `prompt`/`completion`, as plain text or chat turns; a job on chat data learns."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from services.trainer.context import Progress
from services.trainer.model_types import resolve
from services.trainer.recipes.generative.data import IGNORE, build_samples, render_prompt
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.predict import predict_generative
from tests.generative.conftest import COLORS, job_context, llm_config, task_frame
from tunewire.errors import FailedPrecondition

# User turns end with "answer :", assistant turns with EOS; the tiny vocabulary knows the words.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }} </s> "
    "{% else %}{{ m['content'] }} answer : {% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def chat_model(tiny_model, tmp_path_factory):
    """The tiny model's folder with a chat template on its tokenizer."""
    import shutil

    out = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


def _config(model, inp: str, out: str, **kw) -> dict:
    cfg = llm_config(
        model,
        input_features=[{"name": inp, "type": "text"}],
        output_features=[{"name": out, "type": "text"}],
        **kw,
    )
    del cfg["prompt"]  # the chat template renders the turns
    return cfg


def _messages_config(model, **kw) -> dict:
    return _config(model, "messages", "messages", **kw)


def _chats(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "messages": [
                [
                    {"role": "user", "content": f"what does {n} like ?"},
                    {"role": "assistant", "content": a},
                ]
                for n, a in zip(df["name"], df["answer"])
            ]
        }
    )


def test_messages_loss_is_on_assistant_turns_only(chat_model):
    tok = AutoTokenizer.from_pretrained(chat_model)
    cfg = resolve(_messages_config(chat_model))
    convo = [
        {"role": "system", "content": "the person"},
        {"role": "user", "content": "what does alba like ?"},
        {"role": "assistant", "content": "red apple"},
        {"role": "user", "content": "what does hugo like ?"},
        {"role": "assistant", "content": "blue fig"},
    ]
    # Chat turns as objects (JSON lines) or as JSON text (a CSV cell) read the same.
    for cell in (convo, json.dumps(convo)):
        (s,) = build_samples(cfg, pd.DataFrame({"messages": [cell]}), tok, 128)
        whole = tok.apply_chat_template(convo, tokenize=False)
        assert s.input_ids == tok(whole, add_special_tokens=False)["input_ids"]
        learned = [t for t in s.labels if t != IGNORE]
        assert tok.decode(learned) == "red apple </s> blue fig </s>"
    assert render_prompt(cfg, {"messages": convo}, tok).endswith("what does hugo like ? answer : ")


def test_prompt_completion_as_text_and_as_chat_turns(chat_model):
    tok = AutoTokenizer.from_pretrained(chat_model)
    plain = resolve(_config(chat_model, "prompt", "completion"))
    df = pd.DataFrame(
        {
            "prompt": [
                "what does alba like ?",
                [{"role": "user", "content": "what does gina like ?"}],
            ],
            "completion": ["red apple", [{"role": "assistant", "content": "lime"}]],
        }
    )
    text, chat = build_samples(plain, df, tok, 128)
    assert tok.decode([t for t in text.labels if t != IGNORE]) == "red apple </s>"
    assert tok.decode([t for t in chat.labels if t != IGNORE]) == "lime </s>"
    assert chat.input_ids == tok("what does gina like ? answer : lime </s>")["input_ids"]


def test_chat_data_without_a_chat_template_fails_clearly(tiny_model, tmp_path):
    ctx, _ = job_context(
        tmp_path, _messages_config(tiny_model), train=_chats(task_frame()), validation=None
    )
    with pytest.raises(FailedPrecondition, match="chat template"):
        run_generative_job(ctx)


def test_a_job_on_messages_learns_and_predicts_the_assistant_answer(chat_model, tmp_path):
    chats = _chats(task_frame())
    raw = _messages_config(
        chat_model, trainer={"epochs": 30, "eval_steps": None, "learning_rate": 0.005}
    )
    ctx, rec = job_context(tmp_path, raw, train=chats, validation=chats, test=chats)
    run_generative_job(ctx)
    losses = [e.loss for e in rec.of(Progress)]
    assert losses[-1] < 0.3 * losses[0]
    # Ludwig's training_statistics.json and TensorBoard logs, read back with tensorboard's reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stats = json.loads((ctx.artifact_dir / "training_statistics.json").read_text())
    assert all(isinstance(v, float) for v in stats["training"]["messages"]["loss"])
    assert stats["test"]["messages"]["token_accuracy"][0] >= 0.0
    board = EventAccumulator(str(ctx.artifact_dir / "logs" / "training")).Reload()
    assert len(board.Scalars("combined/loss")) == len(losses)
    assert {"learning_rate", "throughput/tokens_per_s"} <= set(board.Tags()["scalars"])
    texts, metrics = predict_generative(ctx.artifact_dir, chats.head(6), None)
    # It answers as the assistant turns did: a colour and a fruit, then the end of the turn.
    assert all(len(t.split()) == 2 and t.split()[0] in COLORS for t in texts), texts
    assert {m.name for m in metrics} == {"loss", "perplexity", "token_accuracy"}
