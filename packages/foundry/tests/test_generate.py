"""`foundry generate`: greedy decoding equal to transformers' token for token, batches equal to
one prompt at a time, stop sequences, streaming, seeded sampling, prompt files, the chat, and bad
input refused before the weights are read."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys

import pytest
import torch

from foundry.chat import IM_END, IM_START, format_chat
from foundry.cli import main
from foundry.generate import CompletionText, Sampling, generate_ids, generate_texts
from foundry.generate_command import chat
from foundry.tokenizer import load_tokenizer
from mpt import MPTConfig, MPTForCausalLM
from mpt.hf import export_hf, to_hf_model

# untied head and a wide init: a random tiny model whose greedy output varies (a tied one repeats
# its last token), so that equal sequences mean something
SHAPE = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=128, init_std=0.3)
PROMPTS = ["w1 w2 w3 w4 w5 w6", "w7", "w8 w9 w10"]


def tiny_model(vocab_size: int, **overrides) -> MPTForCausalLM:
    torch.manual_seed(0)
    config = MPTConfig(
        **SHAPE, vocab_size=vocab_size, attn_impl="sdpa", tie_word_embeddings=False, **overrides
    )
    return MPTForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models decode faster on one thread (no OpenMP hand-off per small op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tok(tiny_tokenizer):
    return load_tokenizer(tiny_tokenizer)


@pytest.fixture(scope="session")
def model(tok):
    return tiny_model(tok.vocab_size)


@pytest.fixture(scope="session")
def hf_dir(model, tiny_tokenizer, tmp_path_factory):
    """The model as a Hugging Face directory with its tokenizer (a load_path for the command)."""
    out = export_hf(model, None, tmp_path_factory.mktemp("gen") / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer / name, out / name)
    return out


def test_greedy_is_transformers_generate_token_for_token(model):
    hf = to_hf_model(model).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15]]
    free = generate_ids(model, prompts[:1], Sampling(max_new_tokens=12))[0]
    eos = free[5]  # a token row 0 produces: it must stop there, EOS included
    ours = generate_ids(model, prompts, Sampling(max_new_tokens=12), eos_token_ids=[eos])
    assert ours[0] == free[: free.index(eos) + 1]
    assert len(set(map(tuple, ours))) == 3
    for prompt, row in zip(prompts, ours, strict=True):  # transformers one prompt at a time
        ids = torch.tensor([prompt])
        ref = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        assert row == ref[0, len(prompt) :].tolist()


@pytest.mark.parametrize("overrides", [{}, {"alibi": False, "learned_pos_emb": True}])
def test_a_batch_decodes_what_each_prompt_decodes_alone_and_streams_it(tok, overrides):
    model = tiny_model(tok.vocab_size, **overrides)

    def batched(sampling: Sampling) -> tuple[list[str], list[list[str]]]:
        pieces: list[list[str]] = [[] for _ in PROMPTS]
        texts = generate_texts(
            model, tok, PROMPTS, sampling, batch_size=2, on_text=lambda i, p: pieces[i].append(p)
        )
        return texts, pieces

    alone = [generate_texts(model, tok, [p], Sampling(max_new_tokens=10))[0] for p in PROMPTS]
    assert len(set(alone)) == 3 and all(alone)
    texts, pieces = batched(Sampling(max_new_tokens=10))
    assert texts == alone and ["".join(p) for p in pieces] == alone
    assert min(len(p) for p in pieces) > 3  # streamed piece by piece as the tokens decode

    stop = alone[0][4:7]  # a stop sequence inside the first completion
    sampling = Sampling(max_new_tokens=10, stop=(stop, "never there"))
    expected = [generate_texts(model, tok, [p], sampling)[0] for p in PROMPTS]
    assert expected[0] == alone[0][: alone[0].index(stop)]
    texts, pieces = batched(sampling)
    assert texts == expected and ["".join(p) for p in pieces] == expected
    assert not any(stop in text for text in texts)


def test_streamed_text_never_shows_half_a_character_or_half_a_stop(tok):
    ids = tok.encode("w1 café ☕ w2 w3")  # é and ☕ are several byte tokens each
    assert any("\ufffd" in tok.decode(ids[:i]) for i in range(len(ids)))
    for stop, expected in [
        ((), "w1 café ☕ w2 w3"),
        (("☕ w2",), "w1 café "),
        (("w3",), "w1 café ☕ w2 "),
    ]:
        text, pieces = CompletionText(tok.decode, stop), []
        for i, token in enumerate(ids):
            stopped = text.add(token)
            pieces.append(text.settled(final=stopped or i == len(ids) - 1))
            if stopped:
                break
        assert text.text == "".join(pieces) == expected
        assert not any("\ufffd" in p for p in pieces)
        assert len([p for p in pieces if p]) > 3


def test_sampling_is_seeded_and_top_k_1_is_greedy(model, tok):
    def run(**kw):
        return generate_texts(model, tok, PROMPTS[:2], Sampling(max_new_tokens=8, **kw))

    sampled = run(temperature=1.0, top_k=50, top_p=0.95, seed=3)
    assert sampled == run(temperature=1.0, top_k=50, top_p=0.95, seed=3)
    assert sampled != run(temperature=1.0, top_k=50, top_p=0.95, seed=4)
    assert run(temperature=0.7, top_k=1, seed=5) == run()
    with pytest.raises(ValueError, match="top_p must be in"):
        Sampling(top_p=1.5)


def test_prompt_and_prompts_file_through_the_command(hf_dir, model, tok, tmp_path, capsys):
    base = ["generate", f"load_path={hf_dir}", "max_new_tokens=8"]
    assert main([*base, "prompt=w1 w2 w3"]) == 0
    [expected] = generate_texts(model, tok, ["w1 w2 w3"], Sampling(max_new_tokens=8))
    assert capsys.readouterr().out.endswith(expected + "\n")

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n\n" for p in PROMPTS))
    out = tmp_path / "out.jsonl"
    args = [*base, f"prompts_file={prompts}", f"out={out}", "batch_size=2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    one_by_one = [generate_texts(model, tok, [p], Sampling(max_new_tokens=8))[0] for p in PROMPTS]
    assert rows == [
        {"prompt": p, "completion": c} for p, c in zip(PROMPTS, one_by_one, strict=True)
    ]
    out.write_text("mine")
    assert main(args) == 1
    assert f"out={out} exists; pass overwrite=true" in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert main([*args, "overwrite=true"]) == 0 and out.read_text().count("\n") == 3

    text = tmp_path / "prompts.txt"  # one prompt per line, printed as jsonl rows
    text.write_text("w1 w2\nw3\n")
    capsys.readouterr()
    assert main([*base, f"prompts_file={text}"]) == 0
    printed = capsys.readouterr().out.splitlines()[-2:]
    assert [json.loads(line)["prompt"] for line in printed] == ["w1 w2", "w3"]


def test_bad_input_is_refused_before_the_weights_are_read(hf_dir, tmp_path, capsys):
    broken = tmp_path / "no-weights"  # the config and tokenizer, no weights
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, broken / name)
    base = ["generate", f"load_path={broken}"]
    assert main(base) == 2
    assert "exactly one of prompt=..., prompts_file=... or chat=true" in capsys.readouterr().err
    assert main([*base, "prompt=w1", "top_p=2", "out=x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "top_p must be in (0, 1]" in err and "out=x.jsonl is for prompts_file" in err

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "w1"}\n{"text": "w2"}\n')
    assert main([*base, f"prompts_file={prompts}"]) == 1
    assert f"{prompts}:2: expected an object with a string 'prompt'" in capsys.readouterr().err
    prompts.write_text('{"prompt": "w1"}\n' + json.dumps({"prompt": "w5 " * 100}) + "\n")
    assert main([*base, f"prompts_file={prompts}", "max_new_tokens=8"]) == 1
    err = capsys.readouterr().err
    assert f"{prompts}:2: the prompt's" in err and "max_seq_len 128" in err
    prompts.write_text('{"prompt": "w1"}\n')
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main([*base, f"prompts_file={prompts}", f"out={folder}", "overwrite=true"]) == 1
    assert f"out={folder} is a folder" in capsys.readouterr().err
    assert main([*base, "prompt=w1"]) == 1  # everything checked: only now the weights
    assert "no weights in" in capsys.readouterr().err


class Recorder(io.StringIO):
    """stdout that counts its writes (a streamed reply is several)."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _reply(model, tok, messages, new: int) -> str:
    prompt = format_chat(messages, add_generation_prompt=True)
    sampling = Sampling(max_new_tokens=new, stop=(IM_END, IM_START))
    [text] = generate_texts(model, tok, [prompt], sampling, stop_token_ids=tok.encode(IM_END))
    return text


def test_chat_keeps_history_resets_and_streams(model, tok):
    out = Recorder()
    stdin = io.StringIO("w1 w2\nw3 w4\n/reset\nw3 w4\n\n/quit\nnever read\n")
    system = {"role": "system", "content": "w9"}
    messages = chat(model, tok, Sampling(max_new_tokens=6), system="w9", stdin=stdin, stdout=out)
    u1, u2 = ({"role": "user", "content": t} for t in ("w1 w2", "w3 w4"))
    r1 = _reply(model, tok, [system, u1], 6)
    r2 = _reply(model, tok, [system, u1, {"role": "assistant", "content": r1}, u2], 6)
    r3 = _reply(model, tok, [system, u2], 6)
    assert out.getvalue() == f"{r1}\n{r2}\n{r3}\n"
    assert messages == [system, u2, {"role": "assistant", "content": r3}]
    assert out.writes > 6  # pieces as they decode, not one write per reply


def test_a_message_too_long_for_the_window_is_not_sent_and_the_history_stays(model, tok, capsys):
    out = io.StringIO()
    stdin = io.StringIO("w1 w2\nw3 w4\n" + "w5 " * 200 + "\n")
    messages = chat(model, tok, Sampling(max_new_tokens=6), system="w9", stdin=stdin, stdout=out)
    system = {"role": "system", "content": "w9"}
    u1, u2 = ({"role": "user", "content": t} for t in ("w1 w2", "w3 w4"))
    r1 = _reply(model, tok, [system, u1], 6)
    r2 = _reply(model, tok, [system, u1, {"role": "assistant", "content": r1}, u2], 6)
    assert out.getvalue() == f"{r1}\n{r2}\n"
    assert messages == [
        system,
        u1,
        {"role": "assistant", "content": r1},
        u2,
        {"role": "assistant", "content": r2},
    ]
    assert "it was not sent" in capsys.readouterr().err


def test_chat_command_reads_piped_stdin_until_eof(hf_dir, model, tok, monkeypatch, capsys):
    """The command (its main, in this process) with stdin a pipe whose writer has closed."""
    read, write = os.pipe()
    with os.fdopen(write, "w") as writer:
        writer.write("w1 w2\n/reset\nw1 w2\n")
    with os.fdopen(read) as piped:
        assert not piped.isatty()
        monkeypatch.setattr(sys, "stdin", piped)
        code = main(["generate", f"load_path={hf_dir}", "chat=true", "max_new_tokens=6"])
    done = capsys.readouterr()
    assert code == 0, done.err[-2000:]
    reply = _reply(model, tok, [{"role": "user", "content": "w1 w2"}], 6)
    assert done.out.endswith(f"{reply}\n{reply}\n")  # after the config; reset: the same again
    assert "(conversation reset)" in done.err
