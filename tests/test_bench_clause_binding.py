"""bench.clause_binding: the probe on made-up states (bound and unbound), and a run on a tiny model."""

import json

import torch

from bench.clause_binding import COLOURS, WORDS, main, probe_table, two_object_prompts


def _states(prompts, bound: bool) -> dict:
    """Object 1's words carry its colour; object 2's carry its own colour (bound) or both colours alike."""
    g = torch.Generator().manual_seed(0)
    colour = torch.randn(len(COLOURS), 24, generator=g)
    out = {}
    for k in (0, 1):
        for word in WORDS:
            rows = []
            for _, objs in prompts:
                c = [colour[COLOURS.index(o["colour"])] for o in objs]
                rows.append(c[k] if k == 0 or bound else c[0] + c[1])
            out[k, word] = torch.stack(rows) + 0.1 * torch.randn(len(prompts), 24, generator=g)
    return out


def test_the_probe_tells_bound_states_from_unbound_ones():
    train, test = two_object_prompts(300, seed=0), two_object_prompts(200, seed=1)
    assert train == two_object_prompts(300, seed=0) and train != test
    assert all(a["colour"] != b["colour"] and a["position"] != b["position"] for _, (a, b) in train)
    objs = lambda ps: [o for _, o in ps]
    bound = probe_table(_states(train, True), _states(test, True), objs(train), objs(test))
    assert all(r["own_colour"] > 0.95 for r in bound), bound
    unbound = probe_table(_states(train, False), _states(test, False), objs(train), objs(test))
    for r in unbound:
        if r["object"] == 1:
            assert r["own_colour"] > 0.95
        else:  # both colours in the state, neither marked as its own: about half each
            assert 0.25 < r["own_colour"] < 0.75 and r["own_colour"] + r["other_colour"] > 0.9, r


def test_runs_on_a_tiny_text_encoder_and_writes_its_results(tmp_path):
    import pytest
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_models import make_tiny_pipeline, make_tiny_tokenizer

    with pytest.raises(SystemExit, match="reads 16"):  # the tiny pipeline's 16 tokens cut the prompts short
        main(["--model", make_tiny_pipeline(tmp_path), "--n-train", "10", "--n-test", "1",
              "--results", str(tmp_path / "x")])
    tok = make_tiny_tokenizer(max_tokens=160)  # letter by letter: a two-object prompt is ~100 tokens
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=160, bos_token_id=0,
                                 eos_token_id=1, pad_token_id=1)).save_pretrained(tmp_path / "m" / "text_encoder")
    tok.save_pretrained(tmp_path / "m" / "tokenizer")
    result = main(["--model", str(tmp_path / "m"), "--n-train", "60", "--n-test", "30",
                   "--results", str(tmp_path / "r" / "cb")])
    with open(tmp_path / "r" / "cb.json") as f:
        assert json.load(f)["rows"] == result["rows"]
    assert len(result["rows"]) == 2 * len(WORDS)
    assert all(0 <= r["own_colour"] + r["other_colour"] <= 1 for r in result["rows"])
    assert "| 2 | position |" in (tmp_path / "r" / "cb.md").read_text()
