"""`foundry data finetune` and the chat template: labels on responses only (every assistant turn),
ChatML tokens added when missing, packing with `sequence_id` (attention and loss stay inside
each example), too-long examples counted, and bad input named by its file and line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.chat import (
    ChatFormatError,
    check_chat_encodable,
    check_roles,
    ensure_chat_tokens,
    format_chat,
)
from foundry.cli import main
from foundry.compose import compose_config
from foundry.data.finetune_prep import FinetuneDataCommand, prepare_finetune
from foundry.data.loader import lm_collate
from foundry.data.packing import pack
from foundry.data.sft import FinetuneDataError
from foundry.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from streaming import StreamingDataset

WORDS = [f"w{i}" for i in range(3000)]
SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"
EOS, IM_END = "<|endoftext|>", "<|im_end|>"


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prep(out: Path, inputs: list[Path], tokenizer: Path, *overrides: str) -> dict:
    listed = ",".join(str(p) for p in inputs)
    args = [f"inputs=[{listed}]", f"tokenizer={tokenizer}", f"out={out}", "progress=false"]
    cfg = compose_config("data_finetune", [*args, *overrides]).build(FinetuneDataCommand)
    return prepare_finetune(cfg)


def rows_of(out: Path) -> list[dict]:
    ds = StreamingDataset(local=str(out), batch_size=1, shuffle=False)
    return [ds[i] for i in range(ds.num_samples)]


def trained_text(tokenizer, row) -> str:
    ids, labels = row["input_ids"], row["labels"]
    keep = labels != -100
    assert (labels[keep] == ids[keep]).all()  # a label is the token itself (the model shifts)
    return tokenizer.decode(ids[keep].tolist())


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory) -> Path:
    """A 300-token BPE without ChatML tokens."""
    rng = random.Random(3)
    backend = train_bpe(
        [words(rng, 40) for _ in range(100)], vocab_size=300, special_tokens=[EOS, "<|pad|>"]
    )
    out = tmp_path_factory.mktemp("tok") / "plain"
    return save_tokenizer(backend, out, eos_token=EOS, pad_token="<|pad|>")


def test_chat_template_and_role_checks(plain_tokenizer):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert format_chat(chat, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    bad = {
        "message 0 should be 'user'": [{"role": "assistant", "content": "x"}],
        "message 2 should be 'assistant'": chat[:2] + [{"role": "user", "content": "x"}],
        "has role 'bot'": [{"role": "bot", "content": "x"}],
        "content should be a string": [{"role": "user", "content": ["x"]}],
        "contains the template marker": [{"role": "user", "content": "a<|im_end|>b"}],
        "no assistant turn": chat[:2],
    }
    for message, messages in bad.items():
        with pytest.raises(ChatFormatError, match=message):
            check_roles(messages, where="x.jsonl:7")
    with pytest.raises(ChatFormatError, match="after an assistant turn"):
        format_chat(chat[:3], add_generation_prompt=True)
    tokenizer = load_tokenizer(plain_tokenizer)
    with pytest.raises(ChatFormatError, match="cannot encode the chat template"):
        check_chat_encodable(tokenizer)
    assert ensure_chat_tokens(tokenizer) == 2 and ensure_chat_tokens(tokenizer) == 0
    assert tokenizer.vocab_size == 302
    check_chat_encodable(tokenizer)


def test_prompt_response_labels_cover_the_response_and_eos_only(tmp_path, tiny_tokenizer):
    rng = random.Random(0)
    pairs = [{"prompt": words(rng, 4) + " =>", "response": words(rng, 3)} for _ in range(9)]
    pairs.append({"prompt": "", "response": words(rng, 3)})
    report = prep(
        tmp_path / "out",
        [write_jsonl(tmp_path / "p.jsonl", pairs)],
        tiny_tokenizer,
        "packing=false",
        "max_seq_len=128",
    )
    tokenizer = load_tokenizer(tmp_path / "out")
    rows = rows_of(tmp_path / "out")
    assert report["examples"]["kept"] == len(rows) == 10
    assert report["inputs"]["files"] == {str(tmp_path / "p.jsonl"): "prompt_response"}
    for pair, row in zip(pairs[:9], rows, strict=False):
        assert (
            tokenizer.decode(row["input_ids"].tolist()) == pair["prompt"] + pair["response"] + EOS
        )
        assert trained_text(tokenizer, row) == pair["response"] + EOS
    # no prompt: the first token has nothing before it to be predicted from, so no label
    assert rows[9]["labels"][0] == -100 and (rows[9]["labels"][1:] != -100).all()


def test_chat_labels_cover_every_assistant_turn_and_nothing_else(tmp_path, tiny_tokenizer):
    rng = random.Random(1)
    chats = []
    for i in range(6):
        turns = [{"role": "system", "content": words(rng, 3)}] if i % 2 else []
        for _ in range(1 + i % 3):
            turns += [{"role": "user", "content": words(rng, 4)}]
            turns += [{"role": "assistant", "content": words(rng, 5)}]
        chats.append(turns)
    messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": c} for c in chats[:3]])
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    sharegpt = [
        {
            "id": str(i),
            "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in c],
        }
        for i, c in enumerate(chats[3:])
    ]
    (tmp_path / "s.json").write_text(json.dumps(sharegpt, indent=2))
    report = prep(
        tmp_path / "out", [messages, tmp_path / "s.json"], tiny_tokenizer, "packing=false"
    )
    assert report["tokenizer"]["added_chat_tokens"] == 0  # the tiny tokenizer has them
    tokenizer = load_tokenizer(tmp_path / "out")
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 6
    for chat, row in zip(chats, rows, strict=True):
        assert tokenizer.decode(row["input_ids"].tolist()) == format_chat(
            chat, add_generation_prompt=False
        )
        replies = [m["content"] + IM_END for m in chat if m["role"] == "assistant"]
        assert trained_text(tokenizer, row) == "".join(replies)


def test_best_fit_decreasing_packing():
    assert pack([5, 4, 3, 3, 1], 8) == [[0, 2], [1, 3, 4]]
    assert pack([8, 8], 8) == [[0], [1]]
    with pytest.raises(ValueError, match="an example of 9 tokens cannot go into rows of 8"):
        pack([3, 9], 8)


def _segments(row: dict) -> list[tuple[tuple, tuple]]:
    """(input_ids, labels) of each example in a packed row (the padding segment left out)."""
    out = []
    for k in np.unique(row["sequence_id"]):
        at = row["sequence_id"] == k
        if (row["labels"][at] != -100).any():
            out.append((tuple(row["input_ids"][at]), tuple(row["labels"][at])))
    return out


def test_packed_rows_keep_attention_and_loss_inside_each_example(tmp_path, tiny_tokenizer):
    from mpt import MPTConfig, MPTForCausalLM

    rng = random.Random(2)
    pairs = [
        {"prompt": words(rng, rng.randint(1, 6)), "response": words(rng, rng.randint(1, 8))}
        for _ in range(30)
    ]
    data = write_jsonl(tmp_path / "p.jsonl", pairs)
    packed = prep(tmp_path / "packed", [data], tiny_tokenizer, "max_seq_len=64")
    prep(tmp_path / "plain", [data], tiny_tokenizer, "max_seq_len=64", "packing=false")
    rows, plain = rows_of(tmp_path / "packed"), rows_of(tmp_path / "plain")
    assert len(rows) == packed["output"]["rows"] < 30
    assert all(len(r["input_ids"]) == 64 for r in rows)
    tokens = sum(len(r["input_ids"]) for r in plain)
    assert packed["output"]["packing_efficiency"] == round(tokens / (len(rows) * 64), 4)
    segments = [s for r in rows for s in _segments(r)]
    assert sorted(segments) == sorted((tuple(r["input_ids"]), tuple(r["labels"])) for r in plain)

    torch.manual_seed(0)
    config = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=64, vocab_size=640)
    model = MPTForCausalLM(config.replace(attn_impl="sdpa")).eval()
    row = max(rows, key=lambda r: len(_segments(r)))
    batch = lm_collate([row])
    counted = int((batch["labels"][0, 1:] != -100).sum())
    with torch.no_grad():
        whole = model(**batch).loss * counted
        alone = sum(
            model(torch.tensor([ids]).long(), labels=torch.tensor([labels]).long()).loss
            * sum(1 for x in labels[1:] if x != -100)
            for ids, labels in _segments(row)
        )
        crossing = model(batch["input_ids"], labels=batch["labels"]).loss * counted
    assert len(_segments(row)) >= 2
    assert torch.allclose(whole, alone, rtol=1e-5)  # each example as if it were alone
    assert not torch.allclose(crossing, alone, rtol=1e-3)  # without sequence_id they would mix


def test_too_long_examples_are_truncated_or_dropped_and_counted(tmp_path, tiny_tokenizer):
    rng = random.Random(4)
    pairs = [{"prompt": words(rng, 3), "response": words(rng, 3)} for _ in range(4)]
    pairs.append({"prompt": words(rng, 2), "response": words(rng, 60)})  # long response
    pairs.append({"prompt": words(rng, 60), "response": words(rng, 2)})  # long prompt
    data = write_jsonl(tmp_path / "p.jsonl", pairs)
    report = prep(tmp_path / "a", [data], tiny_tokenizer, "max_seq_len=48", "packing=false")
    assert report["examples"] == {
        "kept": 4,
        "truncated": 1,
        "dropped": 1,  # no response token within max_seq_len
        "dropped_examples": [f"{data}:6"],
    }
    rows = rows_of(tmp_path / "a")
    assert len(rows) == 5 and len(rows[4]["input_ids"]) == 48
    assert (rows[4]["labels"] != -100).any()
    report = prep(tmp_path / "b", [data], tiny_tokenizer, "max_seq_len=48", "too_long=drop")
    assert (report["examples"]["truncated"], report["examples"]["dropped"]) == (0, 2)


def test_chat_tokens_are_added_when_the_tokenizer_lacks_them(tmp_path, plain_tokenizer):
    chat = [
        {"messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}]}
    ]
    data = write_jsonl(tmp_path / "c.jsonl", chat)
    report = prep(tmp_path / "out", [data], plain_tokenizer)
    assert report["tokenizer"]["added_chat_tokens"] == 2
    saved = load_tokenizer(tmp_path / "out")  # the data's tokenizer, beside it
    assert saved.vocab_size == 302 and len(saved.encode("<|im_start|>")) == 1
    with pytest.raises(
        ChatFormatError, match="tokenizer=.*cannot encode the chat template.*add_chat_tokens=true"
    ):
        prep(tmp_path / "refused", [data], plain_tokenizer, "add_chat_tokens=false")
    assert not (tmp_path / "refused").exists()


def test_a_template_the_tokenizer_cannot_encode_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, EOS: 1, "w1": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|im_start|>", IM_END])
    words_only = save_tokenizer(backend, tmp_path / "tok", eos_token=EOS, pad_token=None)
    chat = [
        {"messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w1"}]}
    ]
    with pytest.raises(
        ChatFormatError, match="cannot encode the chat template: .* decodes back as"
    ):
        prep(tmp_path / "out", [write_jsonl(tmp_path / "c.jsonl", chat)], words_only)
    assert not (tmp_path / "out").exists()


def test_bad_rows_are_named_by_file_and_line_before_any_work(tmp_path, tiny_tokenizer):
    good = {"prompt": "w1", "response": "w2"}
    pr = tmp_path / "pr.jsonl"
    pr.write_text(
        json.dumps(good)
        + "\n\n"
        + json.dumps({"prompt": "w1"})
        + "\n"
        + json.dumps({"prompt": "w1", "response": 3})
        + "\n{not json\n"
    )
    user, bot = {"from": "human", "value": "w1"}, {"from": "gpt", "value": "w2"}
    elements = [
        {"conversations": [user, bot]},
        {"conversations": [user, user, bot]},  # line 3: roles do not alternate
        {"conversations": [user]},  # line 4: no assistant turn
        {"conversations": [bot, user]},  # line 5: starts with the assistant
    ]
    chat = tmp_path / "chat.json"
    chat.write_text("[\n" + ",\n".join(json.dumps(e) for e in elements) + "\n]\n")
    with pytest.raises(FinetuneDataError) as caught:
        prep(tmp_path / "out", [pr], tiny_tokenizer)
    assert f"{pr}:5: not valid JSON" in str(caught.value)
    pr.write_text(pr.read_text().replace("{not json\n", ""))
    with pytest.raises(FinetuneDataError) as caught:
        prep(tmp_path / "out", [pr, chat], tiny_tokenizer)
    message = str(caught.value)
    assert message.startswith("5 bad example row(s):")
    for expected in (
        f"{pr}:3: missing 'response'",
        f"{pr}:4: 'response' should be a string, got int",
        f"{chat}:3: message 1 should be 'assistant'",
        f"{chat}:4: the conversation has no assistant turn",
        f"{chat}:5: message 0 should be 'user' (the first turn)",
    ):
        assert expected in message
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_report_and_refuses_an_existing_output(tmp_path, tiny_tokenizer, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w1 w2", "response": "w3"}] * 3)
    args = ["data", "finetune", f"inputs=[{data}]", f"tokenizer={tiny_tokenizer}"]
    args += [f"out={tmp_path / 'out'}", "max_seq_len=32", "progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 1 rows (packed)" in out and "packing efficiency" in out
    assert (tmp_path / "out" / "foundry_config.yaml").is_file()
    assert main(args) == 1
    assert "already holds files; pass overwrite=true" in capsys.readouterr().err
    assert main([*args, "overwrite=true"]) == 0


def test_collate_pads_rows_of_different_lengths():
    rows = [
        {"input_ids": np.array([5, 6, 7], np.int32), "labels": np.array([-100, 6, 7], np.int32)},
        {"input_ids": np.array([8, 9], np.int32), "labels": np.array([-100, 9], np.int32)},
    ]
    batch = lm_collate(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    packed = [{**r, "sequence_id": np.zeros(len(r["input_ids"]), np.int32)} for r in rows]
    assert lm_collate(packed)["sequence_id"].tolist() == [[0, 0, 0], [0, 0, 1]]


def test_real_instruction_and_sharegpt_data_with_the_neox_tokenizer(tmp_path, neox_path):
    dolly = SHARED / "sft" / "dolly_hhrlhf_train_small.jsonl"
    subset = tmp_path / "dolly.jsonl"
    subset.write_text("".join(dolly.read_text().splitlines(keepends=True)[:100]))
    conversations = json.loads((SHARED / "chat" / "dummy_conversation.json").read_text())[:100]
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(conversations, indent=2))
    report = prep(
        tmp_path / "sft", [subset, chat], neox_path.parent, "max_seq_len=512", "packing=false"
    )
    counts = report["examples"]
    assert counts["kept"] + counts["truncated"] + counts["dropped"] == 200
    assert report["inputs"]["files"] == {str(subset): "prompt_response", str(chat): "chat"}
    assert report["tokenizer"]["added_chat_tokens"] == 2  # GPT-NeoX-20B has no ChatML tokens
    tokenizer = load_tokenizer(tmp_path / "sft")
    rows = rows_of(tmp_path / "sft")
    assert len(rows) == 200 - counts["dropped"]
    for source, row in zip(conversations, rows[-100:], strict=True):
        replies = [t["value"] + IM_END for t in source["conversations"] if t["from"] == "gpt"]
        assert trained_text(tokenizer, row) == "".join(replies)
