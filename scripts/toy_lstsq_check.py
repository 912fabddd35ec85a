"""Is the toy world learnable? A least-squares map from hidden states to name embeddings, injected.

For each layer L: vectors = ``hidden_states[L+1]`` at the last token of the chat prompt
``Tell me about X.`` (minus the train mean); fit ``[v, 1] @ W ≈ embedding(X)`` on 400 concepts; put
the prediction for each of the 100 held-out concepts at both sites of the SelfIE template and decode
greedily. Prints the held-out rate of a right first token (the name) and of an exact label.

    python scripts/toy_lstsq_check.py [weights_dir]
"""

from __future__ import annotations

import sys

import torch

from selfie_adapters.toy import chat_prompt, label, load_toy_model

TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    'What is the meaning of "<|reserved_special_token_0|>"?<|eot_id|>'
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    'The meaning of "<|reserved_special_token_0|>" is "'
)


@torch.no_grad()
def last_token_states(model, tok, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Per hidden-state index, the last-token states (N, d); every prompt has the same length."""
    enc = tok([chat_prompt(tok, f"Tell me about {n}.") for n in names], add_special_tokens=False,
              return_tensors="pt")
    hs = model(**enc, output_hidden_states=True).hidden_states  # L+1 × (N, T, d)
    return tuple(h[:, -1] for h in hs)


@torch.no_grad()
def greedy_from_soft_tokens(model, tok, soft: torch.Tensor, max_new: int = 16) -> list[str]:
    """Greedy continuation of the SelfIE template with ``soft`` (N, d) at both sites, up to ``"``."""
    ids = tok(TEMPLATE, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # (T,)
    sites = (ids == tok.convert_tokens_to_ids("<|reserved_special_token_0|>")).nonzero().flatten()
    emb = model.get_input_embeddings()
    x = emb(ids)[None].repeat(soft.shape[0], 1, 1)  # (N, T, d)
    x[:, sites] = soft[:, None]
    out = []
    for _ in range(max_new):
        nxt = model(inputs_embeds=x).logits[:, -1].argmax(-1)  # (N,)
        out.append(nxt)
        x = torch.cat([x, emb(nxt)[:, None]], dim=1)
    gen = torch.stack(out, 1)  # (N, max_new)
    texts = [tok.decode(row) for row in gen]
    return [t.split('"')[0] for t in texts]


def main(argv: list[str]) -> None:
    torch.manual_seed(0)
    model, tok, world = load_toy_model(argv[0] if argv else None)
    concepts = list(world.concepts)
    order = torch.randperm(len(concepts)).tolist()
    test = [concepts[i] for i in order[400:500]]
    name_ids = torch.tensor(tok.convert_tokens_to_ids([c.name for c in concepts]))
    targets = model.get_input_embeddings().weight.detach()[name_ids]  # (N, d)
    states = last_token_states(model, tok, [c.name for c in concepts])
    tr, te = torch.tensor(order[:400]), torch.tensor(order[400:500])
    for layer in range(len(states) - 1):
        v = states[layer + 1]
        v = v - v[tr].mean(0)  # contrastive
        x = torch.cat([v, torch.ones(len(v), 1)], dim=1)  # (N, d+1)
        w = torch.linalg.lstsq(x[tr], targets[tr]).solution  # (d+1, d)
        soft = x[te] @ w  # (100, d)
        got = greedy_from_soft_tokens(model, tok, soft)
        first = sum(g.split(",")[0] == c.name for g, c in zip(got, test)) / len(test)
        exact = sum(g == label(c) for g, c in zip(got, test)) / len(test)
        print(f"layer {layer} (hidden_states[{layer + 1}]): held-out name {first:.2f}  exact label {exact:.2f}")
    print("example:", got[:3], [label(c) for c in test[:3]])


if __name__ == "__main__":
    main(sys.argv[1:])
