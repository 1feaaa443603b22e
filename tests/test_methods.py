"""Head-identification methods beside the retrieval score: known answers from hand-set
attention, eager oracles (tiny models, and SmolLM2 for query-focus and needle-mass), the
one command that runs several methods, the causal judge and the pairwise comparison."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import NEEDLE, make_inputs, one_thread, tiny_model

from retrieval_head.cli import detect as cli_detect
from retrieval_head.cli import heads, judge
from retrieval_head.core.tap import AttentionTap
from retrieval_head.experiments.detect import DetectSettings, detect
from retrieval_head.headfiles.load import load_head_scores
from retrieval_head.methods.registry import METHODS
from retrieval_head.methods.repeat import RepeatSettings, repeat_rows, repeat_scores, repeated_tokens

BIG = 60.0  # a score this far above the rest takes all the softmax mass (in float32: exactly 1)


def onehot_attention(targets: list[list[int]], T: int, kv_heads: int = 1):
    """query [1, H, T, T] / key [1, KV, T, T]: key j is the one-hot e_j, head h's query row p
    is BIG * e_{targets[h][p]} (a negative target: uniform), so row p attends to that key."""
    key = torch.eye(T).expand(1, kv_heads, T, T).contiguous()
    query = torch.zeros(1, len(targets), T, T)
    for h, row in enumerate(targets):
        for p, t in enumerate(row):
            if t >= 0:
                query[0, h, p, t] = BIG
    return query, key


def test_tap_known_answers_induction_echo_and_focus():
    period, repeats = 4, 3
    T = period * repeats
    rows, ind, echo = repeat_rows(period, repeats, offset=0)
    # head 0: an induction head (the token after the previous occurrence); head 1: an echo head;
    # heads 2, 3 (the second KV head's group): a head on key 0 (a sink), and one looking ahead
    t_ind = [p - period + 1 if p >= period else 0 for p in range(T)]
    t_echo = [p - period if p >= period else 0 for p in range(T)]
    query, key = onehot_attention([t_ind, t_echo, [0] * T, [T - 1] * T], T, kv_heads=2)
    taps = {"induction": AttentionTap(rows, ind, ind + 1), "echo": AttentionTap(rows, echo, echo + 1)}
    for t in taps.values():
        t.observe(0, query, key, None, 1.0)
    got = {k: t.mean(1)[0, 0].tolist() for k, t in taps.items()}
    # head 3: key T-1 is in the future of every row but the last: those rows fall back to uniform
    ahead = sum(1 / (p + 1) for p in range(period, T - 1)) / len(rows)
    assert got["induction"] == pytest.approx([1.0, 0.0, 0.0, ahead], abs=1e-6)
    assert got["echo"] == pytest.approx([0.0, 1.0, 1 / len(rows), ahead], abs=1e-6)  # row 4's echo is key 0
    # query-focus: question rows 9..11 all on the needle span [2, 5) -> 1; a uniform head -> |span| / (p + 1)
    rows = torch.arange(9, 12)
    focus = AttentionTap(rows, torch.full_like(rows, 2), torch.full_like(rows, 5))
    query, key = onehot_attention([[3] * T, [-1] * T], T)
    focus.observe(0, query, key, None, 1.0)
    uniform = sum(3 / (p + 1) for p in (9, 10, 11)) / 3
    assert focus.mean(1)[0, 0].tolist() == pytest.approx([1.0, uniform], abs=1e-6)
    # chunked: the same rows reached over two calls (the second with the cache before it) sum up the same
    split = AttentionTap(rows, torch.full_like(rows, 2), torch.full_like(rows, 5))
    split.observe(0, query[:, :, :10], key[:, :, :10], None, 1.0)
    split.observe(0, query[:, :, 10:], key, None, 1.0)
    assert torch.allclose(split.mean(1), focus.mean(1))
    # a sliding window of 2: row 9's needle keys (2..4) fall outside it -> 0
    win = AttentionTap(torch.tensor([9]), torch.tensor([2]), torch.tensor([5]))
    win.observe(0, query, key, None, 1.0, window=2)
    assert win.mean(1)[0, 0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def eager_attentions(model, ids: torch.Tensor):
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return model(ids, output_attentions=True, logits_to_keep=1).attentions  # L x [b, H, T, T]
    finally:
        model.config._attn_implementation = impl


def oracle_mass(att, rows, lo, hi) -> torch.Tensor:
    """[layers, b, heads]: mean over rows of the eager weights' mass on [lo, hi) per row."""
    out = []
    for a in att:
        m = torch.stack([a[:, :, r, l:h].sum(-1) for r, l, h in zip(rows, lo, hi)], -1)  # [b, H, rows]
        out.append(m.mean(-1))
    return torch.stack(out).double()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_repeat_scores_match_eager_weights(family):
    """Induction and echo from the tap equal the eager attention weights' (sliding window too)."""

    class Tok:  # ids 0..127, 0 the only special token, no BOS
        all_special_ids, bos_token_id = [0], None

        def __len__(self):
            return 128

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [5]}

    model = tiny_model(family=family)
    st = RepeatSettings(period=16, repeats=3, seeds=(0, 1))
    with one_thread():
        got = repeat_scores(model, Tok(), st)
        ids, offset = repeated_tokens(Tok(), 128, st)
        att = eager_attentions(model, ids)
    assert offset == 0 and ids.shape == (2, 48) and not (ids == 0).any()
    assert len(set(ids[0, :16].tolist())) == 16 and torch.equal(ids[0, :16], ids[0, 32:])
    rows, ind, echo = repeat_rows(16, 3, 0)
    for name, target in (("induction", ind), ("echo", echo)):
        want = oracle_mass(att, rows.tolist(), target.tolist(), (target + 1).tolist()).transpose(0, 1)
        assert torch.allclose(got[name], want, atol=1e-5), name


def tiny_settings(**kw) -> DetectSettings:
    return DetectSettings(context_lengths=(120,), depth_percents=(30, 70), rouge_threshold=-1.0,
                          max_new_tokens=4, **kw)


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory, default_tokenizer):
    root = tmp_path_factory.mktemp("methods")
    return make_inputs(root, default_tokenizer)


def test_haystack_methods_share_the_sweep_and_change_no_retrieval_score(tiny_inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_inputs["tiny"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_inputs["tiny"])
    needles = str(tiny_inputs["needles_ok"])
    with one_thread():
        plain = detect(model, tok, tiny_settings(needles=needles), progress=False)
        both = detect(model, tok, tiny_settings(needles=needles, method=("retrieval", "query-focus", "needle-mass"),
                                                save_prompts=True), progress=False)
    for a, b in zip(plain.trials, both.trials):
        assert a["head_scores"] == b["head_scores"] and a["response_ids"] == b["response_ids"]
        assert "query_focus" not in a and "needle_mass" not in a
    for t in both.trials:  # the eager oracle: full weights over prompt + answer, the same trial
        att = eager_attentions(model, torch.tensor([t["prompt_ids"] + t["response_ids"][:-1]]))
        s, e = t["needle_span"]
        prompt = len(t["prompt_ids"])
        steps = list(range(prompt - 1, prompt - 1 + len(t["response_ids"])))
        want = oracle_mass(att, steps, [s] * len(steps), [e] * len(steps))[:, 0]
        assert torch.allclose(torch.tensor(t["needle_mass"], dtype=torch.float64), want, atol=1e-5)
    assert both.head_counter("query-focus").keys() == both.head_counter().keys()


def test_query_focus_matches_eager_weights_on_tiny(tiny_inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrieval_head.experiments.sweep import plan
    from retrieval_head.models.shape import ModelShape

    model = AutoModelForCausalLM.from_pretrained(tiny_inputs["tiny"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_inputs["tiny"])
    st = tiny_settings(needles=str(tiny_inputs["needles_ok"]), method=("query-focus",), prefill_chunk=7)
    with one_thread():
        result = detect(model, tok, st, progress=False)
        p = plan(tok, ModelShape.of(model), st)
        for t in result.trials:
            prompt = p.prompt(type(p.keys()[0]).of(t))
            a, b = prompt.question_span
            assert NEEDLE["question"] in tok.decode(prompt.ids[a:b])
            att = eager_attentions(model, torch.tensor([prompt.ids]))
            rows = list(range(a, b))
            want = oracle_mass(att, rows, [prompt.needle_span[0]] * len(rows), [prompt.needle_span[1]] * len(rows))
            assert torch.allclose(torch.tensor(t["query_focus"], dtype=torch.float64), want[:, 0], atol=1e-5)


TINY_RUN = ["--context_lengths", "120", "--depth_percents", "50", "--max_new_tokens", "3", "--quiet"]


def write_scores(path, grid):
    path.write_text(json.dumps({f"{l}-{h}": [float(v)] for l, row in enumerate(grid) for h, v in enumerate(row)}))
    return path


def test_one_command_writes_every_method_in_the_original_format(tiny_inputs, tmp_path, capsys):
    out = tmp_path / "hs"
    base = ["--model_path", str(tiny_inputs["tiny"]), "--needles", str(tiny_inputs["needles_ok"]), *TINY_RUN,
            "--rouge_threshold", "-1", "--output_dir", str(out)]
    with one_thread():
        assert cli_detect.cli(base + ["--method", *METHODS, "--repeat_period", "16", "--repeat_count", "3"]) == 0
    for m in METHODS:
        f = out / ("tiny.json" if m == "retrieval" else f"tiny.{m}.json")
        assert load_head_scores(f, (2, 4)).shape == (2, 4)
        assert heads.main(["top", str(f), "-k", "3"]) == 0
        if m != "retrieval":
            man = json.loads((out / f"tiny.{m}.manifest.json").read_text())
            assert man["method"] == m and man["parameters"] and "seconds" in man
    sweep = json.loads((out / "tiny.manifest.json").read_text())
    for m in ("query-focus", "needle-mass"):  # the sweep's trials, paired with their haystacks, in its manifest
        man = json.loads((out / f"tiny.{m}.manifest.json").read_text())
        assert man["haystacks"] == sweep["haystacks"] and "stopping" not in man
        assert [man["trials"][k] for k in ("total", "passed")] == [sweep["trials"][k] for k in ("total", "passed")]
        assert man["trials"]["counted"] == man["trials"]["total" if m == "query-focus" else "passed"]
    rep = json.loads((out / "tiny.induction.manifest.json").read_text())["parameters"]
    assert (rep["period"], rep["repeats"], rep["seeds"]) == (16, 3, [0, 1, 2])
    assert len(json.loads((out / "tiny.echo.json").read_text())["0-0"]) == 3  # a score per seed
    capsys.readouterr()
    # the trial log was made with these methods: resuming with others is refused
    assert cli_detect.cli(base + ["--resume"]) == 2
    assert "different settings" in capsys.readouterr().err
    # an unknown method is refused by the parser, before anything loads
    with pytest.raises(SystemExit) as e:
        cli_detect.cli(base + ["--method", "attention-sink"])
    assert e.value.code == 2 and "invalid choice: 'attention-sink'" in capsys.readouterr().err


def test_judge_masks_each_methods_top_k_and_random_k_in_one_run(tiny_inputs, tmp_path, capsys):
    retrieval = write_scores(tmp_path / "tiny.json", [[0.9, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    induction = write_scores(tmp_path / "tiny.induction.json", [[0.0, 0.0, 0.7, 0.0], [0.0, 0.0, 0.0, 0.3]])
    out = tmp_path / "judge"
    argv = ["--model_path", str(tiny_inputs["tiny"]), "--needles", str(tiny_inputs["needles_ok"]), *TINY_RUN,
            "--head_score", str(retrieval), str(induction), "--mask_top", "1", "2", "--seeds", "0", "1",
            "--output_dir", str(out)]
    with one_thread():
        assert judge.cli(argv) == 0
    recs = [json.loads(x) for x in (out / "tiny.judge.jsonl").read_text().splitlines()]
    assert len(recs) == 1 + 2 * 2 + 2 * 2  # none; top-1, top-2 of each method; random-1, random-2 x 2 seeds
    by = {(r["mask"].get("method"), r["mask"]["k"], r["mask"]["seed"]): r["mask"]["heads"] for r in recs}
    assert by[("retrieval", 2, None)] == [[0, 0], [1, 1]] and by[("induction", 1, None)] == [[0, 2]]
    randoms = [h for (m, _, _), h in by.items() if m == "random"]
    assert len(randoms) == 4 and all([0, 0] not in h and [1, 1] not in h for h in randoms)
    table = (out / "tiny.judge.md").read_text()
    assert "| top-K retrieval |" in table and "| top-K induction |" in table and "random-K" in table
    assert (out / "tiny.judge.png").stat().st_size > 0
    capsys.readouterr()
    # a file made for another model shape: one line, before the weights, nothing written
    other = write_scores(tmp_path / "other.echo.json", [[0.1] * 4] * 3)
    assert judge.cli(argv[:-1] + [str(tmp_path / "j2"), "--head_score", str(retrieval), str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 layers" in err[0] and not (tmp_path / "j2").exists()


def test_compare_every_pair_of_three_files(tmp_path, capsys):
    a = write_scores(tmp_path / "m.json", [[3, 2, 1], [0, 0, 0]])
    b = write_scores(tmp_path / "m.query-focus.json", [[1, 2, 3], [0, 0, 0]])
    c = write_scores(tmp_path / "m.echo.json", [[3, 2, 1], [0, 0, 0]])
    png = tmp_path / "cmp.png"
    assert heads.main(["compare", str(a), str(b), str(c), "-k", "1", "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "| retrieval | - | 0 | 1 |" in text  # m.json beside m.<method>.json is retrieval's
    assert "| echo | 1.00 | " in text and png.stat().st_size > 0


@pytest.mark.slow
def test_query_focus_and_needle_mass_match_eager_weights_on_smollm2(default_model, tmp_path):
    """The same trials re-scored from the full eager attention weights (output_attentions=True)."""
    import dataclasses

    from retrieval_head.experiments.sweep import plan
    from retrieval_head.inputs.haystack import load_needles
    from retrieval_head.models.shape import ModelShape

    model, tok, _ = default_model
    needles = tmp_path / "needles.jsonl"  # one needle (Captain Juniper), two depths: two trials
    n = dataclasses.asdict(load_needles(None)[1])
    needles.write_text(json.dumps({k: n[k] for k in ("needle", "question", "real_needle")}) + "\n")
    st = DetectSettings(context_lengths=(500,), depth_percents=(30, 70), method=("query-focus", "needle-mass"),
                        needles=str(needles), save_prompts=True)
    with one_thread():
        result = detect(model, tok, st, progress=False)
        p = plan(tok, ModelShape.of(model), st)
        assert len(result.passed()) >= 2
        for t in result.passed():
            prompt = p.prompt(type(p.keys()[0]).of(t))
            (a, b), (s, e) = prompt.question_span, prompt.needle_span
            att = eager_attentions(model, torch.tensor([t["prompt_ids"] + t["response_ids"][:-1]]))
            focus = oracle_mass(att, list(range(a, b)), [s] * (b - a), [e] * (b - a))[:, 0]
            steps = list(range(len(prompt.ids) - 1, len(prompt.ids) - 1 + len(t["response_ids"])))
            mass = oracle_mass(att, steps, [s] * len(steps), [e] * len(steps))[:, 0]
            assert torch.allclose(torch.tensor(t["query_focus"], dtype=torch.float64), focus, atol=2e-4)
            assert torch.allclose(torch.tensor(t["needle_mass"], dtype=torch.float64), mass, atol=2e-4)
            assert float(focus.max()) > 5 * (e - s) / len(prompt.ids)  # some head looks at the needle (vs uniform)


def test_methods_from_the_api_and_the_fingerprint():
    from retrieval_head.errors import UserError

    assert DetectSettings(method="echo").methods() == ("echo",)
    assert DetectSettings(method=["echo", "retrieval", "echo"]).methods() == ("retrieval", "echo")
    with pytest.raises(UserError, match="unknown method 'attention-sink'"):
        DetectSettings(method=("attention-sink",)).check()
    needles = []
    default = cli_detect.settings_fingerprint(DetectSettings(), needles)
    assert "methods" not in default  # an old run's trial log still resumes
    assert cli_detect.settings_fingerprint(DetectSettings(method=("retrieval", "needle-mass", "echo")), needles)[
        "methods"] == ["retrieval", "needle-mass"]  # echo needs no trial: not part of the trials' fingerprint
    # a sweep of retrieval alone, beside induction: the default's fingerprint (a killed default run resumes)
    assert cli_detect.settings_fingerprint(DetectSettings(method=("retrieval", "induction")), needles) == default


def test_no_passing_trial_writes_query_focus_and_says_what_it_wrote(tiny_inputs, tmp_path, capsys):
    out = tmp_path / "hs"
    base = ["--model_path", str(tiny_inputs["tiny"]), "--needles", str(tiny_inputs["needles_ok"]), *TINY_RUN,
            "--output_dir", str(out), "--repeat_period", "16", "--repeat_count", "3"]
    with one_thread():
        assert cli_detect.cli(base + ["--rouge_threshold", "100", "--method", "retrieval", "query-focus",
                                      "induction"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trial passed" in err[0] and "not written: retrieval" in err[0]
    assert "tiny.query-focus.json" in err[0] and "tiny.induction.json" in err[0]
    assert load_head_scores(out / "tiny.query-focus.json", (2, 4)).shape == (2, 4)  # every trial counts
    assert (out / "tiny.induction.json").exists() and not (out / "tiny.json").exists()
    # the sweep always writes the retrieval file: --overwrite with query-focus alone replaces it, not loses it
    with one_thread():
        assert cli_detect.cli(base + ["--rouge_threshold", "-1", "--method", "query-focus", "--overwrite"]) == 0
    assert load_head_scores(out / "tiny.json", (2, 4)).shape == (2, 4)


def test_query_focus_without_question_offsets_is_refused_before_the_weights(tiny_inputs, tmp_path, capsys,
                                                                            monkeypatch):
    import dataclasses

    from retrieval_head.experiments import sweep

    real = sweep.Plan.prompt
    monkeypatch.setattr(sweep.Plan, "prompt", lambda self, k: dataclasses.replace(real(self, k), question_span=None))
    monkeypatch.setattr(cli_detect, "load_checked", lambda *a: pytest.fail("the weights loaded"))
    argv = ["--model_path", str(tiny_inputs["tiny"]), "--needles", str(tiny_inputs["needles_ok"]), *TINY_RUN,
            "--method", "query-focus", "--output_dir", str(tmp_path / "hs")]
    assert cli_detect.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query-focus needs the question's tokens" in err[0] and not (tmp_path / "hs").exists()


def test_a_sharded_sweep_records_the_merging_shards_seconds(tiny_inputs, tmp_path):
    out = tmp_path / "hs"
    base = ["--model_path", str(tiny_inputs["tiny"]), "--needles", str(tiny_inputs["needles_ok"]), *TINY_RUN,
            "--depth_percents", "30", "70", "--rouge_threshold", "-1", "--method", "query-focus",
            "--world_size", "2", "--output_dir", str(out)]
    with one_thread():
        assert cli_detect.cli(base + ["--rank", "0"]) == 0 and not (out / "tiny.json").exists()
        assert cli_detect.cli(base + ["--rank", "1"]) == 0  # the last shard merges
    man = json.loads((out / "tiny.query-focus.manifest.json").read_text())
    assert man["seconds"]["sweep"] > 0 and man["trials"]["total"] == 2
