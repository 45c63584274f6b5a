"""Synthetic tasks: pure and seeded, lengths and depths as asked, answers recoverable from the prompt (and, for the
instruction QA, true of the play), scorer and teacher-forced exact-match identities, answer-only masks."""

import re
from collections import Counter

import numpy as np
import pytest
import torch

from replicate.data import corpora, synthetic as S, tokenizer

LENGTH_TASKS = ("passkey", *S.RULER_NO_QA)
TEXT_HAYSTACK = {"passkey", "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
                 "niah_multivalue", "niah_multiquery", "variable_tracking"}
NEEDLE = re.compile(r"The special magic (?:number|uuid) for (\S+) is (\w+)\.")


@pytest.fixture(scope="module")
def bpe():
    return tokenizer.bpe_from_texts([d.text for d in corpora.shakespeare()[:6]], 1024)


@pytest.fixture(scope="module")
def byte_tok():
    return tokenizer.bpe_from_texts(["x"], 257)  # bytes only, no merges: the smoke-scale "byte vocabulary"


def _count(tok, text):
    return len(text) if tok is None else len(tok.encode(text).ids)


def _all_tasks(tok, length=512):
    out = [S.make(t, 3, i, length, tokenizer=tok) for t in LENGTH_TASKS for i in range(2)]
    return out + [S.make(f"qa_{k}", 3, i) for k in S.QA_KINDS for i in range(4)]


# -------------------------------------------------------------------------------------------------- purity


def test_same_arguments_same_sample_other_index_or_seed_another(bpe):
    for t in LENGTH_TASKS:
        a = S.make(t, 0, 5, 400, tokenizer=bpe)
        assert a == S.make(t, 0, 5, 400, tokenizer=bpe)
        assert a.prompt != S.make(t, 0, 6, 400, tokenizer=bpe).prompt
        assert a.prompt != S.make(t, 1, 5, 400, tokenizer=bpe).prompt
    for k in S.QA_KINDS:
        a = S.instruction_qa(0, 5, kind=k)
        assert a == S.instruction_qa(0, 5, kind=k) and a != S.instruction_qa(0, 6, kind=k)
    assert S.samples("niah_single_2", 0, 3, 300) == [S.make("niah_single_2", 0, i, 300) for i in range(3)]


def test_a_sample_keeps_its_needle_across_lengths_and_depths(bpe):
    cells = [S.niah(7, 2, n, d, tokenizer=bpe) for n in (256, 512) for d in (0.0, 0.5, 1.0)]
    assert len({(s.answer, s.needles) for s in cells}) == 1
    assert len({s.source for s in cells}) == 1  # the haystack starts at the same line


# --------------------------------------------------------------------------------------- lengths and depths


@pytest.mark.parametrize("tok_name", ["bpe", "bytes", "chars"])
def test_prompt_length_is_what_was_asked(tok_name, bpe, byte_tok):
    tok = {"bpe": bpe, "bytes": byte_tok, "chars": None}[tok_name]
    for t in LENGTH_TASKS:
        for length in (700, 1000):
            for i in range(2):
                s = S.make(t, 1, i, length, tokenizer=tok)
                n = _count(tok, s.prompt)
                assert s.n_tokens == n and s.unit == ("chars" if tok is None else "tokens")
                if t in TEXT_HAYSTACK:
                    tol = S.LENGTH_TOLERANCE
                elif t.startswith("niah_multikey"):  # a haystack of whole needles: one needle line short at most
                    tol = max(_count(tok, x + "\n") for x in _needle_lines(s.prompt))
                else:  # word lists: one word (with its space) short at most
                    tol = max(_count(tok, " " + w) for w in s.prompt.split("\n")[1].split())
                assert length - tol <= n <= length, (t, length, n)


def _needle_lines(prompt):
    return [m.group(0) for m in NEEDLE.finditer(prompt)]


@pytest.mark.parametrize("task,kw", [("passkey", {}), ("niah", {"haystack": "corpus"}),
                                     ("niah", {"haystack": "filler"}), ("niah", {"haystack": "needles"})])
def test_needle_goes_in_at_the_asked_depth(task, kw, bpe):
    for depth in np.linspace(0, 1, 11):
        s = S.make(task, 0, 4, 600, float(depth), tokenizer=bpe, **kw)
        gold = next(x for x in s.needles if s.values[0] in x)
        real = s.depths[s.needles.index(gold)]
        assert abs(real - depth) <= 0.05, (task, kw, depth, real)
        if depth in (0.0, 1.0):
            assert real == depth
        # independent check on the prompt itself: haystack tokens before the needle over all haystack tokens
        head, rest = s.prompt.split("\n", 1)
        hay = rest[: rest.rindex("\n")]
        at = hay.index(gold)
        before, after = _count(bpe, hay[:at]), _count(bpe, hay[at + len(gold):])
        assert abs(before / (before + after) - depth) <= 0.06, (task, kw, depth)


# ------------------------------------------------------------------------------- answers from the prompt


def test_passkey_is_in_the_haystack_once_and_is_the_answer(bpe):
    for haystack in ("filler", "corpus"):
        for i in range(5):
            s = S.passkey(2, i, 500, tokenizer=bpe, haystack=haystack)
            found = re.findall(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", s.prompt)
            assert found == [s.answer.strip()] and s.prompt.count(s.needles[0]) == 1
            assert s.prompt.endswith("What is the pass key? The pass key is")


@pytest.mark.parametrize("task", list(S.RULER_NIAH))
def test_niah_answer_is_recoverable_from_the_prompt(task, bpe):
    for i in range(4):
        s = S.make(task, 5, i, 800, tokenizer=bpe)
        body, question = s.prompt.rsplit("\n", 1)
        by_key: dict[str, list[str]] = {}
        for k, v in NEEDLE.findall(body):
            by_key.setdefault(k, []).append(v)
        asked = re.match(r"What (?:is|are all) the special magic \w+ for (.+?)\?", question).group(1)
        asked = re.split(r", | and ", asked)
        assert tuple(v for k in asked for v in by_key[k]) == s.values
        assert s.answer == " " + ", ".join(s.values)
        for k in asked:  # the needles asked about are each in the prompt exactly once
            for v in by_key[k]:
                assert body.count(f"for {k} is {v}.") == 1 and body.count(v) == 1
        expect = {"niah_multivalue": 4, "niah_multiquery": 4}.get(task, 1)
        assert len(s.values) == expect
        if task in ("niah_multikey_2", "niah_multikey_3"):
            assert len(by_key) > 10  # a haystack of needles
        if task == "niah_multikey_1":
            assert len(by_key) == 4


def test_variable_tracking_answer_follows_the_chains(bpe):
    for i in range(5):
        s = S.variable_tracking(0, i, 700, tokenizer=bpe, n_chains=2, n_hops=3)
        value = re.search(r"assigned the value (\d+) in the text above", s.prompt).group(1)
        env: dict[str, str] = {}
        for name, rhs in re.findall(r"VAR (\w+) = (\w+)\.", s.prompt):
            env[name] = env.get(rhs, rhs)
        holders = tuple(n for n, v in env.items() if v == value)
        assert holders == s.values and len(holders) == 4 and len(env) == 8


def test_word_extraction_answers_are_the_most_common_words(bpe):
    for i in range(4):
        s = S.common_words(0, i, 600, tokenizer=bpe)
        words = s.prompt.split("\n")[1].split()
        c = Counter(words)
        assert set(s.values) == {w for w, _ in c.most_common(5)} and len(s.values) == 5
        assert min(c[w] for w in s.values) > max(x for w, x in c.items() if w not in s.values)
        f = S.frequent_words(0, i, 600, tokenizer=bpe)
        counts = Counter(f.prompt.split("\n")[1].split()).most_common(4)
        assert f.values == tuple(w for w, _ in counts[:3])
        assert counts[0][1] > counts[1][1] > counts[2][1] > counts[3][1]


# ---------------------------------------------------------------------------------- instruction-style QA


def _passage(s):
    return s.prompt.split("Passage:\n", 1)[1].rsplit("\n\nQuestion: ", 1)[0]


def test_instruction_qa_answers_are_true_of_the_play():
    plays = {d.name: d.text.split("\n") for d in corpora.shakespeare()}
    kinds = Counter()
    for i in range(40):
        s = S.instruction_qa(11, i)
        kinds[s.task] += 1
        lines = plays[s.source.split(":")[0]]
        passage = _passage(s).split("\n")
        ans = s.answer.strip()
        quoted = re.search(r'"(.*)"', s.prompt.rsplit("Question: ", 1)[1])
        if s.task == "qa_word_count":
            word = quoted.group(1)
            assert int(ans) == sum(w.lower() == word for w in re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", _passage(s)))
            assert int(ans) >= 1
            continue
        line = quoted.group(1)
        assert lines.count(line) == 1 and passage.count(line) == 1
        t = lines.index(line)
        assert s.source == f"{s.source.split(':')[0]}:{t + 1}"
        if s.task == "qa_speaker":
            b = t
            while lines[b - 1]:
                b -= 1
            assert lines[b] == ans and ans.isupper() and ans in passage  # the name heading the speech
            assert sum(x == ans for x in lines) >= 2  # a character who speaks more than once
        else:
            assert lines[t + 1] == ans and passage[passage.index(line) + 1] == ans
    assert set(kinds) == {"qa_speaker", "qa_next_line", "qa_word_count"}


def test_instruction_qa_on_prose_without_speakers_says_so():
    docs = corpora.python_docs()[:5]
    assert S.instruction_qa(0, 0, kind="word_count", docs=docs).task == "qa_word_count"
    with pytest.raises(ValueError, match=r"^docs: no play speeches"):
        S.instruction_qa(0, 0, kind="speaker", docs=docs)


# --------------------------------------------------------------------------------------------------- scoring


def test_score_is_one_on_the_gold_answer_and_partial_for_lists(bpe):
    for s in _all_tasks(bpe):
        assert S.score(s.answer, s) == 1.0
        assert S.score(s.answer + "\nmore text " + s.answer, s) == 1.0  # cut at the first line break
        assert S.score("", s) == 0.0
    mv = S.make("niah_multivalue", 0, 0, 500, tokenizer=bpe)
    assert S.score(", ".join(mv.values[:3]), mv) == 0.75
    assert S.score(" ".join(reversed(mv.values)).upper(), mv) == 1.0  # order and case are not scored
    pk = S.passkey(0, 0, 300)
    v = pk.values[0]
    assert S.score(v + "9", pk) == 0.0 and S.score(f"It is {v}.", pk) == 1.0  # whole words only
    qa = S.instruction_qa(0, 1, kind="speaker")
    assert S.score("  " + qa.answer.strip() + "  ", qa) == 1.0
    assert S.score(qa.answer + " and more", qa) == 0.0 and S.score("NOBODY", qa) == 0.0


# -------------------------------------------------------------------------------------- encoding and batches


def test_encoding_apart_equals_encoding_together(bpe, byte_tok):
    hf = tokenizer.as_transformers(bpe)
    for tok in (bpe, byte_tok):
        for s in _all_tasks(tok, 600):
            p, a = S.encode(s, tok)
            assert tok.encode(s.prompt + s.answer).ids == p + a
            assert tok.decode(a) == s.answer
    s = S.niah(0, 0, 300, tokenizer=bpe)
    assert S.encode(s, hf) == S.encode(s, bpe)
    assert S.encode(s, bpe, eos_id=0)[1][-1] == 0


def test_encode_refuses_a_tokenizer_that_splits_differently_apart(bpe):
    from tokenizers import Tokenizer, normalizers

    tok = Tokenizer.from_str(bpe.to_str())
    tok.normalizer = normalizers.Strip()  # the answer alone loses its leading space
    s = S.passkey(0, 0, 300)
    with pytest.raises(ValueError, match="^tokenizer: encoding prompt and answer apart"):
        S.encode(s, tok)
    assert S.encode(s, tok, check=False)[1] == tok.encode(s.answer).ids


def test_answer_only_mask_covers_exactly_the_answer(bpe):
    ss = [S.instruction_qa(0, i) for i in range(6)] + [S.passkey(0, 0, 150, tokenizer=bpe)]
    b = S.sft_batch(ss, bpe, eos_id=0, pad_id=0)
    assert b.ids.shape == b.loss_mask.shape == b.attention_mask.shape and b.ids.dtype == torch.int64
    for r, s in enumerate(ss):
        p, a = S.encode(s, bpe, eos_id=0)
        assert b.ids[r][b.loss_mask[r]].tolist() == a  # the answer and its EOS, nothing else
        assert b.loss_mask[r].nonzero().flatten().tolist() == list(range(len(p), len(p) + len(a)))
        assert b.ids[r, : len(p)].tolist() == p and int(b.attention_mask[r].sum()) == len(p) + len(a)
        assert (b.ids[r, len(p) + len(a):] == 0).all()
    assert torch.equal(b.target_mask, b.loss_mask[:, 1:]) and torch.equal(b.inputs, b.ids[:, :-1])
    wide = S.sft_batch(ss, bpe, seq_len=b.ids.shape[1] + 9)
    assert wide.ids.shape[1] == b.ids.shape[1] + 10
    with pytest.raises(ValueError, match="^seq_len:"):
        S.sft_batch(ss, bpe, seq_len=10)


def test_teacher_forced_exact_match_identities(bpe):
    ss = [S.instruction_qa(1, i) for i in range(5)]
    b = S.sft_batch(ss, bpe, eos_id=0)
    V = bpe.get_vocab_size()
    gold = torch.nn.functional.one_hot(b.targets, V).float() * 20
    tf = S.exact_match_teacher_forced(gold, b)
    assert tf.exact.all() and torch.equal(tf.token_accuracy, torch.ones(len(ss)))
    assert S.exact_match_teacher_forced(lambda x: gold[:, : x.shape[1]], b).exact.all()  # a model works too
    assert float(S.answer_loss(gold, b)) < 1e-5
    wrong = gold.clone()
    pos = int(b.target_mask[2].nonzero()[0])  # first answer position of row 2
    wrong[2, pos] = wrong[2, pos].roll(1)
    tf = S.exact_match_teacher_forced(wrong, b)
    assert tf.exact.tolist() == [True, True, False, True, True]
    n = int(b.target_mask[2].sum())
    assert tf.token_accuracy[2].item() == pytest.approx((n - 1) / n)
    prompt_pos = int((~b.target_mask[3]).nonzero()[0])  # a prompt position is not scored
    other = gold.clone()
    other[3, prompt_pos] = other[3, prompt_pos].roll(1)
    assert S.exact_match_teacher_forced(other, (b.targets, b.target_mask)).exact.all()
    with pytest.raises(ValueError, match="^logits:"):
        S.exact_match_teacher_forced(gold[:, :-1], b)


# ------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("call,match", [
    (lambda: S.niah(0, 0, 500, 1.5), "^depth: must be in"),
    (lambda: S.passkey(0, 0, 20), "^length: 20 chars cannot hold"),
    (lambda: S.niah(0, 0, 0), "^length: must be a positive"),
    (lambda: S.niah(0, 0, 500, n_keys=2, n_queries=3), "^n_queries:"),
    (lambda: S.niah(0, 0, 500, haystack="essay"), "^haystack:"),
    (lambda: S.niah(0, 0, 500, value_type="uuid"), "^value_type:"),
    (lambda: S.niah(0, 0, 500, tokenizer="gpt2"), "^tokenizer:"),
    (lambda: S.passkey(-1, 0, 500), "^seed:"),
    (lambda: S.make("qa_2", 0, 0), "^task: unknown task"),
    (lambda: S.instruction_qa(0, 0, kind="summary"), "^kind:"),
    (lambda: S.common_words(0, 0, 500, freq_common=1), "^freq_common:"),
    (lambda: S.frequent_words(0, 0, 500, alpha=1.0), "^alpha:"),
    (lambda: S.Sample("t", "p", "no-space", ("x",), "all", 0, 0), "^answer:"),
    (lambda: S.Sample("t", "p ", " x", ("x",), "all", 0, 0), "^prompt:"),
])
def test_bad_arguments_fail_in_one_line_naming_the_parameter(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
