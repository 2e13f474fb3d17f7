"""Padded batches: every row gets what it gets alone, and padding costs no projection or MLP work."""

import torch

PROMPTS = ([151644, 872, 9707, 11, 1879, 13, 151645], [151644, 872, 3838, 151645])


def _right_padded(rows):
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask


def test_each_row_of_a_right_padded_batch_equals_the_row_alone(tiny_model):
    ids, mask = _right_padded(PROMPTS)
    with torch.no_grad():
        batched = tiny_model.hidden_states(ids, attention_mask=mask)  # [2, T, hidden]
        for row, prompt in enumerate(PROMPTS):
            alone = tiny_model.hidden_states(torch.tensor([prompt]))[0]
            torch.testing.assert_close(batched[row, :len(prompt)], alone, rtol=1e-5, atol=1e-5)


def test_decoder_projections_and_mlps_see_only_the_real_tokens(tiny_model):
    ids, mask = _right_padded(PROMPTS)
    rows_seen = []
    layer = tiny_model.model.layers[0]
    hooks = [module.register_forward_hook(lambda _m, args, _out: rows_seen.append(args[0].shape[:-1].numel()))
             for module in (layer.self_attn.q_proj, layer.mlp)]
    try:
        with torch.no_grad():
            tiny_model.hidden_states(ids, attention_mask=mask)
    finally:
        for hook in hooks:
            hook.remove()
    assert rows_seen == [sum(map(len, PROMPTS))] * 2
